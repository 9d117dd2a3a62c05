"""Continuous batching: aggregate tokens per second with 1, 8 and 32 concurrent requests.

Two models with random weights (speed does not depend on what the weights say): the default
preset (shakespeare-char: 3 layers, 128 wide, rotary positions, context 128) and a GPT-2-style
model of 6 layers, 384 wide, 6 heads, context 256 (nanoGPT's Shakespeare-char size), both
over a character vocabulary. Clients are asyncio tasks on one event loop using the engine's
async API as a server does, half of the requests streamed and half awaited whole; each
client sends its requests one after another. Every request: a 16-token prompt, exactly 64
new tokens (end-of-text ignored), temperature 0.8 with its own seed. A phase runs --requests
requests with c clients; phases take turns over --repeats rounds (load from other processes
spreads over all of them) and the medians are reported. Then one decoding step of 1 and of
32 rows is profiled (torch.profiler): the time in matrix products, attention and the rest.
Writes benchmarks/results/engine.md.

    python benchmarks/bench_engine.py [--repeats 5] [--requests 32] [--threads 1]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import string
import time

import torch

from common import machine_line, write_section
from tinygpt.core.config import load_config
from tinygpt.core.model import GPT, GPTConfig
from tinygpt.data.tokenizer import train_tokenizer
from tinygpt.infer.engine import Engine

CLIENTS = (1, 8, 32)
PROMPT, NEW = 16, 64


async def phase(engine: Engine, clients: int, prompts: list[list[int]]) -> dict[str, float]:
    """Run every prompt through `clients` concurrent clients; timings of the phase."""
    todo = iter(range(len(prompts)))  # shared: each client takes the next request
    latency: list[float] = []
    first: list[float] = []

    async def client() -> None:
        for i in todo:
            req = engine.submit(
                prompts[i], max_tokens=NEW, temperature=0.8, seed=i, stop_token_ids=()
            )
            if i % 2:
                result = await req.aresult()
            else:
                async for _ in req:
                    pass
                result = req.result()
            assert result.usage.completion_tokens == NEW, result.finish_reason
            latency.append(req.finished_at - req.submitted_at)
            first.append(req.first_token_at - req.submitted_at)

    steps = engine.stats().steps
    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    seconds = time.perf_counter() - start
    steps = engine.stats().steps - steps
    return {
        "seconds": seconds,
        "tokens_per_s": len(prompts) * NEW / seconds,
        "ms_per_step": 1000 * seconds / steps,
        "rows_per_step": len(prompts) * (NEW - 1) / steps,  # decoding steps only
        "latency_p50": statistics.median(latency),
        "ttft_p50": statistics.median(first),
    }


def measure(config: GPTConfig, tokenizer, args) -> dict[int, dict[str, float]]:
    torch.manual_seed(0)
    model = GPT(config).eval()
    g = torch.Generator().manual_seed(1)
    prompts = [
        torch.randint(0, tokenizer.vocab_size - 1, (PROMPT,), generator=g).tolist()
        for _ in range(args.requests)
    ]
    runs: dict[int, list[dict[str, float]]] = {c: [] for c in CLIENTS}
    with Engine(model, tokenizer, max_batch=max(CLIENTS), max_queue=args.requests) as engine:
        asyncio.run(phase(engine, max(CLIENTS), prompts[: max(CLIENTS)]))  # warm-up
        for _ in range(args.repeats):
            for c in CLIENTS:
                runs[c].append(asyncio.run(phase(engine, c, prompts)))
    return {c: {k: statistics.median(r[k] for r in runs[c]) for k in runs[c][0]} for c in CLIENTS}


def profile_step(config: GPTConfig, tokenizer, rows: int) -> dict[str, float]:
    """Milliseconds of one decoding step of `rows` rows, by kind of operator: the mean over
    10 profiled steps, from the least disturbed of 3 such profiles (the engine is stepped by
    hand, without its thread)."""
    from torch.profiler import ProfilerActivity, profile

    torch.manual_seed(0)
    engine = Engine(GPT(config).eval(), tokenizer, max_batch=rows, start=False)
    for i in range(rows):
        engine.submit([1 + i, 2, 3, 4] * 4, max_tokens=NEW, stop_token_ids=(), seed=i)
    for _ in range(8):  # joined, and past the first steps
        engine.step()
    kinds = {"matmul": ("aten::mm", "aten::addmm", "aten::bmm"), "attention": ("sdpa", "attention")}
    best: dict[str, float] | None = None
    for _ in range(3):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(10):
                engine.step()
        spent = {"matmul": 0.0, "attention": 0.0, "other": 0.0}
        for event in prof.key_averages():
            names = kinds.items()
            kind = next((k for k, n in names if any(x in event.key for x in n)), "other")
            spent[kind] += event.self_cpu_time_total / 10 / 1000  # ms per step
        spent["total"] = sum(spent.values())
        if best is None or spent["total"] < best["total"]:
            best = spent
    assert best is not None
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--requests", type=int, default=32, help="requests per phase")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args()
    if args.requests < max(CLIENTS):
        parser.error(f"--requests must be at least {max(CLIENTS)}, one per client")
    torch.set_num_threads(args.threads)

    # Printable ASCII: 100 characters + end-of-text, inside both models' vocabulary of 128
    # (the engine never samples ids the tokenizer lacks).
    tokenizer = train_tokenizer("char", [string.printable])
    char = load_config("shakespeare-char").model
    models = {
        f"default preset (shakespeare-char: {char.n_layer} x {char.n_embd}, context "
        f"{char.block_size})": char,
        "GPT-2 style 6 x 384, 6 heads, context 256": GPTConfig(
            vocab_size=128, block_size=256, n_layer=6, n_head=6, n_embd=384, dropout=0.0
        ),
    }
    lines = [
        "## Continuous batching (the generation engine)",
        "",
        f"- {machine_line()}",
        f"- torch.set_num_threads({args.threads}); random weights, fp32; max_batch 32",
        f"- {args.requests} requests per phase, each a {PROMPT}-token prompt and exactly {NEW} "
        "new tokens (end-of-text ignored), temperature 0.8, a seed per request; c clients "
        "send requests one after another (asyncio, half streamed); median of "
        f"{args.repeats} interleaved rounds",
        "",
    ]
    for name, config in models.items():
        results = measure(config, tokenizer, args)
        lines += [
            f"### {name}",
            "",
            "| clients | tokens/s | ms per step | rows per step | p50 latency (s) | p50 first token (s) |",
            "|---:|---:|---:|---:|---:|---:|",
        ]
        for c, r in results.items():
            lines.append(
                f"| {c} | {r['tokens_per_s']:.0f} | {r['ms_per_step']:.2f} | "
                f"{r['rows_per_step']:.1f} | {r['latency_p50']:.3f} | {r['ttft_p50']:.3f} |"
            )
        ratio = results[32]["tokens_per_s"] / results[1]["tokens_per_s"]
        lines += [
            "",
            f"32 clients vs 1: {ratio:.1f}x the aggregate tokens/s "
            f"(target >= 4x: {'met' if ratio >= 4 else 'NOT met'})",
            "",
            "One decoding step, profiled (ms of operator time; the profiler adds its own):",
            "",
            "| rows | total | matrix products | attention | other ops |",
            "|---:|---:|---:|---:|---:|",
        ]
        for rows in (1, 32):
            p = profile_step(config, tokenizer, rows)
            lines.append(
                f"| {rows} | {p['total']:.2f} | {p['matmul']:.2f} | {p['attention']:.2f} | "
                f"{p['other']:.2f} |"
            )
        lines.append("")
        print("\n".join(lines[-(len(results) + 14) :]), flush=True)
    text = "\n".join(lines) + "\n"
    print(text)
    write_section("engine", text)


if __name__ == "__main__":
    main()
