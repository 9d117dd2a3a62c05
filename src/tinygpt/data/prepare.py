"""Dataset preparation: text in, token ids on disk out.

Owns: `prepare` (a source becomes a dataset folder: `train.bin`, `val.bin`, `tokenizer.json`,
`meta.json`), the train/validation split of the text, parallel encoding and reuse of an
earlier result. Knows nothing about where text comes from (`tinygpt.data.sources`), how it is
cleaned and spooled (`tinygpt.data.cleaning`, `tinygpt.data.spool`), how tokenizers work
inside (`tinygpt.data.tokenizer`), how the folder is read back and written safely
(`tinygpt.data.dataset`, which also holds `open_dataset`) or how batches are drawn for
training (`tinygpt.train.loop`).

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

import collections
import hashlib
import json
import multiprocessing
import os
import shlex
import shutil
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from tinygpt.core import __version__
from tinygpt.core.errors import TinyGPTError
from tinygpt.core.files import sha256_file
from tinygpt.data.cache import cache_dir
from tinygpt.data.cleaning import Cleaning
from tinygpt.data.dataset import (
    META,
    SPLITS,
    TOKENIZER,
    check_destination,
    dtype_for,
    install,
    make_temp_dir,
    open_dataset,
    read_meta,
    split_assignment,
)
from tinygpt.data.dataset import Dataset as Dataset  # where other stages import them from
from tinygpt.data.dataset import check_fits as check_fits
from tinygpt.data.dataset import largest_id as largest_id
from tinygpt.data.sources import Source, open_source
from tinygpt.data.spool import Spooled, read_spool, spool
from tinygpt.data.tokenizer import Normalizer, Tokenizer, file_hash, load_tokenizer, train_tokenizer
from tinygpt.data.tokenizer.bpe import check_min_frequency
from tinygpt.data.tokenizer.gpt2 import gpt2_tokenizer_file

FORMAT_VERSION = 1

# Text handed to one encoding task; small enough to spread over workers and keep memory
# flat, large enough that process hand-over costs little next to the encoding itself.
TASK_CHARS = 1 << 18


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
    normalizer: Normalizer | None = None
    min_frequency: int = 1
    unk: bool = False


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
    unk: bool = False,
) -> _Plan:
    if not 0.0 < val_fraction < 1.0:
        raise TinyGPTError(
            f"--val-fraction must be between 0 and 1 (exclusive), got {val_fraction}"
        )
    if tokenizer_sample_mb <= 0:
        raise TinyGPTError(f"the tokenizer sample must be positive, got {tokenizer_sample_mb} MB")
    normalizer = Normalizer.build(lowercase=lowercase, whitespace=normalize_whitespace)
    tokenizer_file, tokenizer_id = _tokenizer_identity(
        tokenizer, vocab_size, backend, min_frequency, normalizer
    )
    if unk:
        if tokenizer != "char":
            raise TinyGPTError(
                f"--unk applies to --tokenizer char (a new character vocabulary), not {tokenizer}"
            )
        tokenizer_id["unk"] = True
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
    return _Plan(src, settings, key, tokenizer, tokenizer_file, normalizer, min_frequency, unk)


def _tokenizer_identity(
    tokenizer: str,
    vocab_size: int | None,
    backend: str,
    min_frequency: int,
    normalizer: Normalizer | None,
) -> tuple[Path | None, dict[str, Any]]:
    """The tokenizer file to reuse (None when one is trained here) and what identifies the
    tokenizer in the cache key: its kind and settings, or the hash of its file."""
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
                check_min_frequency(min_frequency)
                tokenizer_id["min_frequency"] = min_frequency
    elif tokenizer == "gpt2":
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
    return tokenizer_file, tokenizer_id


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


# --- the two passes ----------------------------------------------------------------------


def _items(
    spool_path: Path, spooled: Spooled, val_fraction: float, seed: int
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
        for text in read_spool(spool_path, start, end, TASK_CHARS):
            if pos < cut < pos + len(text):
                yield 0, text[: cut - pos], True
                yield 1, text[cut - pos :], False
            else:
                yield (0 if pos < cut else 1), text, pos + len(text) == cut
            pos += len(text)
        yield 1, "", True
        return
    for (start, end, _), val in zip(
        docs, split_assignment(len(docs), val_fraction, seed), strict=True
    ):
        # One piece of look-ahead, so that the last piece of the document carries the eot.
        previous: str | None = None
        for text in read_spool(spool_path, start, end, TASK_CHARS):
            if previous is not None:
                yield int(val), previous, False
            previous = text
        yield int(val), previous or "", True


# Worker state: each encoding process loads the tokenizer once.
_WORKER: dict[str, Any] = {}


def _init_worker(tokenizer_path: str, dtype: str, pool: bool = False) -> None:
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


def _make_tokenizer(
    plan: _Plan, spooled: Spooled, vocab_size: int | None, backend: str
) -> Tokenizer:
    if plan.tokenizer_file is not None:
        tok = load_tokenizer(plan.tokenizer_file)
        if plan.normalizer is not None:  # gpt2 with --lowercase / --normalize-whitespace
            tok.normalizer = plan.normalizer
        return tok
    if plan.tokenizer == "char":
        # The characters are what the normalizer leaves of the text: it works on each
        # character alone, except that it joins whitespace runs, which it also does here.
        chars = "".join(sorted(spooled.chars or ()))
        return train_tokenizer("char", [chars], unk=plan.unk, normalizer=plan.normalizer)
    return train_tokenizer(
        "bpe",
        spooled.sample,
        vocab_size=vocab_size,
        backend=backend,
        min_frequency=plan.min_frequency,
        normalizer=plan.normalizer,
    )


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
    unk: bool = False,
    skip_bad_files: bool = False,
) -> PrepareResult:
    """Prepare `source` into folder `out` (or a cache folder keyed by the inputs and flags
    when `out` is None) and say whether an earlier result was reused.

    `source` is anything `tinygpt.data.sources.open_source` accepts. `tokenizer` is "char", "bpe",
    "gpt2" (GPT-2's vocabulary; `vocab_size` and `backend` are then ignored) or the path of a
    tokenizer.json to reuse. `lowercase` ("default" or "tr") and `normalize_whitespace` give
    the tokenizer a normalizer (see `tinygpt.data.tokenizer.normalize`); a BPE merges only pairs
    seen at least `min_frequency` times; a char tokenizer trained with `unk` maps characters
    it never saw to `<unk>`. Files that are not text (`tinygpt.data.badfiles`) are named
    together in one error, or left out and counted with `skip_bad_files`. A folder that already holds a dataset made
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
        unk=unk,
    )
    out_path = Path(out) if out is not None else cache_dir() / "datasets" / plan.key[:24]
    if out_path.is_dir():
        meta = _is_complete(out_path, plan.key)
        if meta is not None:
            if block_size is not None:  # the context is not part of the key: check it here
                splits = meta["splits"]
                _check_block_size([splits["train"]["tokens"], splits["val"]["tokens"]], block_size)
            return PrepareResult(out_path, True, meta)
    check_destination(out_path, source, force or out is None)
    workers = workers or os.cpu_count() or 1
    meta = _build(
        plan, out_path, cleaning, vocab_size=vocab_size, backend=backend, workers=workers,
        block_size=block_size, progress=progress, command=command, skip_bad_files=skip_bad_files,
    )  # fmt: skip
    return PrepareResult(out_path, False, meta)


def _build(
    plan: _Plan,
    out_path: Path,
    cleaning: Cleaning,
    *,
    vocab_size: int | None,
    backend: str,
    workers: int,
    block_size: int | None,
    progress: bool,
    command: str | None,
    skip_bad_files: bool = False,
) -> dict[str, Any]:
    """Both passes into a temporary folder beside `out_path`, moved into place at the end;
    returns the new dataset's meta. Nothing is left behind when it fails."""
    started = time.time()
    tmp = make_temp_dir(out_path)
    try:
        spool_path = tmp / "text.spool"
        spooled = spool(
            plan.source,
            cleaning,
            spool_path,
            want_chars=plan.tokenizer == "char",
            sample_chars=int(plan.settings["tokenizer_sample_mb"] * 1_000_000),
            progress=progress,
            skip_bad_files=skip_bad_files,
        )
        if not spooled.docs:
            raise spooled.empty_error(plan.settings["source"])
        tok = _make_tokenizer(plan, spooled, vocab_size, backend)
        if tok.shortfall and progress:
            print(f"note: {tok.shortfall}", file=sys.stderr)
        tok.save(tmp / TOKENIZER)
        dtype = dtype_for(tok.vocab_size)
        items = _items(spool_path, spooled, plan.settings["val_fraction"], plan.settings["seed"])
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
        install(tmp, out_path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta


def prepare(source: str, out: str | os.PathLike[str], **kwargs: Any) -> Path:
    """Prepare `source` into dataset folder `out` and return its path (see `prepare_dataset`
    for the arguments)."""
    return prepare_dataset(source, out, **kwargs).path


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
    spooled: Spooled,
    tok: Tokenizer,
    tokenizer_json: Path,
    dtype: np.dtype,
    tokens: list[int],
    nbytes: list[int],
    command: str | None,
) -> dict[str, Any]:
    val_fraction, seed = plan.settings["val_fraction"], plan.settings["seed"]
    if len(spooled.docs) == 1:
        documents = [1, 1]
        split = {"method": "tail", "val_fraction": val_fraction}
    else:
        is_val = split_assignment(len(spooled.docs), val_fraction, seed)
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
        "dropped": spooled.dropped(),
        **({"skipped_files": [vars(b) for b in spooled.bad_files]} if spooled.bad_files else {}),
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
