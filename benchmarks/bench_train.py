"""Training benchmark: step time against `transformers`, and time to quality.

Usage:
    python benchmarks/bench_train.py CORPUS.txt [--part step|quality|all] [--repeats 3]
        [--steps 20] [--budget 60] [--extra "--train.lr 3e-3 ..."] [--baseline] [--ablation]

CORPUS.txt is prepared char-level with the default 10 % tail validation split (before any
timing) — for the published comparisons, Tiny Shakespeare.

Part `step`: the time of one training step (forward, backward, AdamW) of our GPT and of
`transformers`' GPT2LMHeadModel built with the same configuration, measured interleaved in one
process (ours, theirs, ours, ...), median over `--steps` steps after warm-up, for
(a) 4 layers × 128 wide, 4 heads, context 64, batch 12, and (b) 6 × 384, 6 heads, context
256, batch 16. fp32 for both, then ours under bf16 autocast, to report our best precision.

Part `quality`: `tinygpt train --data DATA --max-time BUDGET` run `--repeats` times as a
whole process (start-up, training, final full evaluation); the median final full-split
validation loss and whole-process wall time, and the loss-vs-seconds curve of each run.
`--baseline` adds nanoGPT's CPU recipe through our trainer; `--ablation` adds the default
preset with AdamW in place of Muon, in the same budget.

`--compare SRC` measures this checkout against another one (`SRC` is its `src/` folder, for
example a `git worktree` of an earlier commit) in the same run, interleaved: each quality
repeat trains with this code, then with that code; the step part alternates rounds of
`--steps` steps of our model in a fresh process per code tree. Only `tinygpt.core.model.GPT`,
`GPTConfig` and `tinygpt.train.optim.build_optimizer` are used on both sides (under their
earlier names in a checkout from before the stage packages).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from common import ROOT, machine, machine_line, write_section
from tinygpt.core.config import TrainConfig
from tinygpt.core.model import GPT, GPTConfig
from tinygpt.core.runtime import Dist, cpu_has_fast_bf16
from tinygpt.data.batches import RandomWindows
from tinygpt.data.prepare import open_dataset, prepare
from tinygpt.train.optim import build_optimizer

SHAPES = {
    "4x128, ctx 64, batch 12": dict(n_layer=4, n_head=4, n_embd=128, block_size=64, batch=12),
    "6x384, ctx 256, batch 16": dict(n_layer=6, n_head=6, n_embd=384, block_size=256, batch=16),
}


def prepare_data(corpus: Path, work: Path) -> Path:
    return prepare(str(corpus), work / "data", tokenizer="char", progress=False)


def _ours(shape: dict, vocab: int) -> torch.nn.Module:
    cfg = GPTConfig(
        vocab_size=vocab,
        block_size=shape["block_size"],
        n_layer=shape["n_layer"],
        n_head=shape["n_head"],
        n_embd=shape["n_embd"],
        dropout=0.0,
    )
    return GPT(cfg)


def _theirs(shape: dict, vocab: int) -> torch.nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(
        vocab_size=vocab,
        n_positions=shape["block_size"],
        n_embd=shape["n_embd"],
        n_layer=shape["n_layer"],
        n_head=shape["n_head"],
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        activation_function="gelu_new",
    )
    return GPT2LMHeadModel(cfg)


def _step_fn(model, kind: str, sampler: RandomWindows, autocast_bf16: bool):
    opt = build_optimizer(model, TrainConfig(lr=1e-3), "cpu")
    model.train()

    def step() -> None:
        x, y = sampler.next()
        ctx = (
            torch.autocast("cpu", dtype=torch.bfloat16)
            if autocast_bf16
            else torch.autocast("cpu", enabled=False)
        )
        with ctx:
            if kind == "ours":
                _, loss = model(x, y)
            else:
                loss = model(input_ids=x, labels=None).logits
                loss = torch.nn.functional.cross_entropy(
                    loss.float().view(-1, loss.size(-1)), y.reshape(-1)
                )
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def bench_steps(data: Path, steps: int) -> tuple[list[dict], str]:
    ds = open_dataset(data)
    vocab = ds.vocab_size
    rows = []
    for name, shape in SHAPES.items():
        torch.manual_seed(0)
        contenders = {
            "ours fp32": ("ours", _ours(shape, vocab), False),
            "transformers fp32": ("hf", _theirs(shape, vocab), False),
            "ours bf16": ("ours", _ours(shape, vocab), True),
        }
        fns = {}
        for label, (kind, model, bf16) in contenders.items():
            sampler = RandomWindows(ds.train, shape["block_size"], shape["batch"], 0, Dist(), "cpu")
            fns[label] = _step_fn(model, kind, sampler, bf16)
        # Without bf16 hardware (no AMX / AVX-512 BF16) autocast is emulated and an order of
        # magnitude slower: a few steps are enough to show it.
        slow = {"ours bf16"} if not cpu_has_fast_bf16() else set()
        for label, fn in fns.items():  # warm-up
            for _ in range(1 if label in slow else 3):
                fn()
        times: dict[str, list[float]] = {k: [] for k in fns}
        for i in range(steps):  # interleaved, so load changes hit all contenders alike
            for label, fn in fns.items():
                if label in slow and i >= 3:
                    continue
                t = time.perf_counter()
                fn()
                times[label].append(time.perf_counter() - t)
        med = {k: statistics.median(v) * 1000 for k, v in times.items()}
        ratio = med["transformers fp32"] / med["ours fp32"]
        best = min(("ours fp32", "ours bf16"), key=lambda k: med[k])
        rows.append(
            {
                "shape": name,
                **{k: round(v, 1) for k, v in med.items()},
                "speedup_fp32": round(ratio, 2),
                "best": best,
            }
        )
        print(
            f"{name}: "
            + ", ".join(f"{k} {v:.1f} ms" for k, v in med.items())
            + f"; transformers/ours (fp32) = {ratio:.2f}x; our best: {best}",
            flush=True,
        )
    lines = [
        "| model | ours fp32 (ms) | transformers fp32 (ms) | speed-up fp32 | ours bf16 (ms) | our best |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['shape']} | {r['ours fp32']} | {r['transformers fp32']} | "
            f"{r['speedup_fp32']}× | {r['ours bf16']} | {r['best']} |"
        )
    return rows, "\n".join(lines)


STEP_WORKER = """
import json, sys, time
import numpy as np
import torch
try:
    from tinygpt.core.config import TrainConfig
    from tinygpt.core.model import GPT, GPTConfig
    from tinygpt.train.optim import build_optimizer
except ImportError:  # a checkout from before the stage packages
    from tinygpt.config import TrainConfig
    from tinygpt.model import GPT, GPTConfig
    from tinygpt.train import build_optimizer
shape, vocab, steps, threads = json.loads(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
if threads:
    torch.set_num_threads(threads)
tokens = np.fromfile(sys.argv[5], dtype=np.uint16)
torch.manual_seed(0)
model = GPT(GPTConfig(vocab_size=vocab, block_size=shape["block_size"], n_layer=shape["n_layer"],
                      n_head=shape["n_head"], n_embd=shape["n_embd"], dropout=0.0))
opt = build_optimizer(model, TrainConfig(lr=1e-3), "cpu")
g = torch.Generator().manual_seed(0)
T, B = shape["block_size"], shape["batch"]
times = []
for i in range(steps + 2):
    starts = torch.randint(len(tokens) - T, (B,), generator=g).tolist()
    xy = torch.from_numpy(np.stack([tokens[s : s + T + 1] for s in starts]).astype(np.int64))
    t = time.perf_counter()
    _, loss = model(xy[:, :-1], xy[:, 1:])
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    if i >= 2:
        times.append(time.perf_counter() - t)
print(json.dumps(times))
"""


def bench_steps_compare(
    data: Path, steps: int, other: Path, rounds: int, threads: int
) -> tuple[list[dict], str]:
    """Step time of this code and of the code in `other`, alternating fresh processes."""
    ds = open_dataset(data)
    trees = {"this": ROOT / "src", "other": other}
    rows = []
    for name, shape in SHAPES.items():
        times: dict[str, list[float]] = {k: [] for k in trees}
        for _ in range(rounds):
            for label, src in trees.items():
                env = {**os.environ, "PYTHONPATH": str(src)}
                args = [json.dumps(shape), str(ds.vocab_size), str(steps), str(threads),
                        str(data / "train.bin")]  # fmt: skip
                out = subprocess.run(
                    [sys.executable, "-c", STEP_WORKER, *args],
                    capture_output=True, text=True, env=env, check=True,
                )  # fmt: skip
                times[label] += json.loads(out.stdout.strip().splitlines()[-1])
        med = {k: statistics.median(v) * 1000 for k, v in times.items()}
        rows.append({"shape": name, **{k: round(v, 1) for k, v in med.items()}})
        print(
            f"{name}: this {med['this']:.1f} ms, other {med['other']:.1f} ms"
            f" ({med['other'] / med['this']:.3f}x), {len(times['this'])} steps each",
            flush=True,
        )
    lines = [
        "| model | this code (ms) | other code (ms) | other / this |",
        "|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['shape']} | {r['this']} | {r['other']} | {r['other'] / r['this']:.3f} |"
        )
    return rows, "\n".join(lines)


def bench_quality(
    data: Path,
    work: Path,
    repeats: int,
    budget: float,
    extra: list[str],
    src: Path | None = None,
    label: str = "run",
):
    runs = []
    env = {**os.environ, "PYTHONPATH": str(src)} if src else None
    for i in range(repeats):
        out = work / f"{label}{i}"
        budget_args = ["--max-time", str(budget)] if budget else []  # else `extra` has one
        cmd = [sys.executable, "-m", "tinygpt", "train", "--data", str(data), "--out", str(out),
               *budget_args, "--no-progress", *extra]  # fmt: skip
        t = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        wall = time.perf_counter() - t
        if proc.returncode != 0:
            raise SystemExit(f"training failed:\n{proc.stderr[-2000:]}")
        summary = json.loads((out / "summary.json").read_text())
        with open(out / "metrics.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        curve = [(float(r["time_s"]), float(r["val_loss_est"])) for r in rows if r["val_loss_est"]]
        train_curve = [(float(r["time_s"]), float(r["train_loss"])) for r in rows]
        runs.append(
            {
                "val_loss": summary["val_loss"],
                "wall_s": wall,
                "steps": summary["step"],
                "tokens": summary["tokens"],
                "train_s": summary["train_s"],
                "final_eval_s": summary["final_eval_s"],
                "curve": curve,
                "train_curve": train_curve,
                "run": out,
            }
        )
        print(
            f"{label} {i + 1}: val_loss {summary['val_loss']:.4f}, {summary['step']} steps, "
            f"{summary['tokens']:,} tokens, train {summary['train_s']:.1f} s, final eval "
            f"{summary['final_eval_s']:.1f} s, whole process {wall:.1f} s",
            flush=True,
        )
    return runs


# Every setting the default preset changes is set back, so that the recipe does not inherit
# the preset's optimiser, schedule or block.
NANOGPT_RECIPE = [
    "--model.pos", "learned", "--model.norm", "layernorm", "--model.mlp", "gelu_tanh",
    "--model.bias", "false", "--model.qk_norm", "false", "--model.n_layer", "4",
    "--model.n_head", "4", "--model.n_embd", "128", "--model.block_size", "64",
    "--train.optimizer", "adamw", "--train.schedule", "cosine",
    "--train.batch_size", "12", "--train.lr", "1e-3", "--train.min_lr_ratio", "0.1",
    "--train.warmup_steps", "100", "--train.beta2", "0.99", "--max-steps", "2000",
]  # fmt: skip


# The default preset with AdamW in place of Muon, at the schedule AdamW was tuned to
# (lr 4e-3, 50 warm-up steps, cosine to 10 %): what Muon buys in the same 60 seconds.
ADAMW_ABLATION = [
    "--train.optimizer", "adamw", "--train.lr", "4e-3", "--train.warmup_steps", "50",
    "--train.schedule", "cosine", "--train.min_lr_ratio", "0.1",
]  # fmt: skip


def plot_curves(runs: list[dict], path: Path, budget: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=110)
    for i, r in enumerate(runs):
        color = f"C{i}"
        xs, ys = zip(*r["train_curve"]) if r["train_curve"] else ((), ())
        ax.plot(xs, ys, color=color, linewidth=0.8, alpha=0.6, label=f"run {i + 1}: train loss")
        xs, ys = zip(*r["curve"]) if r["curve"] else ((), ())
        ax.plot(xs, ys, color=color, marker="o", linestyle="--", label=f"run {i + 1}: val_loss_est")
        ax.scatter([r["train_s"]], [r["val_loss"]], color=color, marker="*", s=90, zorder=3)
    ax.axhline(1.78, color="grey", linestyle="--", linewidth=1, label="target 1.78")
    ax.set_xlabel("seconds of training")
    ax.set_ylabel("validation loss")
    ax.set_ylim(1.4, 3.0)
    ax.set_title(f"tinygpt train --max-time {budget:g} (stars: full-split val_loss)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpus", type=Path)
    parser.add_argument("--part", choices=["step", "quality", "all"], default="all")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--budget", type=float, default=60.0)
    parser.add_argument("--extra", default="", help="extra `tinygpt train` arguments")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument(
        "--baseline",
        action="store_true",
        help="also run nanoGPT's CPU recipe through our trainer, for a same-machine reference",
    )
    parser.add_argument(
        "--ablation",
        action="store_true",
        help="also run the default preset with AdamW instead of Muon, in the same budget",
    )
    parser.add_argument(
        "--compare",
        type=Path,
        metavar="SRC",
        help="another checkout's src/ folder: measure both, interleaved (module docstring)",
    )
    parser.add_argument("--rounds", type=int, default=5, help="step rounds with --compare")
    args = parser.parse_args()
    if args.compare:
        return compare(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    info = machine()
    print(machine_line(info))
    print(f"torch threads: {torch.get_num_threads()}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = prepare_data(args.corpus, work)
        meta = open_dataset(data).meta
        print(
            f"data: {args.corpus.name}, train {meta['splits']['train']['tokens']:,} tokens, "
            f"val {meta['splits']['val']['tokens']:,} tokens, vocab {meta['vocab_size']}"
        )
        if args.part in ("step", "all"):
            _, table = bench_steps(data, args.steps)
            write_section(
                "train",
                "\n".join(
                    [
                        "## Training step time (`benchmarks/bench_train.py --part step`)",
                        "",
                        machine_line(info),
                        "",
                        f"Median of {args.steps} interleaved steps (forward, backward, the same AdamW for both)"
                        " after warm-up"
                        f" (bf16 on a CPU without bf16 hardware: median of 3 steps),"
                        f" {torch.get_num_threads()} torch threads, char-level {args.corpus.name}."
                        " transformers = `GPT2LMHeadModel` with the same configuration.",
                        "",
                        table,
                    ]
                ),
            )
        if args.part in ("quality", "all"):
            extra = shlex.split(args.extra)
            runs = bench_quality(data, work, args.repeats, args.budget, extra)
            losses = [r["val_loss"] for r in runs]
            walls = [r["wall_s"] for r in runs]
            png = ROOT / "benchmarks" / "results" / "train_quality.png"
            png.parent.mkdir(parents=True, exist_ok=True)
            plot_curves(runs, png, args.budget)
            med_loss, med_wall = statistics.median(losses), statistics.median(walls)
            print(
                f"median val_loss {med_loss:.4f} (target <= 1.78), median whole-process "
                f"{med_wall:.1f} s (target <= 70 s)"
            )
            lines = [
                "## Time to quality (`benchmarks/bench_train.py --part quality`)",
                "",
                machine_line(info),
                "",
                f"`tinygpt train --data <{args.corpus.name}, char, 10% tail val> --max-time"
                f" {args.budget:g} {args.extra}`, the default preset, run {args.repeats} times"
                " as whole processes. val_loss is the full validation split"
                f" ({meta['splits']['val']['tokens']:,} tokens) at the end.",
                "",
                "| run | val_loss | steps | tokens | training (s) | final eval (s) | whole process (s) |",
                "|---|---|---|---|---|---|---|",
            ]
            for i, r in enumerate(runs):
                lines.append(
                    f"| {i + 1} | {r['val_loss']:.4f} | {r['steps']} | {r['tokens']:,} |"
                    f" {r['train_s']:.1f} | {r['final_eval_s']:.1f} | {r['wall_s']:.1f} |"
                )
            if args.baseline:
                base = bench_quality(data, work / "baseline", 1, 0, NANOGPT_RECIPE)[0]
                lines += [
                    "",
                    "Same machine, same data: nanoGPT's CPU recipe (GPT-2 blocks without"
                    " biases, 4 × 128, context 64, batch 12, lr 1e-3 → 1e-4 cosine, 100 warm-up"
                    f" steps, 2000 iterations) through our trainer: val_loss {base['val_loss']:.4f}"
                    f" after {base['train_s']:.1f} s of training ({base['wall_s']:.1f} s whole"
                    " process).",
                ]
            if args.ablation:
                abl = bench_quality(
                    data, work / "ablation", 1, args.budget, [*extra, *ADAMW_ABLATION]
                )[0]
                lines += [
                    "",
                    "Ablation, same machine and budget: the default preset with AdamW instead of"
                    " Muon (lr 4e-3, 50 warm-up steps, cosine to 10 %, the schedule AdamW was"
                    f" tuned to): val_loss {abl['val_loss']:.4f} after {abl['steps']} steps"
                    f" ({abl['wall_s']:.1f} s whole process).",
                ]
            lines += [
                "",
                f"**Median: val_loss {med_loss:.4f} (target ≤ 1.78), whole process "
                f"{med_wall:.1f} s (target ≤ 70 s).** The same recipe measured on the reference"
                " machine of DESIGN.md (a faster CPU with AMX): 1.898 (1.808 with lr 2e-3) in"
                " about 70 s.",
                "",
                "![loss vs seconds](train_quality.png)",
            ]
            write_section("train_quality", "\n".join(lines))
    return 0


def compare(args: argparse.Namespace) -> int:
    """`--compare SRC`: both parts for this code and the other, interleaved in one run."""
    info = machine()
    print(machine_line(info))
    other = args.compare.resolve()
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=other, capture_output=True, text=True
    ).stdout.strip()
    print(f"other code: {other} (commit {commit or 'unknown'})")
    lines = [
        "## This code against an earlier commit (`benchmarks/bench_train.py --compare`)",
        "",
        machine_line(info) + f"; other code: commit {commit or 'unknown'}",
        "",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = prepare_data(args.corpus, work)
        if args.part in ("step", "all"):
            _, table = bench_steps_compare(data, args.steps, other, args.rounds, args.threads)
            lines += [
                f"Training step (forward, backward, AdamW) of our GPT, fp32, {args.rounds}"
                f" alternating rounds of {args.steps} steps in a fresh process per code tree;"
                " medians:",
                "",
                table,
                "",
            ]
        if args.part in ("quality", "all"):
            extra = shlex.split(args.extra)
            this_runs, other_runs = [], []
            for i in range(args.repeats):
                this_runs += bench_quality(
                    data, work / f"this{i}", 1, args.budget, extra, None, "this"
                )
                other_runs += bench_quality(
                    data, work / f"other{i}", 1, args.budget, extra, other, "other"
                )
            lines += [
                f"`tinygpt train --data <{args.corpus.name}, char> --max-time {args.budget:g}"
                f" {args.extra}`, the default preset, alternating whole processes:",
                "",
                "| code | run | val_loss | steps | training (s) | final eval (s) | whole process (s) |",
                "|---|---|---|---|---|---|---|",
            ]
            for label, runs in (("this", this_runs), ("other", other_runs)):
                for i, r in enumerate(runs):
                    lines.append(
                        f"| {label} | {i + 1} | {r['val_loss']:.4f} | {r['steps']} |"
                        f" {r['train_s']:.1f} | {r['final_eval_s']:.1f} | {r['wall_s']:.1f} |"
                    )
            for label, runs in (("this", this_runs), ("other", other_runs)):
                loss = statistics.median(r["val_loss"] for r in runs)
                wall = statistics.median(r["wall_s"] for r in runs)
                steps = statistics.median(r["steps"] for r in runs)
                print(
                    f"{label}: median val_loss {loss:.4f}, steps {steps}, whole process {wall:.1f} s"
                )
                lines += ["", f"Median, {label} code: val_loss {loss:.4f}, {steps:g} steps,"
                          f" whole process {wall:.1f} s."]  # fmt: skip
    write_section("train_compare", "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
