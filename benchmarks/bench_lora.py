"""Full fine-tuning against LoRA: step time, trainable parameters, optimiser state, checkpoint.

Two model shapes with random weights: the `tr-bpe` preset (GPT-2 family, 4 × 192) and
`modern-small` (Llama family, 6 × 384, SwiGLU, GQA, untied head), each grown by 4 token rows
as a chat template grows them. One AdamW step on 8 examples of 96 tokens (about the size of
ataturk-qa's batches) is timed for a full fine-tune, LoRA on every projection (rank 8) and
LoRA on q, v only; the three take turns and the median of --repeats steps is reported
(the machine is shared). Writes benchmarks/results/lora.md.

    python benchmarks/bench_lora.py [--repeats 20] [--threads 1]
"""

from __future__ import annotations

import argparse
import copy
import io
import statistics
import time

import torch

from common import machine_line, write_section
from tinygpt.core.config import TrainConfig, load_config
from tinygpt.core.lora import LoraSettings, apply_lora, count_parameters
from tinygpt.core.model import GPT
from tinygpt.core.surgery import grow_vocabulary
from tinygpt.core.weights import save_weights
from tinygpt.train.optim import build_optimizer

BATCH, LENGTH, NEW_ROWS = 8, 96, 4


def _checkpoint_bytes(model: torch.nn.Module) -> int:
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.safetensors"
        save_weights(model, path)
        return path.stat().st_size


def _contenders(preset: str) -> dict[str, torch.nn.Module]:
    config = load_config(preset).model
    torch.manual_seed(0)
    base = GPT(config)
    grow_vocabulary(base, config.vocab_size + NEW_ROWS)
    out = {"full fine-tune": copy.deepcopy(base)}
    for name, targets in (("LoRA r=8, all", ()), ("LoRA r=8, q,v", ("q", "v"))):
        model = copy.deepcopy(base)
        apply_lora(model, LoraSettings(rank=8, targets=targets), rows_from=config.vocab_size)
        out[name] = model
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tc = TrainConfig(optimizer="adamw", lr=1e-3)
    rows = []
    for preset in ("tr-bpe", "modern-small"):
        models = _contenders(preset)
        optimizers = {k: build_optimizer(m.train(), tc, "cpu") for k, m in models.items()}
        vocab = next(iter(models.values())).config.vocab_size
        x = torch.randint(0, vocab, (BATCH, LENGTH), generator=torch.Generator().manual_seed(1))
        y = torch.roll(x, -1, 1)
        times: dict[str, list[float]] = {k: [] for k in models}
        for _ in range(args.repeats + 2):  # two warm-up rounds, dropped
            for name, model in models.items():
                start = time.perf_counter()
                _, loss = model(x, y)
                loss.backward()
                optimizers[name].step()
                optimizers[name].zero_grad(set_to_none=True)
                times[name].append(time.perf_counter() - start)
        full_ms = 1000 * statistics.median(times["full fine-tune"][2:])
        for name, model in models.items():
            trainable, total = count_parameters(model)
            ms = 1000 * statistics.median(times[name][2:])
            state = io.BytesIO()
            torch.save(optimizers[name].state_dict(), state)
            rows.append(
                f"| {preset} | {name} | {trainable:,} of {total:,} ({100 * trainable / total:.1f} %)"
                f" | {ms:.1f} | {ms / full_ms:.2f} | {len(state.getvalue()) / 2**20:.2f}"
                f" | {_checkpoint_bytes(model) / 2**20:.2f} |"
            )
            print(rows[-1])
    text = "\n".join(
        [
            "## LoRA against full fine-tuning",
            "",
            machine_line(),
            "",
            f"One AdamW step on {BATCH} × {LENGTH} tokens, torch threads {args.threads}, median"
            f" of {args.repeats} steps taken in turns (`benchmarks/bench_lora.py`). LoRA keeps"
            " the base frozen: no gradient and no optimiser state for its weights, and a"
            " checkpoint that holds only the adapter and the new token rows.",
            "",
            "| shape | fine-tune | trainable parameters | ms/step | × full | optimiser state"
            " (MiB) | checkpoint weights (MiB) |",
            "|---|---|---|---|---|---|---|",
            *rows,
        ]
    )
    write_section("lora", text)


if __name__ == "__main__":
    main()
