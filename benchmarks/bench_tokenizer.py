"""Tokenizer benchmark: our BPE trainer and encoder against Hugging Face `tokenizers`.

Usage: python benchmarks/bench_tokenizer.py CORPUS_PATH [--vocab-size 4096] [--repeats 3]
       [--pattern gpt4] [--out benchmarks/results/tokenizer.md]

Measures, as medians over the repeats:
- training time of a byte-level BPE with the given vocabulary, ours vs `tokenizers`;
- encode throughput over the whole corpus (one string), both reading OUR tokenizer.json,
  with a cold cache for ours (a fresh load each repeat), and whether their ids agree;
- the same with GPT-2's 50,257-id vocabulary (`--tokenizer gpt2`, from the cache or fetched),
  ours and HF reading the converted tokenizer.json, against `tiktoken` built from the same
  ranks (skipped with a note when the ranks cannot be had).
If our trainer is more than 10x slower than theirs, a profile of ours is added.

Prints machine, date, commit and figures, and writes them as a markdown section.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import tempfile
from pathlib import Path

from common import ROOT, machine, timed
from tinygpt.core.errors import TinyGPTError
from tinygpt.data.tokenizer import load_tokenizer, train_tokenizer
from tinygpt.data.tokenizer.bpe import PATTERNS


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpus", type=Path)
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--pattern", choices=("gpt2", "gpt4"), default="gpt4")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/tokenizer.md")
    args = parser.parse_args()

    import tokenizers

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    text = args.corpus.read_text(encoding="utf-8")
    n_bytes = len(text.encode("utf-8"))
    info = machine()
    print(" | ".join(f"{k}: {v}" for k, v in info.items()))
    print(f"corpus {args.corpus.name}: {len(text):,} chars, {n_bytes:,} bytes")

    def train(backend: str):
        return train_tokenizer(
            "bpe", [text], vocab_size=args.vocab_size, backend=backend, pattern=args.pattern
        )

    ours_train, ours = timed(lambda: train("native"), args.repeats)
    hf_train, _ = timed(lambda: train("hf"), args.repeats)
    print(
        f"train  ours {ours_train:.2f} s   hf {hf_train:.2f} s   ratio {ours_train / hf_train:.1f}x"
    )

    with tempfile.TemporaryDirectory() as tmp:
        path = ours.save(Path(tmp) / "tokenizer.json")
        ours_enc, ids = timed(lambda: load_tokenizer(path).encode(text), args.repeats)
        theirs = tokenizers.Tokenizer.from_file(str(path))
        hf_enc, hf_ids = timed(lambda: theirs.encode(text).ids, args.repeats)
    same = ids == hf_ids
    n_tokens = len(ids)
    mb = n_bytes / 1e6
    print(
        f"encode ours {ours_enc:.2f} s ({mb / ours_enc:.2f} MB/s, {n_tokens / ours_enc:,.0f} tok/s)"
        f"   hf {hf_enc:.2f} s ({mb / hf_enc:.2f} MB/s)   identical ids: {same}"
    )
    print(f"tokens {n_tokens:,}  ({n_bytes / n_tokens:.2f} bytes per token)")

    gpt2 = bench_gpt2(text, args.repeats)

    profile = ""
    if ours_train > 10 * hf_train:
        prof = cProfile.Profile()
        prof.enable()
        train("native")
        prof.disable()
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_stats(15)
        profile = buf.getvalue()
        print(profile)

    lines = [
        "## Tokenizer: byte-level BPE, ours vs Hugging Face `tokenizers`",
        "",
        f"`python benchmarks/bench_tokenizer.py {args.corpus.name} --vocab-size {args.vocab_size}"
        f" --repeats {args.repeats} --pattern {args.pattern}`",
        "",
        f"Machine: {info['platform']}, {info['cpu']}, {info['cores']} cores, "
        f"Python {info['python']}. Date: {info['date']}. Commit: {info['commit']}.",
        "",
        f"Corpus: {args.corpus.name}, {len(text):,} characters, {n_bytes:,} bytes. "
        f"Vocabulary {args.vocab_size}, pattern {args.pattern}; medians of {args.repeats}.",
        "",
        "| | ours (Python) | HF tokenizers (Rust) | ours / HF |",
        "|---|---:|---:|---:|",
        f"| train | {ours_train:.2f} s | {hf_train:.2f} s | {ours_train / hf_train:.1f}x |",
        f"| encode whole corpus | {ours_enc:.2f} s | {hf_enc:.2f} s | {ours_enc / hf_enc:.1f}x |",
        f"| encode throughput | {mb / ours_enc:.2f} MB/s | {mb / hf_enc:.2f} MB/s | |",
        f"| tokens/s | {n_tokens / ours_enc:,.0f} | {n_tokens / hf_enc:,.0f} | |",
        "",
        f"Both encoders read our tokenizer.json; their ids over the whole corpus are "
        f"{'identical' if same else 'DIFFERENT'} ({n_tokens:,} tokens, "
        f"{n_bytes / n_tokens:.2f} bytes per token). Target: our trainer within 10x of HF's "
        f"time: {'met' if ours_train <= 10 * hf_train else 'NOT met'}.",
        "",
        *gpt2,
    ]
    if profile:
        lines += ["Profile of our trainer:", "", "```", profile.strip(), "```", ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines), encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


def bench_gpt2(text: str, repeats: int) -> list[str]:
    """Encode `text` with GPT-2's vocabulary: ours, HF tokenizers, tiktoken. Markdown lines."""
    import tokenizers

    from tinygpt.data.tokenizer.gpt2 import gpt2_tokenizer_file, ranks_file

    try:
        path = gpt2_tokenizer_file()
        import tiktoken
        from tiktoken.load import load_tiktoken_bpe
    except (TinyGPTError, ImportError) as exc:
        print(f"gpt2: skipped ({exc})")
        return ["GPT-2 vocabulary: skipped (" + str(exc) + ").", ""]
    ranks = load_tiktoken_bpe(str(ranks_file()))
    enc = tiktoken.Encoding(
        "gpt2", pat_str=PATTERNS["gpt2"], mergeable_ranks=ranks,
        special_tokens={"<|endoftext|>": len(ranks)},
    )  # fmt: skip
    hf = tokenizers.Tokenizer.from_file(str(path))
    ours_s, ids = timed(lambda: load_tokenizer(path).encode(text), repeats)
    hf_s, hf_ids = timed(lambda: hf.encode(text).ids, repeats)
    tt_s, tt_ids = timed(lambda: enc.encode_ordinary(text), repeats)
    same = ids == hf_ids == tt_ids
    mb = len(text.encode("utf-8")) / 1e6
    print(
        f"gpt2   ours {ours_s:.2f} s ({mb / ours_s:.2f} MB/s)   hf {hf_s:.2f} s "
        f"({mb / hf_s:.2f} MB/s)   tiktoken {tt_s:.3f} s ({mb / tt_s:.2f} MB/s)   "
        f"identical ids: {same}"
    )
    return [
        "GPT-2's vocabulary (50,257 ids, `--tokenizer gpt2`): encode the whole corpus, ours "
        "and HF reading the converted tokenizer.json (ours with a fresh load each repeat), "
        "tiktoken built from the same ranks; one thread each.",
        "",
        "| | ours (Python) | HF tokenizers (Rust) | tiktoken (Rust) |",
        "|---|---:|---:|---:|",
        f"| encode whole corpus | {ours_s:.2f} s | {hf_s:.2f} s | {tt_s:.3f} s |",
        f"| encode throughput | {mb / ours_s:.2f} MB/s | {mb / hf_s:.2f} MB/s "
        f"| {mb / tt_s:.2f} MB/s |",
        f"| tokens/s | {len(ids) / ours_s:,.0f} | {len(ids) / hf_s:,.0f} "
        f"| {len(ids) / tt_s:,.0f} |",
        "",
        f"Ids over the whole corpus: {'identical' if same else 'DIFFERENT'} in all three "
        f"({len(ids):,} tokens).",
        "",
    ]


if __name__ == "__main__":
    raise SystemExit(main())
