"""Dataset preparation: text in, token ids on disk out, and reading them back.

Owns: `prepare` (a source becomes a dataset folder: `train.bin`, `val.bin`, `tokenizer.json`,
`meta.json`), the train/validation split, parallel encoding, reuse of an earlier result, and
`open_dataset` (the folder back as memory-mapped arrays). Knows nothing about where text comes
from (`tinygpt.data.corpora`), how it is cleaned (`tinygpt.data.cleaning`), how tokenizers work inside
(`tinygpt.data.tokenizer`) or how batches are drawn for training (`tinygpt.train.loop`).

The `.bin` files are raw little-endian arrays of token ids, uint16 when the vocabulary has at
most 65,535 entries and uint32 otherwise (nanoGPT's layout, so `np.memmap(path, dtype)` reads
them). Every document is followed by the end-of-text id.

Split. A source with one document (one text file) gives its last `val_fraction` of characters
to validation, as nanoGPT does with Tiny Shakespeare, so that losses compare; each part is
followed by an end-of-text id. A source with several documents is split by document:
document i goes to validation when a hash of (seed, i) falls below `val_fraction`, with at
least one document on each side.

Memory does not grow with the corpus. A first pass reads and cleans the documents, writes the
cleaned text to a spool file in the temporary output folder, and keeps only per-document
offsets, the set of characters (char tokenizer) or a bounded sample of text (BPE training,
`tokenizer_sample_mb`). A second pass reads the spool in pieces and encodes them on a pool
of worker processes with a bounded number of pieces in flight, writing ids as they come back
in order. Everything is written to a hidden folder beside the destination and renamed into
place at the end, so an interrupted run never leaves a folder that looks complete.
"""

from __future__ import annotations

import codecs
import collections
import hashlib
import json
import multiprocessing
import os
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tinygpt.core import __version__
from tinygpt.core.errors import TinyGPTError
from tinygpt.core.files import remove_leftovers, require_folder, sha256_file
from tinygpt.data.cleaning import LANGUAGE_SAMPLE_CHARS, Cleaner, Cleaning, document_digest
from tinygpt.data.corpora import Source, cache_dir, cut_point, open_source

FORMAT_VERSION = 1
META = "meta.json"
TOKENIZER = "tokenizer.json"
SPLITS = ("train", "val")

# Text handed to one encoding task; small enough to spread over workers and keep memory
# flat, large enough that process hand-over costs little next to the encoding itself.
TASK_CHARS = 1 << 18


def dtype_for(vocab_size: int) -> np.dtype:
    """The narrowest unsigned type that holds every id.

    >>> dtype_for(50257), dtype_for(100277)
    (dtype('uint16'), dtype('uint32'))
    """
    return np.dtype(np.uint16 if vocab_size <= 65535 else np.uint32)


# --- reading a dataset -------------------------------------------------------------------


@dataclass
class Dataset:
    """A prepared dataset folder: token ids of both splits, memory-mapped, and its meta."""

    path: Path
    meta: dict[str, Any]
    train: np.memmap  # (N_train,) token ids
    val: np.memmap  # (N_val,) token ids

    @property
    def tokenizer_path(self) -> Path:
        return self.path / TOKENIZER

    @property
    def vocab_size(self) -> int:
        return int(self.meta["vocab_size"])

    def load_tokenizer(self) -> Any:
        from tinygpt.data.tokenizer import load_tokenizer

        return load_tokenizer(self.tokenizer_path)


def largest_id(tokens: np.ndarray, block: int = 1 << 24) -> int:
    """The largest token id in a split (-1 when empty), read in blocks so that a split larger
    than memory can be checked.

    >>> largest_id(np.array([3, 9, 2], dtype=np.uint16))
    9
    """
    top = -1
    for start in range(0, len(tokens), block):
        top = max(top, int(tokens[start : start + block].max()))
    return top


def check_fits(dataset: Dataset, vocab_size: int, what: str = "the model") -> None:
    """Refuse a dataset whose tokens the model cannot embed: a tokenizer with more ids than
    the model's vocabulary, or token ids at or beyond it (a damaged or foreign .bin file)."""
    tok_vocab = dataset.vocab_size
    if tok_vocab > vocab_size:
        raise TinyGPTError(
            f"{dataset.path} was made with a tokenizer of {tok_vocab:,} ids but {what} has a"
            f" vocabulary of {vocab_size:,}; prepare the text with the run's tokenizer"
            " (--tokenizer RUN/tokenizer.json)"
        )
    for split in SPLITS:
        top = largest_id(getattr(dataset, split))
        if top >= vocab_size:
            raise TinyGPTError(
                f"{dataset.path / (split + '.bin')} holds token id {top:,}, but {what}'s"
                f" vocabulary has {vocab_size:,} ids (0..{vocab_size - 1:,}); the file is"
                " damaged or from another dataset: prepare it again"
            )


def read_meta(path: Path) -> dict[str, Any] | None:
    """A dataset folder's meta.json, or None when it is missing or not a dataset's."""
    try:
        meta = json.loads((path / META).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and "splits" in meta and "dtype" in meta else None


def open_dataset(path: str | os.PathLike[str]) -> Dataset:
    """Open a folder written by `prepare`; clear errors when it is not one."""
    hint = "create one with: tinygpt prepare --corpus NAME --out DIR"
    path = require_folder(path, "dataset folder", hint)
    if not (path / META).is_file():
        raise TinyGPTError(f"{path} is not a tinygpt dataset (no {META}); {hint}")
    meta = read_meta(path)
    if meta is None:
        raise TinyGPTError(f"{path / META} is damaged or not a dataset description; {hint}")
    if meta.get("kind") == "examples":  # tinygpt.data.examples: conversations, not running text
        raise TinyGPTError(
            f"{path} holds chat examples, not text; fine-tune on it with"
            f" `tinygpt finetune BASE --data {path} --out RUN`"
        )
    try:
        dtype = np.dtype(meta["dtype"])
        counts = {split: int(meta["splits"][split]["tokens"]) for split in SPLITS}
    except (TypeError, KeyError, ValueError):
        raise TinyGPTError(f"{path / META} is damaged (dtype or token counts); {hint}") from None
    if dtype not in (np.dtype(np.uint16), np.dtype(np.uint32)) or min(counts.values()) < 0:
        raise TinyGPTError(f"{path / META} is damaged (dtype {dtype}); {hint}")
    arrays = {}
    for split in SPLITS:
        file = path / f"{split}.bin"
        expected = int(meta["splits"][split]["tokens"])
        if not file.is_file():
            raise TinyGPTError(f"{path} lacks {file.name}; prepare the dataset again")
        if file.stat().st_size != expected * dtype.itemsize:
            raise TinyGPTError(
                f"{file} holds {file.stat().st_size} bytes but meta.json says {expected} "
                f"{dtype} tokens; the folder is damaged, prepare it again"
            )
        # an empty split cannot be memory-mapped; training refuses it with its own message
        arrays[split] = (
            np.memmap(file, dtype=dtype, mode="r", shape=(expected,))
            if expected
            else np.zeros(0, dtype=dtype)
        )
    if not (path / TOKENIZER).is_file():
        raise TinyGPTError(f"{path} lacks {TOKENIZER}; prepare the dataset again")
    return Dataset(path=path, meta=meta, train=arrays["train"], val=arrays["val"])


# --- planning: what to build and whether it is already there ------------------------------


@dataclass
class PrepareResult:
    path: Path
    reused: bool
    meta: dict[str, Any]


@dataclass
class _Plan:
    source: Source
    settings: dict[str, Any]
    key: str
    tokenizer: str
    tokenizer_file: Path | None
    normalizer: Any = None  # tinygpt.data.tokenizer.Normalizer, or None
    min_frequency: int = 1


def _plan(
    source: str,
    *,
    tokenizer: str,
    vocab_size: int | None,
    backend: str,
    val_fraction: float,
    seed: int,
    text_field: str,
    errors: str,
    cleaning: Cleaning,
    tokenizer_sample_mb: float,
    lowercase: str | None = None,
    normalize_whitespace: bool = False,
    min_frequency: int = 1,
) -> _Plan:
    if not 0.0 < val_fraction < 1.0:
        raise TinyGPTError(
            f"--val-fraction must be between 0 and 1 (exclusive), got {val_fraction}"
        )
    if tokenizer_sample_mb <= 0:
        raise TinyGPTError(f"the tokenizer sample must be positive, got {tokenizer_sample_mb} MB")
    from tinygpt.data.tokenizer import Normalizer

    normalizer = Normalizer.build(lowercase=lowercase, whitespace=normalize_whitespace)
    if min_frequency != 1 and tokenizer != "bpe":
        raise TinyGPTError(
            f"--min-frequency applies to --tokenizer bpe, not {tokenizer}; drop it or train a bpe"
        )
    tokenizer_file: Path | None = None
    tokenizer_id: dict[str, Any]
    if tokenizer in ("char", "bpe"):
        tokenizer_id = {"kind": tokenizer}
        if tokenizer == "bpe":
            tokenizer_id.update(vocab_size=vocab_size, backend=backend)
            if min_frequency != 1:
                from tinygpt.data.tokenizer.bpe import check_min_frequency

                check_min_frequency(min_frequency)
                tokenizer_id["min_frequency"] = min_frequency
    elif tokenizer == "gpt2":
        from tinygpt.data.tokenizer.gpt2 import gpt2_tokenizer_file

        # Fetched (or found in the cache) now, before any text is read: offline, this is
        # where the one-line error about where to put the file comes from.
        tokenizer_file = gpt2_tokenizer_file()
        tokenizer_id = {"name": "gpt2", "file_sha256": sha256_file(tokenizer_file)}
    else:
        if normalizer is not None:
            raise TinyGPTError(
                "--lowercase and --normalize-whitespace apply to a tokenizer trained here "
                f"(char, bpe) or to gpt2; {tokenizer} carries its own normalizer, so drop them"
            )
        candidate = Path(tokenizer).expanduser()
        if candidate.is_dir():
            candidate = candidate / TOKENIZER
        if not candidate.is_file():
            raise TinyGPTError(
                f"--tokenizer must be char, bpe, gpt2 or a tokenizer.json file; {tokenizer} "
                "does not exist"
            )
        tokenizer_file = candidate
        tokenizer_id = {"file_sha256": sha256_file(candidate)}
    if normalizer is not None:
        tokenizer_id["normalizer"] = normalizer.to_json()
    src = open_source(source, text_field=text_field, errors=errors)
    settings = {
        "source": source,
        "inputs": src.fingerprint(),
        "tokenizer": tokenizer_id,
        "val_fraction": val_fraction,
        "seed": seed,
        "text_field": text_field,
        "errors": errors,
        "cleaning": cleaning.to_dict(),
        "tokenizer_sample_mb": tokenizer_sample_mb,
        "format": FORMAT_VERSION,
        "version": __version__,
    }
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
    return _Plan(src, settings, key, tokenizer, tokenizer_file, normalizer, min_frequency)


def _is_complete(path: Path, key: str) -> dict[str, Any] | None:
    """The meta of a finished dataset at `path` made with `key`, else None."""
    meta = read_meta(path)
    if meta is None or meta.get("key") != key:
        return None
    try:
        open_dataset(path)
    except TinyGPTError:
        return None
    return meta


def _check_destination(out: Path, source: str, force: bool) -> None:
    """Refuse to overwrite what is not ours, or another dataset unless forced."""
    if not out.exists():
        return
    if not out.is_dir():
        raise TinyGPTError(f"output path {out} is a file; choose a folder for --out")
    meta = read_meta(out)
    if meta is None:
        if any(out.iterdir()):
            raise TinyGPTError(
                f"output folder {out} holds files that are not a tinygpt dataset; "
                "choose an empty or new folder for --out"
            )
        return
    if meta.get("source") != source and not force:
        raise TinyGPTError(
            f"output folder {out} already holds a different dataset (from {meta.get('source')!r}); "
            "pass --force to replace it, or choose another --out"
        )


# --- the two passes ----------------------------------------------------------------------


@dataclass
class _Spooled:
    docs: list[tuple[int, int, int]]  # (start byte, end byte, characters) per kept document
    chars: set[str] | None
    sample: list[str]
    stats: dict[str, Any]
    input_hashes: list[dict[str, Any]]


def _spool(
    src: Source,
    cleaning: Cleaning,
    spool_path: Path,
    *,
    want_chars: bool,
    sample_chars: int,
    progress: bool,
) -> _Spooled:
    """Pass 1: read, clean and filter every document; append kept text to the spool."""
    from tqdm import tqdm

    cleaner = Cleaner(cleaning)
    docs: list[tuple[int, int, int]] = []
    chars: set[str] | None = set() if want_chars else None
    sample: list[str] = []
    budget = sample_chars
    bar = tqdm(desc="reading", unit=" docs", file=sys.stderr, disable=not progress or None)
    with open(spool_path, "wb") as spool:
        for doc in src.documents():
            start = spool.tell()
            digest = document_digest()
            n_chars = 0
            head: list[str] = []  # the first characters, for document-level language id
            head_len = 0
            doc_chars: set[str] = set()
            doc_sample: list[str] = []
            doc_budget = budget
            for text in cleaner.clean_pieces(doc.pieces()):
                data = text.encode("utf-8")
                spool.write(data)
                digest.update(data)
                n_chars += len(text)
                if head_len < LANGUAGE_SAMPLE_CHARS:
                    head.append(text[: LANGUAGE_SAMPLE_CHARS - head_len])
                    head_len += len(head[-1])
                if chars is not None:
                    doc_chars.update(text)
                if doc_budget > 0:
                    doc_sample.append(text[:doc_budget])
                    doc_budget -= len(doc_sample[-1])
            bar.update(1)
            if cleaner.keep(n_chars, digest.digest(), "".join(head)):
                docs.append((start, spool.tell(), n_chars))
                if chars is not None:
                    chars |= doc_chars
                if doc_sample:
                    sample.append("".join(doc_sample))
                    budget = doc_budget
            else:
                spool.seek(start)
                spool.truncate()
    bar.close()
    hashes = [{"path": str(p), "sha256": sha256_file(p)} for p in src.files]
    return _Spooled(docs, chars, sample, cleaner.stats.to_dict(), hashes)


def _read_spool(spool_path: Path, start: int, end: int, piece_chars: int) -> Iterator[str]:
    """The text of one spooled document, in pieces cut at line starts."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    carry = ""
    with open(spool_path, "rb") as f:
        f.seek(start)
        remaining = end - start
        while remaining > 0:
            block = f.read(min(piece_chars, remaining))
            remaining -= len(block)
            carry += decoder.decode(block, final=remaining == 0)
            while len(carry) >= piece_chars:
                cut = cut_point(carry[: piece_chars * 2]) or len(carry)
                yield carry[:cut]
                carry = carry[cut:]
    if carry:
        yield carry


def _split_assignment(n_docs: int, val_fraction: float, seed: int) -> list[bool]:
    """Whether each of `n_docs` documents goes to validation (deterministic in seed)."""
    scores = []
    for i in range(n_docs):
        h = hashlib.sha256(f"{seed}:{i}".encode()).digest()
        scores.append(int.from_bytes(h[:8], "big") / 2**64)
    is_val = [s < val_fraction for s in scores]
    if n_docs >= 2 and not any(is_val):
        is_val[min(range(n_docs), key=scores.__getitem__)] = True
    if n_docs >= 2 and all(is_val):
        is_val[max(range(n_docs), key=scores.__getitem__)] = False
    return is_val


def _items(
    spool_path: Path, spooled: _Spooled, val_fraction: float, seed: int
) -> Iterator[tuple[int, str, bool]]:
    """(split index, text, end-of-text after it) for every piece of kept text, in order."""
    docs = spooled.docs
    if len(docs) == 1:
        start, end, n_chars = docs[0]
        cut = int(n_chars * (1.0 - val_fraction))
        if cut <= 0 or cut >= n_chars:
            raise TinyGPTError(
                f"the text has {n_chars} characters, too few to split with --val-fraction "
                f"{val_fraction}; give more text"
            )
        pos = 0
        for text in _read_spool(spool_path, start, end, TASK_CHARS):
            if pos < cut < pos + len(text):
                yield 0, text[: cut - pos], True
                yield 1, text[cut - pos :], False
            else:
                yield (0 if pos < cut else 1), text, pos + len(text) == cut
            pos += len(text)
        yield 1, "", True
        return
    for (start, end, _), val in zip(
        docs, _split_assignment(len(docs), val_fraction, seed), strict=True
    ):
        # One piece of look-ahead, so that the last piece of the document carries the eot.
        previous: str | None = None
        for text in _read_spool(spool_path, start, end, TASK_CHARS):
            if previous is not None:
                yield int(val), previous, False
            previous = text
        yield int(val), previous or "", True


# Worker state: each encoding process loads the tokenizer once.
_WORKER: dict[str, Any] = {}


def _init_worker(tokenizer_path: str, dtype: str, pool: bool = False) -> None:
    import signal

    from tinygpt.data.tokenizer import load_tokenizer

    if pool:
        # Ctrl-C reaches every process of the terminal's group: the main process stops the
        # pool and removes its temporary folder; workers printing tracebacks of their own
        # would only bury its one line. (Not in the main process itself, which runs the
        # encoding when there is one worker: it must stay interruptible.)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        # The pool ends its workers with SIGTERM (Pool.terminate, on leaving `with`). The
        # handler inherited from the command line would raise inside a worker, possibly
        # while it holds the task queue's lock: a traceback, or the other worker waiting
        # on that lock for ever and the command with it. A worker just ends.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _WORKER["tokenizer"] = load_tokenizer(tokenizer_path)
    _WORKER["dtype"] = np.dtype(dtype)


def _encode_task(items: list[tuple[str, bool]]) -> list[np.ndarray]:
    tok = _WORKER["tokenizer"]
    dtype = _WORKER["dtype"]
    out = []
    for text, eot in items:
        ids = tok.encode(text) if text else []
        if eot:
            ids.append(tok.eot_id)
        out.append(np.asarray(ids, dtype=dtype))
    return out


def _batched(
    items: Iterator[tuple[int, str, bool]],
) -> Iterator[list[tuple[int, str, bool]]]:
    batch: list[tuple[int, str, bool]] = []
    size = 0
    for item in items:
        batch.append(item)
        size += len(item[1])
        if size >= TASK_CHARS:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _encode_all(
    items: Iterator[tuple[int, str, bool]],
    files: Sequence[Any],
    tokenizer_path: Path,
    dtype: np.dtype,
    workers: int,
    total_bytes: int,
    progress: bool,
) -> tuple[list[int], list[int]]:
    """Pass 2: encode every item and append its ids to its split's file, in order."""
    from tqdm import tqdm

    tokens = [0, 0]
    nbytes = [0, 0]
    bar = tqdm(
        total=total_bytes, desc="encoding", unit="B", unit_scale=True, file=sys.stderr,
        disable=not progress or None,
    )  # fmt: skip

    def write(batch: list[tuple[int, str, bool]], arrays: list[np.ndarray]) -> None:
        for (split, text, _), ids in zip(batch, arrays, strict=True):
            files[split].write(ids.tobytes())
            tokens[split] += len(ids)
            size = len(text.encode("utf-8"))
            nbytes[split] += size
            bar.update(size)

    if workers <= 1:
        _init_worker(str(tokenizer_path), dtype.str)
        try:
            for batch in _batched(items):
                write(batch, _encode_task([(t, e) for _, t, e in batch]))
        finally:
            _WORKER.clear()
    else:
        # apply_async with a bounded window rather than Pool.imap: imap's feeder thread would
        # read the whole input ahead of the workers and hold it in memory.
        window = 2 * workers + 2
        pending: collections.deque = collections.deque()
        with multiprocessing.get_context().Pool(
            workers, initializer=_init_worker, initargs=(str(tokenizer_path), dtype.str, True)
        ) as pool:
            for batch in _batched(items):
                job = pool.apply_async(_encode_task, ([(t, e) for _, t, e in batch],))
                pending.append((batch, job))
                if len(pending) >= window:
                    done, job = pending.popleft()
                    write(done, job.get())
            while pending:
                done, job = pending.popleft()
                write(done, job.get())
    bar.close()
    return tokens, nbytes


def _make_tokenizer(plan: _Plan, spooled: _Spooled, vocab_size: int | None, backend: str) -> Any:
    from tinygpt.data.tokenizer import load_tokenizer, train_tokenizer

    if plan.tokenizer_file is not None:
        tok = load_tokenizer(plan.tokenizer_file)
        if plan.normalizer is not None:  # gpt2 with --lowercase / --normalize-whitespace
            tok.normalizer = plan.normalizer
        return tok
    if plan.tokenizer == "char":
        # The characters are what the normalizer leaves of the text: it works on each
        # character alone, except that it joins whitespace runs, which it also does here.
        chars = "".join(sorted(spooled.chars or ()))
        return train_tokenizer("char", [chars], normalizer=plan.normalizer)
    return train_tokenizer(
        "bpe",
        spooled.sample,
        vocab_size=vocab_size,
        backend=backend,
        min_frequency=plan.min_frequency,
        normalizer=plan.normalizer,
    )


def _make_temp_dir(out: Path) -> Path:
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        remove_leftovers(out.parent, out.name)  # of earlier preparations that were killed
        return Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-{os.getpid()}-"))
    except OSError as exc:
        raise TinyGPTError(
            f"cannot write to output folder {out} ({exc.strerror or exc}); choose a writable --out"
        ) from None


def _install(tmp: Path, out: Path) -> None:
    """Move the finished folder into place; a previous dataset there is replaced."""
    if out.exists():
        old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-{os.getpid()}-"))
        os.replace(out, old / "dataset")
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


# --- the public entry points -------------------------------------------------------------


def prepare_dataset(
    source: str,
    out: str | os.PathLike[str] | None,
    *,
    tokenizer: str = "char",
    vocab_size: int | None = None,
    backend: str = "native",
    val_fraction: float = 0.1,
    seed: int = 1337,
    text_field: str = "text",
    errors: str = "strict",
    cleaning: Cleaning | None = None,
    block_size: int | None = None,
    workers: int | None = None,
    force: bool = False,
    tokenizer_sample_mb: float = 64.0,
    progress: bool = True,
    command: str | None = None,
    lowercase: str | None = None,
    normalize_whitespace: bool = False,
    min_frequency: int = 1,
) -> PrepareResult:
    """Prepare `source` into folder `out` (or a cache folder keyed by the inputs and flags
    when `out` is None) and say whether an earlier result was reused.

    `source` is anything `tinygpt.data.corpora.open_source` accepts. `tokenizer` is "char", "bpe",
    "gpt2" (GPT-2's vocabulary; `vocab_size` and `backend` are then ignored) or the path of a
    tokenizer.json to reuse. `lowercase` ("default" or "tr") and `normalize_whitespace` give
    the tokenizer a normalizer (see `tinygpt.data.tokenizer.normalize`); a BPE merges only pairs
    seen at least `min_frequency` times. A folder that already holds a dataset made
    with the same inputs and flags is reused as it is; one made from the same source with
    other flags, or from inputs that changed since, is rebuilt; one made from another
    source is replaced only with `force`. Raises `TinyGPTError` on bad input, leaving no
    output behind.
    """
    cleaning = cleaning if cleaning is not None else Cleaning()
    if workers is not None and workers < 1:
        raise TinyGPTError(f"--workers must be at least 1, got {workers}")
    if block_size is not None and block_size < 1:
        raise TinyGPTError(f"--block-size must be at least 1, got {block_size}")
    plan = _plan(
        source,
        tokenizer=tokenizer,
        vocab_size=vocab_size,
        backend=backend,
        val_fraction=val_fraction,
        seed=seed,
        text_field=text_field,
        errors=errors,
        cleaning=cleaning,
        tokenizer_sample_mb=tokenizer_sample_mb,
        lowercase=lowercase,
        normalize_whitespace=normalize_whitespace,
        min_frequency=min_frequency,
    )
    out_path = Path(out) if out is not None else cache_dir() / "datasets" / plan.key[:24]
    if out_path.is_dir():
        meta = _is_complete(out_path, plan.key)
        if meta is not None:
            if block_size is not None:  # the context is not part of the key: check it here
                splits = meta["splits"]
                _check_block_size([splits["train"]["tokens"], splits["val"]["tokens"]], block_size)
            return PrepareResult(out_path, True, meta)
    _check_destination(out_path, source, force or out is None)
    workers = workers or os.cpu_count() or 1
    started = time.time()
    tmp = _make_temp_dir(out_path)
    try:
        spool_path = tmp / "text.spool"
        spooled = _spool(
            plan.source,
            cleaning,
            spool_path,
            want_chars=plan.tokenizer == "char",
            sample_chars=int(tokenizer_sample_mb * 1_000_000),
            progress=progress,
        )
        if not spooled.docs:
            raise _empty_error(source, spooled.stats)
        tok = _make_tokenizer(plan, spooled, vocab_size, backend)
        if tok.shortfall and progress:
            print(f"note: {tok.shortfall}", file=sys.stderr)
        tok.save(tmp / TOKENIZER)
        dtype = dtype_for(tok.vocab_size)
        items = _items(spool_path, spooled, val_fraction, seed)
        with open(tmp / "train.bin", "wb") as ftrain, open(tmp / "val.bin", "wb") as fval:
            tokens, nbytes = _encode_all(
                items, (ftrain, fval), tmp / TOKENIZER, dtype, workers,
                spool_path.stat().st_size, progress,
            )  # fmt: skip
        spool_path.unlink()
        if block_size is not None:
            _check_block_size(tokens, block_size)
        meta = _meta(plan, spooled, tok, tmp / TOKENIZER, dtype, tokens, nbytes, command)
        meta["block_size"] = block_size
        meta["seconds"] = round(time.time() - started, 3)
        meta["workers"] = workers
        (tmp / META).write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", "utf-8")
        _install(tmp, out_path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return PrepareResult(out_path, False, meta)


def prepare(source: str, out: str | os.PathLike[str], **kwargs: Any) -> Path:
    """Prepare `source` into dataset folder `out` and return its path (see `prepare_dataset`
    for the arguments)."""
    return prepare_dataset(source, out, **kwargs).path


def _empty_error(source: str, stats: dict[str, Any]) -> TinyGPTError:
    if stats["documents_in"] == stats["dropped_empty"]:
        return TinyGPTError(f"{source} holds no text; give a corpus with some text in it")
    reasons = ", ".join(
        f"{what}: {stats[key]}"
        for key, what in [
            ("dropped_empty", "empty"),
            ("dropped_short", "shorter than --min-chars"),
            ("dropped_duplicate", "duplicates"),
            ("dropped_language", "other language"),
        ]
        if stats[key]
    )
    return TinyGPTError(
        f"cleaning dropped all {stats['documents_in']} documents of {source} ({reasons}); "
        "relax the cleaning flags"
    )


def _check_block_size(tokens: list[int], block_size: int) -> None:
    need = block_size + 1  # one training example: block_size inputs and their next tokens
    if min(tokens) < need:
        raise TinyGPTError(
            f"the corpus is shorter than one context window: train has {tokens[0]} tokens and "
            f"val {tokens[1]}, each needs at least --block-size + 1 = {need}; use a smaller "
            "--block-size or more text"
        )


def _meta(
    plan: _Plan,
    spooled: _Spooled,
    tok: Any,
    tokenizer_json: Path,
    dtype: np.dtype,
    tokens: list[int],
    nbytes: list[int],
    command: str | None,
) -> dict[str, Any]:
    from tinygpt.data.tokenizer import file_hash

    val_fraction, seed = plan.settings["val_fraction"], plan.settings["seed"]
    if len(spooled.docs) == 1:
        documents = [1, 1]
        split = {"method": "tail", "val_fraction": val_fraction}
    else:
        is_val = _split_assignment(len(spooled.docs), val_fraction, seed)
        documents = [len(is_val) - sum(is_val), sum(is_val)]
        split = {"method": "documents", "val_fraction": val_fraction, "seed": seed}
    settings = plan.settings
    return {
        "format": FORMAT_VERSION,
        "version": __version__,
        "key": plan.key,
        "source": settings["source"],
        "source_kind": plan.source.kind,
        "inputs": settings["inputs"],
        "input_hashes": spooled.input_hashes,
        "text_field": settings["text_field"],
        "errors": settings["errors"],
        "cleaning": {**settings["cleaning"], "stats": spooled.stats},
        "split": split,
        "tokenizer": {
            **settings["tokenizer"],
            "kind": tok.kind,
            "sample_mb": settings["tokenizer_sample_mb"],
            **({"shortfall": tok.shortfall} if tok.shortfall else {}),
        },
        "tokenizer_kind": tok.kind,
        "tokenizer_hash": file_hash(tokenizer_json),
        "vocab_size": tok.vocab_size,
        "eot_id": tok.eot_id,
        "dtype": dtype.name,
        "splits": {
            name: {"tokens": tokens[i], "bytes": nbytes[i], "documents": documents[i]}
            for i, name in enumerate(SPLITS)
        },
        "characters": sum(n for _, _, n in spooled.docs),
        "command": command if command is not None else shlex.join(sys.argv),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
