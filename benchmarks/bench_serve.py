"""The HTTP server under load: 1, 8 and 32 concurrent clients against `tinygpt serve`.

Two models with random weights (speed does not depend on what the weights say), saved as run
folders: the default preset (shakespeare-char: 3 layers, 128 wide, context 128) and a GPT-2
style model of 6 layers, 384 wide, context 256. Each is served by `tinygpt serve` in its own
process on loopback (max batch 32, one torch thread); this process is the load generator,
asyncio clients over httpx. Every request: a 16-character prompt, max_tokens 64,
temperature 0.8 with a seed of its own; every other one streamed (with
stream_options.include_usage), the others awaited whole. End-of-text is out of reach (its
logit is set far below every other token's, `never_ends`), so every answer is exactly 64 tokens and a
request only succeeds with status 200, finish_reason "length" and 64 completion tokens.

A phase sends --requests requests through c clients, each client sending its next request
when its last one is answered. Reported per phase: requests that succeeded, p50/p95 latency
(all requests) and time to the first text (streamed requests), aggregate completion tokens
per second over the phase's wall time, and the CPU time this load generator used (percent
of one core: it shares the machine's cores with the server). After the last phase one fresh
request, on a new connection, must be answered within 5 s. Writes
benchmarks/results/serve.md.

    python benchmarks/bench_serve.py [--requests 128] [--threads 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import string
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import torch

from common import ROOT, machine_line, write_section
from tinygpt.core.config import DataConfig, RunConfig, load_config
from tinygpt.core.model import GPT, GPTConfig
from tinygpt.data.tokenizer import train_tokenizer
from tinygpt.infer.loader import save_model_run

CLIENTS = (1, 8, 32)
PROMPT, NEW = 16, 64
FRESH_LIMIT_S = 5.0


@dataclass
class Outcome:
    ok: bool
    latency: float
    first_text: float | None  # streamed requests only
    tokens: int


async def one_request(http: httpx.AsyncClient, model: str, i: int, prompt: str) -> Outcome:
    body = {
        "model": model,
        "prompt": prompt,
        "max_tokens": NEW,
        "temperature": 0.8,
        "seed": i,
    }
    start = time.perf_counter()
    if i % 2:
        r = await http.post("/v1/completions", json=body)
        latency = time.perf_counter() - start
        if r.status_code != 200:
            return Outcome(False, latency, None, 0)
        data = r.json()
        tokens = data["usage"]["completion_tokens"]
        ok = tokens == NEW and data["choices"][0]["finish_reason"] == "length"
        return Outcome(ok, latency, None, tokens)
    body.update(stream=True, stream_options={"include_usage": True})
    first = None
    tokens, reasons, done = 0, [], False
    async with http.stream("POST", "/v1/completions", json=body) as r:
        if r.status_code != 200:
            await r.aread()
            return Outcome(False, time.perf_counter() - start, None, 0)
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            data = line[len("data: ") :]
            if data == "[DONE]":
                done = True
                break
            chunk = json.loads(data)
            if "error" in chunk:
                break
            if chunk["choices"]:
                choice = chunk["choices"][0]
                if first is None and choice["text"]:
                    first = time.perf_counter() - start
                if choice["finish_reason"]:
                    reasons.append(choice["finish_reason"])
            elif chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    latency = time.perf_counter() - start
    ok = done and tokens == NEW and reasons == ["length"]
    return Outcome(ok, latency, first, tokens)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


async def phase(url: str, model: str, clients: int, prompts: list[str]) -> dict[str, float]:
    todo = iter(range(len(prompts)))  # shared: each client takes the next request
    outcomes: list[Outcome] = []
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)

    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as http:

        async def client() -> None:
            for i in todo:
                try:
                    outcomes.append(await one_request(http, model, i, prompts[i]))
                except httpx.HTTPError:
                    outcomes.append(Outcome(False, float("nan"), None, 0))

        cpu = time.process_time()
        start = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        seconds = time.perf_counter() - start
        cpu = time.process_time() - cpu
    good = [o for o in outcomes if o.ok]
    firsts = [o.first_text for o in good if o.first_text is not None]
    return {
        "succeeded": len(good),
        "sent": len(outcomes),
        "seconds": seconds,
        "tokens_per_s": sum(o.tokens for o in good) / seconds,
        "latency_p50": percentile([o.latency for o in good], 0.5),
        "latency_p95": percentile([o.latency for o in good], 0.95),
        "ttft_p50": percentile(firsts, 0.5),
        "ttft_p95": percentile(firsts, 0.95),
        "loadgen_cpu": 100 * cpu / seconds,
    }


def fresh_request(url: str, model: str) -> tuple[bool, float]:
    """One request on a new connection: (answered correctly, seconds)."""
    start = time.perf_counter()
    try:
        r = httpx.post(
            url + "/v1/completions",
            json={"model": model, "prompt": "fresh", "max_tokens": NEW, "temperature": 0},
            timeout=FRESH_LIMIT_S * 4,
        )
        ok = r.status_code == 200 and r.json()["usage"]["completion_tokens"] == NEW
    except httpx.HTTPError:
        ok = False
    return ok, time.perf_counter() - start


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(run: Path, port: int, threads: int) -> subprocess.Popen:
    src = str(ROOT / "src")
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("TINYGPT_API_KEY", None)
    argv = [sys.executable, "-m", "tinygpt", "serve", str(run), "--port", str(port)]
    argv += ["--max-batch", str(max(CLIENTS)), "--max-queue", "128", "--threads", str(threads)]
    argv += ["--device", "cpu", "--log-level", "warning"]
    proc = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, text=True)
    end = time.monotonic() + 120
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"tinygpt serve exited: {proc.stderr.read() if proc.stderr else ''}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        if time.monotonic() > end:
            proc.kill()
            raise SystemExit("tinygpt serve did not answer within 120 s")
        time.sleep(0.2)


def never_ends(model: GPT, eot: int) -> GPT:
    """Random weights for which end-of-text is out of reach, so that every answer runs to
    max_tokens: channel 0 of the residual stream is 1 for every token but end-of-text (the
    blocks and positions never write to it), so after the final norm it is large and
    positive, and end-of-text's head row, -1 in that channel and 0 elsewhere, gets a logit
    some 2 x sqrt(width) below every other token's."""
    with torch.no_grad():
        emb = model.tok_emb.weight
        emb[:, 0] = 1.0
        for name, p in model.named_parameters():
            if name.endswith(("proj.weight", "proj.bias")):  # attention and MLP outputs
                p[0] = 0.0
        if model.pos_emb is not None:
            model.pos_emb.weight[:, 0] = 0.0
        for head in {id(emb): emb, id(model.lm_head.weight): model.lm_head.weight}.values():
            head[eot] = 0.0
            head[eot, 0] = -1.0
    return model


def measure(name: str, config: GPTConfig, tokenizer, folder: Path, args) -> dict:
    torch.manual_seed(0)
    run = folder / name
    data = DataConfig(tokenizer="char")
    model = never_ends(GPT(config), tokenizer.eot_id)
    save_model_run(run, RunConfig(model=config, data=data), model, tokenizer)
    rng = random.Random(1)
    alphabet = string.ascii_letters + string.digits + string.punctuation + " "
    prompts = ["".join(rng.choices(alphabet, k=PROMPT)) for _ in range(args.requests)]
    port = free_port()
    proc = serve(run, port, args.threads)
    url = f"http://127.0.0.1:{port}"
    try:
        asyncio.run(phase(url, name, 8, prompts[:16]))  # warm-up
        results = {}
        for c in CLIENTS:
            results[c] = asyncio.run(phase(url, name, c, prompts))
            print(f"  {name}: {c} clients: {results[c]}", flush=True)
        fresh = fresh_request(url, name)
    finally:
        proc.terminate()
        proc.wait(30)
    return {"phases": results, "fresh": fresh}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=128, help="requests per phase")
    parser.add_argument("--threads", type=int, default=1, help="the server's torch threads")
    args = parser.parse_args()
    if args.requests < max(CLIENTS):
        parser.error(f"--requests must be at least {max(CLIENTS)}, one per client")

    # Printable ASCII: 100 characters, then end-of-text as id 100 (out of reach: never_ends).
    tokenizer = train_tokenizer("char", [string.printable])
    vocab = tokenizer.vocab_size
    char = replace(load_config("shakespeare-char").model, vocab_size=vocab)
    models = {
        "char": (
            f"default preset (shakespeare-char: {char.n_layer} x {char.n_embd}, context "
            f"{char.block_size})",
            char,
        ),
        "gpt2-6x384": (
            "GPT-2 style 6 x 384, 6 heads, context 256",
            GPTConfig(
                vocab_size=vocab, block_size=256, n_layer=6, n_head=6, n_embd=384, dropout=0.0
            ),
        ),
    }
    lines = [
        "## The HTTP server under load (tinygpt serve)",
        "",
        f"- {machine_line()}",
        f"- `tinygpt serve` in its own process on loopback: max batch 32, "
        f"{args.threads} torch thread(s), random weights, fp32",
        f"- {args.requests} requests per phase through c concurrent clients (asyncio + httpx "
        f"in this process), each a {PROMPT}-character prompt and max_tokens {NEW} (end-of-text "
        "out of the models' reach: exactly 64 tokens each), temperature 0.8, a seed per "
        "request; every other request streamed. First text: streamed requests only. Load "
        "generator CPU: this process's CPU time over the phase's wall time (100 % = one core)",
        "",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for key, (title, config) in models.items():
            out = measure(key, config, tokenizer, Path(tmp), args)
            results, (fresh_ok, fresh_s) = out["phases"], out["fresh"]
            lines += [
                f"### {title}",
                "",
                "| clients | succeeded | tokens/s | p50 latency (s) | p95 latency (s) | "
                "p50 first text (s) | p95 first text (s) | load generator CPU |",
                "|---:|---:|---:|---:|---:|---:|---:|---:|",
            ]
            for c, r in results.items():
                lines.append(
                    f"| {c} | {r['succeeded']}/{r['sent']} | {r['tokens_per_s']:.0f} | "
                    f"{r['latency_p50']:.3f} | {r['latency_p95']:.3f} | {r['ttft_p50']:.3f} | "
                    f"{r['ttft_p95']:.3f} | {r['loadgen_cpu']:.0f} % |"
                )
            ratio = results[32]["tokens_per_s"] / results[1]["tokens_per_s"]
            lost = sum(r["sent"] - r["succeeded"] for r in results.values())
            met = ratio >= 4 and lost == 0
            lines += [
                "",
                f"32 clients vs 1: {ratio:.1f}x the aggregate tokens/s; requests lost: {lost} "
                f"(target >= 4x and none lost: {'met' if met else 'NOT met'}). A fresh request "
                f"right after the load: {'answered' if fresh_ok else 'FAILED'} in {fresh_s:.2f} s "
                f"(limit {FRESH_LIMIT_S:g} s: {'met' if fresh_ok and fresh_s <= FRESH_LIMIT_S else 'NOT met'}).",
                "",
            ]
    text = "\n".join(lines) + "\n"
    print(text)
    write_section("serve", text)


if __name__ == "__main__":
    main()
