"""Every preset on this machine: step time, tokens per second, and its default budget's time.

Usage:
    python benchmarks/bench_presets.py [--presets a,b,...] [--threads 1] [--repeats 5]
        [--limit 900] [--no-runs]

Part 1, the step. For each preset (not `finetune`, which has no model of its own): its model
(at the preset's nominal vocabulary), its optimiser and the precision `auto` picks here, and
one optimiser step exactly as training takes it (`tinygpt.train.loop.train_step`: `accum`
micro-batches of `batch_size` × `block_size` random token ids, forward, backward, clipping,
update). The median of `--repeats` steps after one warm-up step. Where one step would not
fit the time or memory of a benchmark — gpt2-124m's 64 micro-batches of 8 × 1024 tokens —
fewer rows of one micro-batch are timed and the step is scaled up from them: the row
**(extrapolated)**.

Part 2, the budget. A preset's default budget (`train.max_*`) in wall time: a time budget
is itself; steps, tokens or epochs (epochs counted on the preset's own default dataset,
prepared first) are converted with the step time of part 1. Where that is at most
`--limit` seconds (15 minutes), `tinygpt train --preset P` really runs, as a user starts it
(one process: start-up, training, the final full evaluation; the dataset is prepared and
cached before, and that first preparation is timed on its own), and the measured figures
are shown; beyond it, the conversion is shown, marked **extrapolated**.

Timings on a shared 2-core machine are noisy, and two torch threads contending with other
jobs can be many times slower than one: the default is `--threads 1`. The load average
before and after is printed with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from common import ROOT, machine, machine_line, write_section
from tinygpt.core.config import list_presets, load_config
from tinygpt.core.info import memory_estimate, param_breakdown
from tinygpt.core.model import GPT
from tinygpt.core.runtime import Dist, autocast_for, choose_precision
from tinygpt.train.loop import train_step
from tinygpt.train.optim import build_optimizer
from tinygpt.train.session import accumulation

MEMORY_CAP = 3 * 2**30  # bytes of estimated training memory one timed micro-batch may use
STEP_CAP_S = 20.0  # a step estimated longer than this is timed one micro-batch at a time


class RandomBatches:
    """`next() -> (x, y)`: random ids, as a batch source hands them to `train_step`."""

    def __init__(self, rows: int, block: int, vocab: int, seed: int = 0) -> None:
        self.gen = torch.Generator().manual_seed(seed)
        self.rows, self.block, self.vocab = rows, block, vocab

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.randint(0, self.vocab, (self.rows, self.block + 1), generator=self.gen)
        return ids[:, :-1], ids[:, 1:]


def load_avg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def time_step(preset: str, repeats: int) -> dict:
    """Median seconds of one optimiser step of `preset` (maybe scaled up from a part)."""
    cfg = load_config(preset)
    model_cfg, tc = cfg.model, cfg.train
    block = model_cfg.block_size
    accum = accumulation(tc, tc.batch_size * block)
    rows = tc.batch_size
    while rows > 1 and memory_estimate(model_cfg, rows)["training_total"] > MEMORY_CAP:
        rows //= 2
    torch.manual_seed(0)
    model = GPT(model_cfg)
    precision = choose_precision(tc.precision, "cpu", model_cfg)
    optimizer = build_optimizer(model, tc, "cpu")
    batches = RandomBatches(rows, block, model_cfg.vocab_size)

    def step(micro: int) -> float:
        start = time.perf_counter()
        train_step(
            model, batches, optimizer, accum=micro, lr=tc.lr, grad_clip=tc.grad_clip,
            autocast=autocast_for(precision, "cpu"), scaler=None, dist=Dist(),
            skip_nonfinite=False,
        )  # fmt: skip
        return time.perf_counter() - start

    first = step(1)  # warm-up, and a measure of one micro-batch of `rows` rows
    scale = (tc.batch_size / rows) * accum
    partial = rows < tc.batch_size or first * scale > STEP_CAP_S
    if partial:
        times = [step(1) for _ in range(max(2, min(repeats, 3)))]
        seconds = statistics.median(times) * scale
    else:
        times = [step(accum) for _ in range(repeats)]
        seconds = statistics.median(times)
    tokens = tc.batch_size * block * accum
    return {
        "preset": preset,
        "params": param_breakdown(model_cfg)["total"],
        "shape": f"{model_cfg.n_layer}×{model_cfg.n_embd}, ctx {block}",
        "vocab": model_cfg.vocab_size,
        "tokens_per_step": tokens,
        "accum": accum,
        "precision": precision,
        "optimizer": tc.optimizer,
        "step_s": seconds,
        "tokens_per_s": tokens / seconds,
        "extrapolated_step": partial,
        "timed_rows": rows,
    }


def prepared(preset: str) -> tuple[int, float]:
    """Training tokens of the preset's default dataset, and the seconds it took to prepare
    it (about 0 when it was cached already)."""
    from tinygpt.core.run import RunDir
    from tinygpt.data.prepare import open_dataset
    from tinygpt.train.pretrain import find_dataset

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        path = find_dataset(load_config(preset), RunDir(Path(tmp) / "run"), None, False)
    return len(open_dataset(path).train), time.perf_counter() - start


def budget(preset: str, step: dict) -> dict:
    """The default budget in seconds by the step time (the first budget to run out)."""
    tc = load_config(preset).train
    options = []
    if tc.max_time:
        options.append((tc.max_time, f"{tc.max_time:g} s"))
    if tc.max_steps:
        options.append((tc.max_steps * step["step_s"], f"{tc.max_steps:,} steps"))
    if tc.max_tokens:
        options.append((tc.max_tokens / step["tokens_per_s"], f"{tc.max_tokens:,} tokens"))
    if tc.max_epochs:
        tokens, _ = prepared(preset)
        seconds = tc.max_epochs * tokens / step["tokens_per_s"]
        options.append((seconds, f"{tc.max_epochs:g} epochs of {tokens:,} tokens"))
    seconds, what = min(options)
    return {"budget": what, "budget_s": seconds, "time_budget": bool(tc.max_time)}


def real_run(preset: str, threads: int) -> dict:
    """`tinygpt train --preset P` in its own process, the dataset prepared beforehand."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "tinygpt", "train", "--preset", preset, "--out", str(out),
               "--no-progress", "--threads", str(threads), "--train.tensorboard", "false"]  # fmt: skip
        start = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=tmp)
        wall = time.perf_counter() - start
        summary = json.loads((out / "summary.json").read_text())
    return {"wall_s": wall, **summary}


def fmt_time(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.1f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def render(rows: list[dict], header: dict) -> str:
    """The markdown section for `rows`; `header`: machine line, settings and load averages."""
    lines = [
        "## Every preset on this machine",
        "",
        f"`python benchmarks/bench_presets.py --threads {header['threads']}` ·"
        f" {header['machine']} · load average {header['load_before']} before,"
        f" {header['load_after']} after",
        "",
        "One optimiser step as training takes it (all micro-batches of `tokens_per_step`,"
        " forward, backward, clipping, update) on random ids of the preset's nominal"
        f" vocabulary, median of {header['repeats']} after a warm-up, in the precision"
        " `auto` picks on this CPU. The default budget: where it fits in"
        f" {header['limit'] / 60:g} minutes, `tinygpt train --preset P` was run as a user runs"
        " it (steps reached, training time, final full evaluation, the whole process, the"
        " full-split validation loss; the data prepared beforehand, timed apart);"
        " otherwise the budget converted with the step time, marked *extrapolated*.",
        "",
        "| preset | model | params | tokens/step | step | tokens/s | default budget"
        " | its time on this CPU |",
        "|---|---|---:|---:|---:|---:|---|---|",
    ]
    for r in rows:
        seconds = f"{r['step_s']:.3g} s" if r["step_s"] < 100 else fmt_time(r["step_s"])
        step = seconds + (" *(extrapolated)*" if r["extrapolated_step"] else "")
        accum = (
            f" ({r['accum']} × {r['tokens_per_step'] // r['accum']:,})" if r["accum"] > 1 else ""
        )
        if "run" in r:
            run = r["run"]
            val = f", val loss {run['val_loss']:.3f}" if run.get("val_loss") is not None else ""
            when = (
                f"measured: {run['step']:,} steps, training {run['train_time_s']:.0f} s,"
                f" final eval {run.get('final_eval_s', 0.0):.0f} s, whole process"
                f" {run['wall_s']:.0f} s{val} (its data prepared before: {r['prepare_s']:.0f} s,"
                " 0 when cached)"
            )
        else:
            when = f"*extrapolated*: {fmt_time(r['budget_s'])}"
        lines.append(
            f"| {r['preset']} | {r['shape']}, vocab {r['vocab']:,}, {r['optimizer']}, "
            f"{r['precision']} | {r['params'] / 1e6:.2f} M | {r['tokens_per_step']:,}{accum} "
            f"| {step} | {r['tokens_per_s']:,.0f} | {r['budget']} | {when} |"
        )
    partial = [r for r in rows if r["extrapolated_step"]]
    lines.append("")
    if partial:
        timed = ", ".join(
            f"{r['preset']}: {r['timed_rows']} row(s) of one micro-batch, scaled to"
            f" {r['accum']} micro-batches of {r['tokens_per_step'] // r['accum']:,} tokens"
            for r in partial
        )
        lines.append(
            f"Steps marked *(extrapolated)* were timed in part ({timed}): a whole step does"
            " not fit the memory or the time of this benchmark."
        )
    else:
        lines.append("Every step was timed whole.")
    return "\n".join(lines)


def read_log(path: Path) -> tuple[list[dict], dict]:
    """Rows and header from what an earlier run printed (to write its section again)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    header = {"machine": lines[0], "repeats": 5, "limit": 900.0}
    rows = []
    for line in lines[1:]:
        if line.startswith("load average before: "):
            load, _, threads = line.removeprefix("load average before: ").partition("; threads ")
            header.update(load_before=load, threads=int(threads))
        elif line.startswith("load average after: "):
            header["load_after"] = line.removeprefix("load average after: ")
        elif line.startswith("{"):
            rows.append(json.loads(line))
        elif line.startswith("settings: "):
            header.update(json.loads(line.removeprefix("settings: ")))
    return rows, header


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--presets", default="", help="comma-separated (default: all with a model)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--limit", type=float, default=900.0, help="longest real run, seconds")
    ap.add_argument("--no-runs", action="store_true", help="only part 1 and conversions")
    ap.add_argument(
        "--from-log",
        type=Path,
        metavar="FILE",
        help="measure nothing: write the section from what an earlier run printed",
    )
    args = ap.parse_args()
    if args.from_log:
        rows, header = read_log(args.from_log)
        write_section("presets", render(rows, header))
        return
    torch.set_num_threads(args.threads)
    presets = args.presets.split(",") if args.presets else list_presets()
    presets = [p for p in presets if load_config(p).model.n_layer and p != "finetune"]
    header = {"machine": machine_line(machine()), "threads": args.threads}
    header.update(repeats=args.repeats, limit=args.limit)
    print(header["machine"])
    print("settings: " + json.dumps({"repeats": args.repeats, "limit": args.limit}))
    header["load_before"] = load_avg()
    print(f"load average before: {header['load_before']}; threads {args.threads}")
    rows = []
    for preset in presets:
        step = time_step(preset, args.repeats)
        plan = budget(preset, step)
        row = {**step, **plan}
        if not args.no_runs and plan["budget_s"] <= args.limit:
            _, row["prepare_s"] = prepared(preset)  # not part of the timed run
            row["run"] = real_run(preset, args.threads)
        rows.append(row)
        print(json.dumps(row, default=str), flush=True)
    header["load_after"] = load_avg()
    print(f"load average after: {header['load_after']}")
    write_section("presets", render(rows, header))


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "src"))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
