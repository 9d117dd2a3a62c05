"""Benchmark `tinygpt prepare`: speed-up from worker processes, and peak memory vs input size.

Builds inputs by shuffling the paragraphs of a corpus file and repeating them up to a size,
written as one text file (one document, which prepare streams in pieces). Each prepare runs
in a fresh child process that reports its own peak RSS and that of its worker processes
(`resource.getrusage`), so the runs do not contaminate each other.

    python benchmarks/bench_prepare.py /work/shared/data/tinyshakespeare.txt \
        --speed-mb 20 --memory-mb 50 500

Speed uses a BPE tokenizer trained once beforehand and passed as a file, so that only
reading and encoding are timed. Memory uses the char tokenizer by default (faster to encode
500 MB; the memory behaviour of the pipeline is the same) — `--memory-tokenizer bpe` to change.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import machine_line

RESULTS = Path(__file__).parent / "results" / "prepare.md"


def make_input(source: Path, mb: float, dest: Path, seed: int = 0) -> Path:
    """Shuffle the paragraphs of `source` and repeat them until the file holds `mb` MB."""
    paragraphs = [p for p in source.read_text("utf-8").split("\n\n") if p.strip()]
    rng = random.Random(seed)
    target = int(mb * 1_000_000)
    written = 0
    with open(dest, "w", encoding="utf-8") as f:
        while written < target:
            rng.shuffle(paragraphs)
            for p in paragraphs:
                data = p + "\n\n"
                f.write(data)
                written += len(data.encode("utf-8"))
                if written >= target:
                    break
    return dest


def child(args: argparse.Namespace) -> None:
    """Run one prepare in this process and print timing and peak memory as JSON."""
    from tinygpt.data.prepare import prepare_dataset

    start = time.perf_counter()
    result = prepare_dataset(
        args.input, args.out, tokenizer=args.tokenizer, workers=args.child_workers, progress=False
    )
    seconds = time.perf_counter() - start
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    splits = result.meta["splits"]
    print(
        json.dumps(
            {
                "seconds": seconds,
                "peak_rss_mb": own / 1024,  # ru_maxrss is in KiB on Linux
                "worker_peak_rss_mb": workers / 1024,
                "tokens": splits["train"]["tokens"] + splits["val"]["tokens"],
                "bytes": splits["train"]["bytes"] + splits["val"]["bytes"],
            }
        )
    )


def run_child(input_path: Path, out: Path, tokenizer: str, workers: int) -> dict:
    cmd = [
        sys.executable, __file__, "--child", "--input", str(input_path), "--out", str(out),
        "--tokenizer", tokenizer, "--child-workers", str(workers),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"prepare failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpus", nargs="?", default="/work/shared/data/tinyshakespeare.txt")
    parser.add_argument("--speed-mb", type=float, default=20.0)
    parser.add_argument("--memory-mb", type=float, nargs="+", default=[50.0, 500.0])
    parser.add_argument("--memory-tokenizer", choices=("char", "bpe"), default="char")
    parser.add_argument("--vocab-size", type=int, default=1024)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--write", type=Path, default=RESULTS, help="markdown results file")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--input", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--tokenizer", help=argparse.SUPPRESS)
    parser.add_argument("--child-workers", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    from tinygpt.data.tokenizer import train_tokenizer

    corpus = Path(args.corpus)
    lines = [
        "# prepare benchmark\n",
        f"- {machine_line()}",
        f"- input: paragraphs of {corpus.name} shuffled and repeated into one text file",
        "",
    ]
    with tempfile.TemporaryDirectory(prefix="bench-prepare-") as tmp:
        work = Path(tmp)
        tok = train_tokenizer(
            "bpe", [corpus.read_text("utf-8")], vocab_size=args.vocab_size, backend="hf"
        )
        tok_file = tok.save(work / "bpe" / "tokenizer.json")

        speed_input = make_input(corpus, args.speed_mb, work / "speed.txt")
        lines += [
            f"## Workers (BPE, vocab {args.vocab_size}, tokenizer given as a file; "
            f"{args.speed_mb:g} MB)\n",
            "| workers | seconds | MB/s | tokens | speed-up |",
            "|---:|---:|---:|---:|---:|",
        ]
        base = None
        for w in args.workers:
            r = run_child(speed_input, work / f"speed-{w}", str(tok_file), w)
            base = base or r["seconds"]
            lines.append(
                f"| {w} | {r['seconds']:.2f} | {r['bytes'] / 1e6 / r['seconds']:.2f} | "
                f"{r['tokens']:,} | {base / r['seconds']:.2f}x |"
            )
            print(lines[-1], flush=True)
        speed_input.unlink()

        mem_tok = "char" if args.memory_tokenizer == "char" else str(tok_file)
        lines += [
            "",
            f"## Peak memory ({args.memory_tokenizer} tokenizer, {max(args.workers)} workers)\n",
            "| input MB | seconds | tokens | peak RSS main (MB) | peak RSS worker (MB) |",
            "|---:|---:|---:|---:|---:|",
        ]
        for mb in args.memory_mb:
            path = make_input(corpus, mb, work / f"mem-{mb:g}.txt")
            r = run_child(path, work / f"mem-{mb:g}", mem_tok, max(args.workers))
            lines.append(
                f"| {mb:g} | {r['seconds']:.1f} | {r['tokens']:,} | {r['peak_rss_mb']:.0f} | "
                f"{r['worker_peak_rss_mb']:.0f} |"
            )
            print(lines[-1], flush=True)
            path.unlink()
            for f in (work / f"mem-{mb:g}").iterdir():
                f.unlink()
    report = "\n".join(lines) + "\n"
    print(report)
    args.write.parent.mkdir(parents=True, exist_ok=True)
    args.write.write_text(report, encoding="utf-8")


if __name__ == "__main__":
    main()
