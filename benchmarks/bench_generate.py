"""Generation speed: our KV cache vs our no-cache path vs transformers' generate.

A GPT-2-style model (6 layers, 384 wide, 6 heads, learned positions, context 512, vocabulary
4096, random weights) generates 256 tokens greedily after a 256-token prompt, batch 1.
The transformers model is exported from ours (same weights), so all three must produce the
same tokens; the script checks that. Reports the median of --repeats runs and writes
benchmarks/results/generate.md.

    python benchmarks/bench_generate.py [--repeats 3] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from common import machine_line, write_section
from tinygpt.core.model import GPT, GPTConfig
from tinygpt.infer.generate import generate_ids

PROMPT, NEW = 256, 256


def timed(runners: dict[str, Callable[[], list[int]]], repeats: int):
    """Median seconds and the tokens of each runner. The runners take turns, so that load
    from other processes on a shared machine spreads evenly over them."""
    times: dict[str, list[float]] = {name: [] for name in runners}
    tokens: dict[str, list[int]] = {}
    for _ in range(repeats):
        for name, fn in runners.items():
            start = time.perf_counter()
            tokens[name] = fn()
            times[name].append(time.perf_counter() - start)
    return {name: (statistics.median(times[name]), tokens[name]) for name in runners}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    config = GPTConfig(vocab_size=4096, block_size=512, n_layer=6, n_head=6, n_embd=384)
    torch.manual_seed(0)
    model = GPT(config).eval()
    prompt = torch.randint(0, config.vocab_size, (1, PROMPT))
    ids = prompt[0].tolist()

    def ours(use_cache: bool):
        return generate_ids(model, ids, max_new_tokens=NEW, temperature=0.0, use_cache=use_cache)[0]

    runners: dict[str, Callable[[], list[int]]] = {
        "tinygpt, KV cache": lambda: ours(True),
        "tinygpt, no cache": lambda: ours(False),
    }
    try:
        import transformers

        from tinygpt.export.hf import to_hf_model

        transformers.logging.set_verbosity_error()
        hf = to_hf_model(model)
        mask = torch.ones_like(prompt)

        @torch.inference_mode()
        def theirs() -> list[int]:
            out = hf.generate(
                prompt,
                attention_mask=mask,
                do_sample=False,
                use_cache=True,
                max_new_tokens=NEW,
                min_new_tokens=NEW,
                pad_token_id=0,
            )
            return out[0, PROMPT:].tolist()

        runners[f"transformers {transformers.__version__} generate"] = theirs
    except ImportError:
        print("transformers not installed: skipping its row")
    for name, fn in runners.items():  # warm-up: allocator, kernels, lazy imports
        if "no cache" not in name:
            fn()
    results = timed(runners, args.repeats)

    reference = results["tinygpt, no cache"][1]
    lines = [
        "## Generation speed",
        "",
        f"- {machine_line()}",
        f"- torch.set_num_threads({args.threads})",
        f"- model: GPT-2 style, 6 layers x 384 wide, 6 heads, context 512, vocabulary 4096, "
        f"random weights, fp32, batch 1; greedy; {NEW} new tokens after a {PROMPT}-token "
        f"prompt; median of {args.repeats} runs",
        "",
        "| generator | seconds | tokens/s | same tokens as no-cache |",
        "|---|---:|---:|---|",
    ]
    for name, (seconds, tokens) in results.items():
        lines.append(
            f"| {name} | {seconds:.3f} | {NEW / seconds:.1f} | {'yes' if tokens == reference else 'NO'} |"
        )
    cache_s = results["tinygpt, KV cache"][0]
    lines += [
        "",
        f"KV cache speed-up over no cache: {results['tinygpt, no cache'][0] / cache_s:.1f}x",
    ]
    for name, (seconds, _) in results.items():
        if name.startswith("transformers"):
            lines.append(f"tinygpt KV cache vs {name}: {seconds / cache_s:.2f}x")
    text = "\n".join(lines) + "\n"
    print(text)
    write_section("generate", text)


if __name__ == "__main__":
    main()
