"""llama.cpp runs our GGUF export: its tokenization, logits and greedy tokens against ours,
and its generation speed beside ours, for each architecture the exporter writes.

Four short runs on Tiny Shakespeare, one per kind of file: the default preset (qwen3, a
character vocabulary), the default preset with a byte-level BPE (qwen3, GPT-4's pattern),
a Llama-style model with grouped-query heads, biases and an untied head (llama, whose
rotary rows the exporter reorders), and the tiny-bpe preset with a GPT-2-pattern BPE
(gpt2). Each is exported as f32, f16 and q8_0 and loaded with llama-cpp-python
(`pip install llama-cpp-python`, built from source; its key/value cache set to f32):

- tokenization: llama.cpp's ids for varied text (English, Turkish, digits, whitespace
  runs, CRLF, emoji, a literal special token) equal ours, with specials parsed and not;
  per-token pieces join to our decoded text;
- logits: the largest absolute difference over every position of a prompt, and the
  largest logit, for scale;
- greedy tokens: llama.cpp's argmax continuation equals ours; where they part, our margin
  between the first two tokens at that step is printed (a near tie is no error);
- speed: new tokens per second for greedy generation after a prompt, batch 1, the same
  number of threads, the contenders taking turns (median of --repeats).

    python benchmarks/bench_gguf.py [--steps 200] [--threads 1] [--work DIR]

`tests/test_gguf_llama_cpp.py` (slow marker) imports the comparisons from here.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from common import machine_line, write_section
from tinygpt.core.errors import TinyGPTError
from tinygpt.data.tokenizer import EOT

SHAKESPEARE = Path("/work/shared/data/tinyshakespeare.txt")
TYPES = ("f32", "f16", "q8_0")

# Text for tokenizer parity: what a prompt may hold.
VARIED = [
    "",
    "First Citizen:\nBefore we proceed any further, hear me speak.",
    "  leading spaces, trailing spaces   ",
    "tabs\tand\t\ttabs; CRLF\r\nline\r\n\r\nend",
    "numbers 1 12 123 1234 12345 3.14159 -7 1e10",
    "don't can't I'm you're we've they'll he'd IT'S",
    "İstanbul'da ışık; Şişli şeker ağaç Iğdır ÇÖÜçöü",
    "emoji 😀 👍🏽 flag 🇹🇷 ❤️ and CJK 東京",
    "punctuation!!! ... ?? -- ;; ::: (brackets) [x] {y} <z>",
    "\n\n\nthree newlines, then   many      spaces\n \n",
    f"one{EOT}two",
]


# ----------------------------------------------------------------------------- llama.cpp


def load_llama(path: Path, n_ctx: int, threads: int, logits_all: bool = True) -> Any:
    """A llama-cpp-python model with an f32 key/value cache and plain attention, so that
    an f32 file computes in f32 throughout."""
    import llama_cpp

    return llama_cpp.Llama(
        model_path=str(path),
        n_ctx=n_ctx,
        n_batch=n_ctx,
        n_ubatch=n_ctx,
        n_threads=threads,
        n_threads_batch=threads,
        logits_all=logits_all,
        type_k=llama_cpp.GGML_TYPE_F32,
        type_v=llama_cpp.GGML_TYPE_F32,
        flash_attn=False,
        seed=0,
        verbose=False,
    )


def llama_piece(llm: Any, token: int) -> bytes:
    """One token's bytes as llama.cpp prints it while generating (llama_token_to_piece)."""
    import ctypes

    import llama_cpp

    buf = ctypes.create_string_buffer(64)
    n = llama_cpp.llama_token_to_piece(llm._model.vocab, token, buf, len(buf), 0, True)
    return buf.raw[:n]


@dataclass
class Report:
    """What one file showed; `ok` is False when anything differed beyond tolerance."""

    lines: list[str] = field(default_factory=list)
    ok: bool = True

    def add(self, line: str, ok: bool = True) -> None:
        self.lines.append(line + ("" if ok else "  <-- MISMATCH"))
        self.ok = self.ok and ok


def check_tokenization(tokenizer: Any, llm: Any, texts: list[str], report: Report) -> None:
    """Same ids for every text, specials parsed or not; pieces join to our decoding."""
    checked = differ = joined_ok = joined_all = 0
    for text in texts:
        for special in (False, True):
            try:
                ours = tokenizer.encode(text, allowed_special=special)
            except TinyGPTError:  # e.g. the '<' of a literal special in a character vocabulary:
                continue  # not a text this tokenizer encodes
            theirs = llm.tokenize(text.encode("utf-8"), add_bos=False, special=special)
            checked += 1
            if ours != theirs:
                differ += 1
                report.add(f"  tokens differ (special={special}) for {text!r}", ok=False)
                report.add(f"    ours {ours[:24]}", ok=False)
                report.add(f"    llama.cpp {theirs[:24]}", ok=False)
            if special:
                joined_all += 1
                pieces = b"".join(llama_piece(llm, t) for t in ours)
                if pieces.decode("utf-8", errors="replace") == tokenizer.decode(ours):
                    joined_ok += 1
                else:
                    report.add(f"  pieces join to {pieces!r}, we decode {text!r}", ok=False)
    report.add(
        f"tokenization: {checked - differ}/{checked} encodings identical ({len(texts)} texts,"
        f" specials parsed and not); llama.cpp's pieces rebuild {joined_ok}/{joined_all} texts",
        not differ and joined_ok == joined_all,
    )


@contextlib.contextmanager
def ggml_cpu_gelu() -> Iterator[None]:
    """Our model computes tanh GELU as ggml's CPU backend does (ggml-cpu/vec.h,
    GGML_GELU_FP16): the input rounded to fp16 indexes a table of fp16 results, and inputs
    beyond +-10 give x or 0. Used to show that most of a gpt2 file's logit difference is
    that table (a step function of its input, so rounding differences upstream still
    change a value now and then)."""
    plain = F.gelu

    def table(x: torch.Tensor, approximate: str = "none") -> torch.Tensor:
        y = plain(x.half().float(), approximate=approximate).half().float()
        return torch.where(x >= 10, x, torch.where(x <= -10, torch.zeros_like(x), y))

    F.gelu = table
    try:
        yield
    finally:
        F.gelu = plain


def our_logits(model: Any, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([ids]))[0][0].float().numpy()  # (T, V)


def llama_logits(llm: Any, ids: list[int]) -> np.ndarray:
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)], dtype=np.float32)  # (T, V)


def check_logits(
    model: Any, llm: Any, ids: list[int], tol: float | None, report: Report, label: str = ""
) -> float:
    """Largest |ours - llama.cpp| over every position; checked against `tol` when given."""
    ours, theirs = our_logits(model, ids), llama_logits(llm, ids)
    diff = float(np.abs(ours - theirs).max())
    scale = float(np.abs(ours).max())
    ok = tol is None or diff <= tol
    bound = f" (tolerance {tol:g})" if tol is not None else ""
    report.add(
        f"logits{label}: max |diff| {diff:.2e} over {len(ids)} positions x {ours.shape[1]}"
        f" ids, largest |logit| {scale:.1f}{bound}",
        ok,
    )
    return diff


def check_greedy(model: Any, llm: Any, prompt: list[int], n: int, report: Report) -> None:
    """llama.cpp's argmax continuation against ours; where they part, our top-1 margin."""
    from tinygpt.infer.generate import generate_ids

    ours = generate_ids(model, prompt, max_new_tokens=n, temperature=0.0)[0]
    llm.reset()
    llm.eval(prompt)
    theirs: list[int] = []
    for _ in range(n):
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        theirs.append(token)
        llm.eval([token])
    same = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), n)
    if same == n:
        report.add(f"greedy: {n}/{n} tokens identical")
        return
    logits = our_logits(model, prompt + ours[:same])[-1]
    top2 = np.sort(logits)[-2:]
    margin = float(top2[1] - top2[0])
    report.add(
        f"greedy: identical for {same}/{n} tokens; at the next step our top-1 margin is"
        f" {margin:.2e}",
        ok=margin < 1e-2,  # a near tie may fall either way; a clear margin may not
    )


# --------------------------------------------------------------------------------- speed


def speeds(model: Any, llm: Any, prompt: list[int], n: int, repeats: int) -> tuple[float, float]:
    """(ours, llama.cpp) new tokens per second of greedy generation, medians, taking turns."""
    from tinygpt.infer.generate import generate_ids

    def ours() -> int:
        return len(generate_ids(model, prompt, max_new_tokens=n, temperature=0.0)[0])

    def theirs() -> int:
        llm.reset()
        count = 0
        for _ in llm.generate(prompt, top_k=1, temp=0.0, reset=True):
            count += 1
            if count == n:
                break
        return count

    times: dict[str, list[float]] = {"ours": [], "llama.cpp": []}
    for _ in range(repeats):
        for name, fn in (("ours", ours), ("llama.cpp", theirs)):
            start = time.perf_counter()
            got = fn()
            times[name].append(time.perf_counter() - start)
            assert got == n, (name, got)
    return n / statistics.median(times["ours"]), n / statistics.median(times["llama.cpp"])


# ---------------------------------------------------------------------------------- runs


@dataclass
class Kind:
    name: str
    arch: str
    what: str
    train: list[str]
    tokenizer: str = "char"  # char | bpe | bpe-gpt2


KINDS = [
    Kind(
        "qwen3-char",
        "qwen3",
        "default preset (QK-norm), character vocabulary",
        ["--preset", "shakespeare-char"],
    ),
    Kind(
        "qwen3-bpe",
        "qwen3",
        "default preset, BPE 512 (gpt4 pattern)",
        ["--preset", "shakespeare-char", "--model.vocab_size", "512"],
        "bpe",
    ),
    Kind(
        "llama-bpe",
        "llama",
        "modern-small shrunk: 2 layers, 128 wide, 4 heads sharing 2 kv heads, biases, untied",
        ["--preset", "modern-small", "--model.n_layer", "2", "--model.n_embd", "128"]
        + ["--model.n_head", "4", "--model.n_kv_head", "2", "--model.bias", "true"]
        + ["--model.block_size", "128", "--model.vocab_size", "512", "--train.lr", "3e-3"],
        "bpe",
    ),
    Kind(
        "gpt2-bpe",
        "gpt2",
        "tiny-bpe preset, BPE 512 (gpt2 pattern)",
        ["--preset", "tiny-bpe", "--model.vocab_size", "512", "--train.lr", "3e-3"],
        "bpe-gpt2",
    ),
]


def prepare_data(work: Path, kind: Kind, source: Path) -> Path:
    from tinygpt.cli import main as cli

    out = work / f"data-{kind.tokenizer}"
    if (out / "train.bin").is_file():
        return out
    argv = ["prepare", "--input", str(source), "--out", str(out)]
    if kind.tokenizer == "char":
        argv += ["--tokenizer", "char"]
    elif kind.tokenizer == "bpe":
        argv += ["--tokenizer", "bpe", "--vocab-size", "512"]
    else:
        tok = work / "bpe-gpt2.json"
        if not tok.is_file():
            train = ["tokenizer", "train", "--input", str(source), "--tokenizer", "bpe"]
            train += ["--vocab-size", "512", "--pattern", "gpt2", "--out", str(tok)]
            assert cli(train) == 0
        argv += ["--tokenizer", str(tok)]
    assert cli(argv) == 0
    return out


def train_run(work: Path, kind: Kind, data: Path, steps: int, threads: int) -> Path:
    from tinygpt.cli import main as cli
    from tinygpt.core.run import RunDir

    run = work / kind.name
    if RunDir(run).checkpoints():
        return run
    argv = ["train", *kind.train, "--data", str(data), "--out", str(run)]
    argv += ["--max-steps", str(steps), "--max-time", "0", "--threads", str(threads)]
    argv += ["--no-progress", "--train.eval_interval", str(steps), "--train.sample_tokens", "0"]
    assert cli(argv) == 0
    return run


def check_file(kind: Kind, run: Path, work: Path, threads: int, args: Any) -> tuple[Report, dict]:
    from tinygpt.cli import main as cli
    from tinygpt.infer.loader import load_run

    loaded = load_run(run)
    model, tokenizer = loaded.model, loaded.tokenizer
    block = model.config.block_size
    text = SHAKESPEARE.read_text(encoding="utf-8")[:4000] if SHAKESPEARE.is_file() else VARIED[1]
    if tokenizer.kind == "char":  # a character vocabulary encodes only its own characters
        known = set(tokenizer.chars)
        texts = ["".join(c for c in t if c in known) for t in VARIED[:-1]] + [f"First{EOT}Second"]
    else:
        texts = VARIED
    prompt = tokenizer.encode(text)[:block]
    report = Report()
    figures: dict[str, Any] = {}
    for type_ in TYPES:
        path = work / f"{kind.name}.{type_}.gguf"
        argv = ["export", str(run), "--format", "gguf", "--out", str(path), "--type", type_]
        assert cli([*argv, "--force"]) == 0
        llm = load_llama(path, block, threads)
        report.add(f"{type_} ({path.stat().st_size / 1e6:.2f} MB):")
        if type_ == "f32":
            check_tokenization(tokenizer, llm, texts, report)
            if kind.arch == "gpt2":  # ggml's GELU table: the raw figure, then without it
                figures["logit_diff"] = check_logits(model, llm, prompt, None, report)
                with ggml_cpu_gelu():
                    label = " (ours with ggml's fp16 GELU table)"
                    check_logits(model, llm, prompt, args.tol, report, label)
            else:
                figures["logit_diff"] = check_logits(model, llm, prompt, args.tol, report)
            check_greedy(model, llm, prompt[:8], block - 8, report)
            fast = load_llama(path, block, threads, logits_all=False)
            figures["speed"] = speeds(model, fast, prompt[:8], args.new, args.repeats)
            report.add(
                f"speed: {figures['speed'][0]:.0f} tokens/s ours, {figures['speed'][1]:.0f}"
                f" tokens/s llama.cpp ({args.new} new tokens after 8, {threads} thread(s))"
            )
            del fast
        else:
            figures[f"logit_diff_{type_}"] = check_logits(model, llm, prompt, None, report)
        del llm
    figures["val_loss"] = _val_loss(run)
    return report, figures


def _val_loss(run: Path) -> float:
    from tinygpt.core.run import RunDir

    summary = RunDir(run).read_summary() or {}
    return float(summary.get("val_loss", float("nan")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="training steps of each run")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--new", type=int, default=100, help="tokens generated for speed")
    parser.add_argument("--tol", type=float, default=1e-3, help="f32 logit tolerance")
    parser.add_argument("--work", type=Path, default=Path("runs/bench_gguf"))
    parser.add_argument("--source", type=Path, default=SHAKESPEARE)
    parser.add_argument("--only", nargs="*", default=None, help="kinds to run")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import llama_cpp

    args.work.mkdir(parents=True, exist_ok=True)
    head = machine_line()
    print(head)
    print(f"llama-cpp-python {llama_cpp.__version__}")
    rows = []
    sections = []
    all_ok = True
    for kind in KINDS:
        if args.only and kind.name not in args.only:
            continue
        data = prepare_data(args.work, kind, args.source)
        run = train_run(args.work, kind, data, args.steps, args.threads)
        report, figures = check_file(kind, run, args.work, args.threads, args)
        all_ok = all_ok and report.ok
        title = (
            f"{kind.name} -> {kind.arch}: {kind.what}; {args.steps} steps,"
            f" val loss {figures['val_loss']:.3f}"
        )
        print(title)
        for line in report.lines:
            print("  " + line)
        sections.append("\n".join([f"{title}", *["  " + x for x in report.lines]]))
        ours, theirs = figures["speed"]
        rows.append(
            f"| {kind.name} | {kind.arch} | {figures['logit_diff']:.1e}"
            f" | {figures['logit_diff_f16']:.1e} | {figures['logit_diff_q8_0']:.1e}"
            f" | {'yes' if report.ok else 'NO'} | {ours:.0f} | {theirs:.0f} | {theirs / ours:.2f}x |"
        )
    verdict = "every check passed" if all_ok else "SOME CHECKS FAILED"
    print(verdict)
    md = [
        "## GGUF export, run by llama.cpp",
        "",
        f"`python benchmarks/bench_gguf.py --steps {args.steps} --threads {args.threads}` ·"
        f" {head} · llama-cpp-python {llama_cpp.__version__} (built from source, portable:"
        " GGML_NATIVE=OFF)",
        "",
        "Each run is exported (f32, f16, q8_0) and loaded by llama.cpp with an f32 key/value"
        " cache. Logit columns: the largest |ours - llama.cpp| over every position of a"
        " prompt and every id. Checks: identical token ids on varied text (specials parsed"
        " and not), pieces that join to our decoding, f32 logits within"
        f" {args.tol:g}, identical greedy tokens (or a near tie where they part). Speed:"
        f" greedy generation of {args.new} tokens after an 8-token prompt, batch 1,"
        f" {args.threads} thread(s), median of {args.repeats} alternating runs.",
        "",
        "| run | architecture | f32 logit diff | f16 | q8_0 | checks | ours tok/s"
        " | llama.cpp tok/s | llama.cpp / ours |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        "What the script printed:",
        "",
        "```text",
        *sections,
        verdict,
        "```",
    ]
    write_section("gguf", "\n".join(md))
    if not all_ok:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
