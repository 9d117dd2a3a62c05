"""ONNX Runtime against PyTorch: generation speed, file size, and where a decoding step's time goes.

Two models with random weights: a GPT-2-style 6-layer, 384-wide one (6 heads, context 512,
vocabulary 4096; about 25 MFLOP per token) and the default preset's char model
(shakespeare-char: 3 layers, 128 wide, RoPE, context 128, 66 characters). Each generates
256 tokens greedily after a 64-token prompt, batch 1, through four paths: PyTorch fp32 with
our KV cache (`tinygpt.infer.generate`), and the ONNX export (`tinygpt.infer.onnx_runtime`) in fp32, in
int8 with reduce_range (the export's default) and in int8 with full-range weights
(--no-reduce-range). The paths take turns (interleaved) and the median of --repeats runs is
reported, with the CPU's flags (int8 speed depends on AVX-512 VNNI).

The limits: the CPU's fp32 matmul speed (a large single-thread matmul, measured here) and
its memory bandwidth (a large copy) bound a batch-1 decoding step from above. One decoding
step of the 6 x 384 model (past of 192 tokens) is then profiled: onnxruntime's own
profiler per operator type, torch.profiler per aten operator.

With `--run RUN` (a trained run folder) it also exports that run in fp32 and int8 and
reports the full validation loss of each through the one loss definition
(`tinygpt.infer.evaluate`), next to PyTorch's, and the file sizes.

    python benchmarks/bench_onnx.py [--repeats 5] [--threads 1] [--run RUN]
"""

from __future__ import annotations

import argparse
import collections
import json
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from common import machine_line, write_section
from tinygpt.core.config import GPTConfig, load_config
from tinygpt.core.info import model_info
from tinygpt.core.model import GPT
from tinygpt.data.tokenizer import CharTokenizer
from tinygpt.export.onnx import quantize_int8, save_onnx_folder
from tinygpt.infer.generate import generate_ids
from tinygpt.infer.onnx_runtime import OnnxLM, generate_tokens

PROMPT, NEW = 64, 256
PAST = 192  # the profiled step: the middle of a 64 + 256 generation


def models() -> dict[str, GPT]:
    torch.manual_seed(0)
    big = GPT(GPTConfig(vocab_size=4096, block_size=512, n_layer=6, n_head=6, n_embd=384))
    char = load_config(preset="shakespeare-char").model
    char = GPTConfig(**{**char.__dict__, "vocab_size": 66})
    return {"6 x 384 (GPT-2 style)": big.eval(), "default char model": GPT(char).eval()}


def export_all(model: GPT, root: Path) -> dict[str, Path]:
    """fp32, int8 (reduce_range) and int8 (full range) folders of `model`."""
    tokenizer = CharTokenizer.train(["ab"])  # the graph does not depend on it
    fp32 = save_onnx_folder(model, root / "fp32", tokenizer=tokenizer)
    folders = {"ONNX fp32": fp32}
    for name, reduce_range in [("ONNX int8, reduce_range", True), ("ONNX int8, full range", False)]:
        folder = root / name.replace(" ", "").replace(",", "-")
        shutil.copytree(fp32, folder)
        quantize_int8(fp32 / "model.onnx", folder / "model.onnx", reduce_range=reduce_range)
        folders[name] = folder
    return folders


def interleaved(runners: dict[str, Callable[[], list[int]]], repeats: int):
    """Median seconds and the last tokens of each runner; the runners take turns."""
    times: dict[str, list[float]] = {n: [] for n in runners}
    tokens: dict[str, list[int]] = {}
    for fn in runners.values():  # warm-up: allocations, kernels, lazy imports
        fn()
    for _ in range(repeats):
        for name, fn in runners.items():
            start = time.perf_counter()
            tokens[name] = fn()
            times[name].append(time.perf_counter() - start)
    return {n: (statistics.median(times[n]), tokens[n]) for n in runners}


def matmul_gflops(threads: int) -> float:
    """fp32 GFLOP/s of a 1024^3 matmul in torch (oneDNN/MKL kernels): the compute ceiling."""
    torch.set_num_threads(threads)
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    a @ b
    best = min(_once(lambda: a @ b) for _ in range(7))
    return 2 * 1024**3 / best / 1e9


def copy_gbps() -> float:
    """Memory bandwidth of one core: bytes read + written per second copying 256 MB."""
    a = np.ones(64 * 2**20, dtype=np.float32)
    b = np.empty_like(a)
    np.copyto(b, a)
    best = min(_once(lambda: np.copyto(b, a)) for _ in range(5))
    return 2 * a.nbytes / best / 1e9


def _once(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def flops_per_token(config: GPTConfig, context: float) -> float:
    """Matmul FLOPs of one decoded token: the weight matrices plus attention over `context`."""
    f = model_info(config)["flops_per_token"]
    return (
        f["attention_linear"]
        + f["mlp"]
        + f["lm_head"]
        + 4 * config.n_layer * config.n_embd * context
    )


def weight_bytes(folder: Path | None, model: GPT) -> int:
    """Bytes of weights a decoding step reads: the graph file, or the fp32 parameters."""
    if folder is None:
        return 4 * model.num_params()
    return (folder / "model.onnx").stat().st_size


def measure(
    model: GPT,
    folders: dict[str, Path],
    new: int,
    args: argparse.Namespace,
    gflops: float,
    gbps: float,
    header: bool = True,
) -> list[str]:
    """Generate `new` tokens after the prompt through every path; the table and a summary."""
    c = model.config
    g = torch.Generator().manual_seed(1)
    prompt = torch.randint(0, c.vocab_size, (PROMPT,), generator=g).tolist()
    runners: dict[str, Callable[[], list[int]]] = {
        "PyTorch fp32, KV cache": lambda: generate_ids(
            model, prompt, max_new_tokens=new, temperature=0
        )[0]
    }
    lms = {name: OnnxLM(folder, threads=args.threads) for name, folder in folders.items()}
    for name, lm in lms.items():
        runners[name] = lambda lm=lm: [
            int(t[0]) for t in generate_tokens(lm, [prompt], max_new_tokens=new, temperature=0)
        ]
    results = interleaved(runners, args.repeats)
    base_s, base_tokens = results["PyTorch fp32, KV cache"]
    ctx = min(c.block_size, PROMPT + new / 2)  # the average context of a step
    flops = flops_per_token(c, ctx)
    limit = gflops * 1e9 / flops
    lines = []
    if header:
        lines.append(
            f"{model.num_params():,} parameters; {flops / 1e6:.1f} MFLOP per token (matmuls, "
            f"average context {ctx:.0f}): the fp32 compute ceiling is {limit:,.0f} tokens/s."
        )
        slides = max(0, PROMPT + new - c.block_size)
        if slides:
            lines.append(
                f"The context is {c.block_size}: for the last {slides} tokens both paths slide "
                f"the window and feed the last {c.block_size} tokens again at every step (as "
                "the no-cache path does), so those steps are prefills of the whole window."
            )
        lines.append("")
    lines += [
        "| path | model bytes | tokens/s | vs PyTorch | greedy tokens = PyTorch | % of fp32 "
        "compute ceiling | ceiling if weights came from DRAM, tokens/s |",
        "|---|---:|---:|---:|---|---:|---:|",
    ]
    for name, (seconds, tokens) in results.items():
        size = weight_bytes(folders.get(name), model)
        same = sum(a == b for a, b in zip(tokens, base_tokens))
        rate = new / seconds
        lines.append(
            f"| {name} | {size / 1e6:.2f} MB | {rate:.1f} | {base_s / seconds:.2f}x | "
            f"{'yes' if same == new else f'{same}/{new}'} | {rate / limit:.1%} | "
            f"{gbps * 1e9 / size:,.0f} |"
        )
    int8 = results["ONNX int8, reduce_range"][0]
    fp32_bytes = 4 * model.num_params()
    fp32_file = weight_bytes(folders["ONNX fp32"], model)
    int8_file = weight_bytes(folders["ONNX int8, reduce_range"], model)
    lines += [
        "",
        f"ONNX int8 (reduce_range) vs PyTorch fp32: {base_s / int8:.2f}x the tokens/s (target 2x)",
    ]
    if header:
        lines[-1] += (
            f"; int8 file {fp32_bytes / int8_file:.2f}x smaller than the fp32 weights "
            f"({fp32_bytes / 1e6:.2f} MB), {fp32_file / int8_file:.2f}x smaller than the fp32 "
            "ONNX file (target 3.5x; with a tied head the ONNX file stores the token table "
            "twice: once for the embedding, once transposed for the head)"
        )
    lines[-1] += "."
    return [*lines, ""]


# ----------------------------------------------------------------------------- profiling


def profile_onnx(
    folder: Path, threads: int, steps: int = 50
) -> tuple[float, list[tuple[str, float]], float]:
    """Wall ms of one decoding step (past PAST) through session.run, the kernel time per
    operator type (us per step, largest first) and the summed kernel time."""
    lm = OnnxLM(folder, threads=threads)
    c = lm
    past = [
        np.random.randn(1, c.n_kv_head, PAST, c.head_dim).astype(np.float32) for _ in lm.past_names
    ]
    ids, mask, pos = np.array([[5]]), np.ones((1, PAST + 1), np.int64), np.array([[PAST]])
    for _ in range(5):
        lm(ids, mask, pos, past)
    wall = statistics.median(_once(lambda: lm(ids, mask, pos, past)) for _ in range(steps)) * 1e3
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    opts.enable_profiling = True
    opts.profile_file_prefix = str(folder / "profile")
    session = ort.InferenceSession(
        str(folder / "model.onnx"), opts, providers=["CPUExecutionProvider"]
    )
    feed = {
        "input_ids": ids,
        "attention_mask": mask,
        "position_ids": pos,
        **dict(zip(lm.past_names, past)),
    }
    for _ in range(steps):
        session.run(None, feed)
    events = json.loads(Path(session.end_profiling()).read_text())
    per_op: collections.Counter[str] = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per_op[e["args"]["op_name"]] += e["dur"] / steps
    return wall, per_op.most_common(), sum(per_op.values())


def profile_torch(model: GPT, steps: int = 30) -> tuple[float, list[tuple[str, float]], float]:
    """The same for PyTorch with our KV cache: wall ms, self CPU us per aten operator."""
    cache = model.new_cache(1)
    with torch.inference_mode():
        model(torch.randint(0, model.config.vocab_size, (1, PAST)), cache=cache)
        x = torch.tensor([[5]])

        def step() -> None:
            cache.lens.fill_(PAST)
            model(x, cache=cache, last_only=True)

        for _ in range(5):
            step()
        wall = statistics.median(_once(step) for _ in range(steps)) * 1e3
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                step()
    per_op = [(e.key, e.self_cpu_time_total / steps) for e in prof.key_averages()]
    per_op.sort(key=lambda kv: -kv[1])
    return wall, per_op, sum(t for _, t in per_op)


def profile_lines(
    name: str, wall: float, per_op: list[tuple[str, float]], kernels: float
) -> list[str]:
    top = ", ".join(f"{op} {us / kernels:.0%}" for op, us in per_op[:6])
    return [f"| {name} | {wall:.2f} | {1e3 / wall:,.0f} | {top} |"]


# ------------------------------------------------------------------------------- quality


class GraphAsModel(torch.nn.Module):
    """An ONNX graph behind the (logits, loss) interface `tinygpt.infer.evaluate` calls."""

    def __init__(self, lm: OnnxLM) -> None:
        super().__init__()
        self.lm = lm

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        B, T = x.shape
        positions = np.broadcast_to(np.arange(T), (B, T)).copy()
        mask = np.ones((B, T), dtype=np.int64)
        logits, _ = self.lm(x.numpy().astype(np.int64), mask, positions, self.lm.empty_past(B))
        return torch.from_numpy(logits), None


def quality(run_dir: Path, root: Path, threads: int) -> list[str]:
    """Full validation loss of a trained run: PyTorch, ONNX fp32 and the two int8 folders."""
    from tinygpt.core.run import RunDir
    from tinygpt.data.prepare import open_dataset
    from tinygpt.export.onnx import export_run_onnx
    from tinygpt.infer.loader import load_run
    from tinygpt.infer.scoring import evaluate

    run = load_run(run_dir)
    data = RunDir(run_dir).dataset_dir()
    if data is None:
        raise SystemExit(f"{run_dir} records no dataset folder to evaluate on")
    val = np.asarray(open_dataset(data).val)
    bs = run.config.model.block_size
    fp32 = export_run_onnx(run_dir, root / "run-fp32")
    folders = {"ONNX fp32": fp32}
    for name, reduce_range in [("ONNX int8, reduce_range", True), ("ONNX int8, full range", False)]:
        folders[name] = export_run_onnx(
            run_dir, root / f"run-{reduce_range}", quantize="int8", reduce_range=reduce_range
        )
    torch_loss = evaluate(run.model, val, bs).loss
    lines = [
        f"### Quality: a trained run ({run.config.model.n_layer} layers x "
        f"{run.config.model.n_embd}, {run.model.num_params():,} parameters, "
        f"{run.checkpoint_dir.name})",
        "",
        f"Full validation split, {len(val):,} tokens, non-overlapping windows of {bs}.",
        "",
        "| model | model bytes | val loss | vs PyTorch |",
        "|---|---:|---:|---:|",
        f"| PyTorch fp32 | {4 * run.model.num_params() / 1e6:.2f} MB | {torch_loss:.4f} | - |",
    ]
    for name, folder in folders.items():
        loss = evaluate(GraphAsModel(OnnxLM(folder, threads=threads)), val, bs).loss
        size = (folder / "model.onnx").stat().st_size
        lines.append(
            f"| {name} | {size / 1e6:.2f} MB | {loss:.4f} | {loss / torch_loss - 1:+.2%} |"
        )
    return [*lines, ""]


# ---------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch and onnxruntime threads")
    parser.add_argument("--run", type=Path, default=None, help="a trained run: report its loss")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    gflops, gbps = matmul_gflops(args.threads), copy_gbps()
    lines = [
        "## ONNX Runtime against PyTorch (generation, int8)",
        "",
        f"- {machine_line()}",
        f"- onnxruntime {ort.__version__}; {args.threads} thread(s) for torch and onnxruntime",
        f"- batch 1, greedy; {NEW} new tokens after a {PROMPT}-token prompt (time includes the "
        f"prefill); random weights; paths interleaved, median of {args.repeats} runs",
        f"- this CPU's ceilings, measured: fp32 matmul {gflops:.1f} GFLOP/s (1024^3, torch); "
        f"memory copy {gbps:.1f} GB/s (read + write, 256 MB)",
        "",
    ]
    profiles: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        for title, model in models().items():
            c = model.config
            folders = export_all(model, Path(tmp) / title.split()[0])
            lines += [f"### {title}", ""]
            lines += measure(model, folders, NEW, args, gflops, gbps)
            if c.block_size < PROMPT + NEW:
                within = c.block_size - PROMPT
                lines += [
                    f"The same model for {within} new tokens, within its context (no sliding):",
                    "",
                    *measure(model, folders, within, args, gflops, gbps, header=False),
                ]
            if c.n_embd == 384:
                wall, per_op, kernels = profile_torch(model)
                profiles += profile_lines("PyTorch fp32, KV cache", wall, per_op, kernels)
                for name, folder in folders.items():
                    profiles += profile_lines(name, *profile_onnx(folder, args.threads))
        if args.run is not None:
            lines += quality(args.run, Path(tmp), args.threads)
    lines += [
        f"### One decoding step of the 6 x 384 model (past {PAST} tokens)",
        "",
        "Step: one forward call as the generator makes it, median of 50, no profiler; its "
        "inverse is the decoding speed without prefill, Python loop or sampling. Shares: of the "
        "time inside operators, from onnxruntime's profiler and from torch.profiler (self CPU "
        "time, which includes the dispatcher's work per operator). Both profilers add their "
        "own cost per operator, so only the shares are shown.",
        "",
        "| path | step ms | steps/s | largest operators (share of operator time) |",
        "|---|---:|---:|---|",
        *profiles,
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    write_section("onnx", text)


if __name__ == "__main__":
    main()
