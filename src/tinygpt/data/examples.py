"""Instruction examples: records in four shapes become conversations, token ids and a loss
mask, prepared once into a dataset folder.

Owns: encoding each conversation through a chat template (`tinygpt.data.template`), the
train/validation split of examples, the examples dataset folder (`prepare_examples`,
`open_examples`), the check that a base's tokenizer can read the data (`check_encodable`)
and the rule for examples longer than the context (`fit_to_context`). Recognising a
record's shape and reading records, with every malformed line reported by its number and
counted, is `tinygpt.data.records`'s. Knows nothing about models or the training loop:
`tinygpt.data.batches.ExampleBatches` draws batches from what `open_examples` returns,
`tinygpt.train.finetune` puts the pieces together.

The shapes (`--format`), each a JSON object per line:

    alpaca    {"instruction", "input"?, "output"}    user = instruction, then a blank line
                                                     and the input when it is not empty
    prompt    {"prompt", "response" | "completion"}  one user turn, one answer
    messages  {"messages": [{"role", "content"}, ...]}  any number of turns
    text      {"text"} (or any text `tinygpt prepare` reads): continued pre-training,
              handled by `tinygpt.data.prepare`, not here

`alpaca` and `prompt` records may also carry a "system" string (a system message first),
and any record a "split" ("train" or "val"): when every record has one, they fix the
held-out split (the built-in instruction sets do, `tinygpt.data.instructions`).
`auto` picks the shape from the keys of the first record; every later record must have it.

A record that cannot be used — a line that is not JSON, not an object, without the shape's
keys, with a non-text field, or a conversation whose roles do not alternate or that has no
answer — is skipped, reported as `FILE:LINE: why`, and counted in `meta.json`; a source with
no usable record at all is an error that quotes the first problem.

The folder (`tinygpt prepare --format alpaca|prompt|messages`, or `tinygpt finetune --input`
on the fly, cached by its inputs and settings like `prepare`'s):

    train.bin, val.bin     token ids of the examples, one after another (uint16/uint32)
    train.mask, val.mask   uint8, 1 where the default loss scores the token (the assistant's
                           messages and their end-of-turn tokens; `tinygpt.data.template`)
    train.idx, val.idx     int64 offsets: example i is ids[idx[i]:idx[i + 1]]
    tokenizer.json         the base tokenizer with the template's special tokens added
    meta.json              kind "examples", data format, template, tokenizer hashes (the
                           base's and this one's), counts per split, skipped lines

Examples go to validation by a hash of (seed, index), as `prepare` splits documents, with at
least one on each side — unless every record says its split. Context rule: an example longer than the model's context plus one
token (it would need more than `block_size` inputs) is **dropped**, never truncated — a cut
answer would teach the model to stop mid-sentence or never to close its turn — and the
number dropped is reported (`fit_to_context`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import sys
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tinygpt.core import __version__
from tinygpt.core.errors import TinyGPTError
from tinygpt.core.files import sha256_file
from tinygpt.data.cache import cache_dir
from tinygpt.data.dataset import (
    META,
    SPLITS,
    TOKENIZER,
    check_destination,
    dtype_for,
    install,
    make_temp_dir,
    split_assignment,
)
from tinygpt.data.records import (
    CHAT_FORMATS,
    Conversations,
    Report,
    read_conversations,
    resolve_format,
    source_files,
    stderr_note,
)
from tinygpt.data.records import FORMATS as FORMATS  # where the command line imports it from
from tinygpt.data.template import ChatTemplate, get_template
from tinygpt.data.tokenizer import Tokenizer, file_hash, load_tokenizer

FORMAT_VERSION = 1
KIND = "examples"
KEPT_SKIPPED = 100  # skipped records listed in meta.json


# ----------------------------------------------------------------------- the dataset folder


@dataclass
class ExampleSplit:
    """One split: token ids, the loss mask and example offsets (example i is
    ids[offsets[i]:offsets[i + 1]])."""

    ids: np.ndarray  # (N_tokens,)
    mask: np.ndarray  # (N_tokens,) uint8
    offsets: np.ndarray  # (N_examples + 1,) int64

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def example(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        return np.asarray(self.ids[a:b], dtype=np.int64), np.asarray(self.mask[a:b])


@dataclass
class Examples:
    """An examples dataset folder, opened (`open_examples`)."""

    path: Path
    meta: dict[str, Any]
    train: ExampleSplit
    val: ExampleSplit

    @property
    def tokenizer_path(self) -> Path:
        return self.path / TOKENIZER

    @property
    def template(self) -> str:
        return str(self.meta["template"])

    def load_tokenizer(self) -> Tokenizer:
        return load_tokenizer(self.tokenizer_path)


def _read_meta(path: Path) -> dict[str, Any] | None:
    try:
        meta = json.loads((path / META).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def is_examples(path: str | os.PathLike[str]) -> bool:
    """Whether `path` is an examples dataset folder (its meta.json says so)."""
    meta = _read_meta(Path(path))
    return meta is not None and meta.get("kind") == KIND


def open_examples(path: str | os.PathLike[str]) -> Examples:
    """Open a folder `prepare_examples` wrote; clear errors when it is not one or is damaged."""
    path = Path(path)
    hint = "make one with: tinygpt prepare --format alpaca|prompt|messages --tokenizer RUN"
    if not path.is_dir():
        raise TinyGPTError(f"examples folder {path} does not exist; {hint}")
    meta = _read_meta(path)
    if meta is None or meta.get("kind") != KIND:
        raise TinyGPTError(f"{path} is not an examples folder (meta.json kind 'examples'); {hint}")
    if meta.get("format") != FORMAT_VERSION:
        raise TinyGPTError(
            f"{path} has examples format {meta.get('format')!r}; this tinygpt reads "
            f"{FORMAT_VERSION}: prepare it again"
        )
    dtype = np.dtype(meta["dtype"])
    splits = {}
    for split in SPLITS:
        counts = meta["splits"][split]
        n_tok, n_ex = int(counts["tokens"]), int(counts["examples"])
        files = {ext: path / f"{split}.{ext}" for ext in ("bin", "mask", "idx")}
        sizes = {"bin": n_tok * dtype.itemsize, "mask": n_tok, "idx": (n_ex + 1) * 8}
        for ext, file in files.items():
            if not file.is_file() or file.stat().st_size != sizes[ext]:
                raise TinyGPTError(
                    f"{file} is missing or has the wrong size for {n_tok} tokens in {n_ex} "
                    "examples; the folder is damaged, prepare it again"
                )
        splits[split] = ExampleSplit(
            ids=np.memmap(files["bin"], dtype=dtype, mode="r", shape=(n_tok,))
            if n_tok
            else np.zeros(0, dtype),
            mask=np.fromfile(files["mask"], dtype=np.uint8),
            offsets=np.fromfile(files["idx"], dtype=np.int64),
        )
    if not (path / TOKENIZER).is_file():
        raise TinyGPTError(f"{path} lacks {TOKENIZER}; prepare it again")
    return Examples(path, meta, splits["train"], splits["val"])


@dataclass
class ExamplesResult:
    path: Path
    reused: bool
    meta: dict[str, Any]


def _tokenizer_file(tokenizer: str | os.PathLike[str]) -> Path:
    path = Path(tokenizer).expanduser()
    if path.is_dir():
        path = path / TOKENIZER
    if not path.is_file():
        raise TinyGPTError(
            f"--tokenizer {tokenizer}: chat examples are encoded with the base model's "
            "tokenizer; give the base's run folder or its tokenizer.json (no such file)"
        )
    return path


def examples_key(
    source: str,
    fmt: str,
    template: ChatTemplate,
    tokenizer_file: Path,
    val_fraction: float,
    seed: int,
    errors: str,
) -> str:
    """The cache key of an examples folder: inputs (path, size, mtime), format, the
    template's rendering, the tokenizer file's hash and the split."""
    kind, files = source_files(source)
    inputs: list[Any] = [
        {"path": str(p.resolve()), "size": p.stat().st_size, "mtime_ns": p.stat().st_mtime_ns}
        for p in files
    ]
    if kind == "hf":
        inputs.append({"hf": source})
    settings = {
        "source": source,
        "inputs": inputs,
        "format": fmt,
        "template": [template.name, template.jinja()],
        "tokenizer": sha256_file(tokenizer_file),
        "val_fraction": val_fraction,
        "seed": seed,
        "errors": errors,
        "examples_format": FORMAT_VERSION,
        "version": __version__,
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def prepare_examples(
    source: str,
    out: str | os.PathLike[str] | None,
    *,
    tokenizer: str | os.PathLike[str],
    template: str = "default",
    fmt: str = "auto",
    val_fraction: float = 0.1,
    seed: int = 1337,
    errors: str = "strict",
    block_size: int | None = None,
    force: bool = False,
    command: str | None = None,
    report: Report | None = stderr_note,
) -> ExamplesResult:
    """Prepare the conversations of `source` into an examples folder `out` (or a cache folder
    keyed by the inputs and settings when `out` is None) and say whether an earlier result
    was reused.

    `tokenizer` is the base's tokenizer.json (or a run folder holding one); the template's
    special tokens are added to it (`Tokenizer.with_special_tokens`). `fmt` is alpaca,
    prompt, messages or auto. `block_size` counts the examples too long for that context
    (they are dropped when fine-tuning). `report` receives the notes (skipped lines, unseen
    characters); None keeps quiet.
    """
    if not 0.0 < val_fraction < 1.0:
        raise TinyGPTError(
            f"--val-fraction must be between 0 and 1 (exclusive), got {val_fraction}"
        )
    tmpl = get_template(template)
    tok_file = _tokenizer_file(tokenizer)
    fmt = resolve_format(source, fmt, errors=errors)
    if fmt not in CHAT_FORMATS:
        raise TinyGPTError(
            f"{source} holds text, not instruction examples; prepare it without --format "
            "(or fine-tune on it with --format text)"
        )
    key = examples_key(source, fmt, tmpl, tok_file, val_fraction, seed, errors)
    out_path = Path(out) if out is not None else cache_dir() / "examples" / key[:24]
    reused = _reuse(out_path, key, block_size, report)
    if reused is not None:
        return reused
    check_destination(out_path, source, force or out is None)
    conv = read_conversations(source, fmt, errors=errors, report=report)
    if len(conv.messages) < 2:
        raise TinyGPTError(
            f"{source} holds {len(conv.messages)} usable example; fine-tuning needs at least 2 "
            "(one is held out for validation)"
        )
    base_tok = load_tokenizer(tok_file)
    tok = base_tok.with_special_tokens(tmpl.special_tokens)
    unseen = check_encodable(tok, (m["content"] for msgs in conv.messages for m in msgs))
    if unseen and report is not None:
        report(
            f"{sum(unseen.values())} characters the tokenizer has never seen read as <unk>, "
            f"e.g. {', '.join(repr(c) for c, _ in unseen.most_common(3))}"
        )
    is_val, fixed = _held_out(source, conv, val_fraction, seed)
    encoded = _encode(conv, is_val, tmpl, tok)
    dtype = dtype_for(tok.vocab_size)
    tmp = make_temp_dir(out_path)
    try:
        counts = _write_splits(tmp, encoded, dtype)
        tok.save(tmp / TOKENIZER)
        meta = _examples_meta(
            key=key, source=source, fmt=fmt, tmpl=tmpl, tok=tok, base_tok=base_tok,
            tok_file=tok_file, folder=tmp, dtype=dtype, fixed=fixed, val_fraction=val_fraction,
            seed=seed, counts=counts, conv=conv, unseen=unseen, errors=errors, command=command,
        )  # fmt: skip
        (tmp / META).write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", "utf-8")
        install(tmp, out_path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    opened = open_examples(out_path)
    if block_size is not None and report is not None:
        _report_too_long(opened, block_size, report)
    return ExamplesResult(out_path, False, meta)


def _reuse(
    out_path: Path, key: str, block_size: int | None, report: Report | None
) -> ExamplesResult | None:
    """The folder at `out_path` when it is complete and was made with `key`, else None."""
    meta = _read_meta(out_path) if out_path.is_dir() else None
    if meta is None or meta.get("key") != key:
        return None
    try:
        opened = open_examples(out_path)
    except TinyGPTError:
        return None
    if block_size is not None and report is not None:
        _report_too_long(opened, block_size, report)
    return ExamplesResult(out_path, True, opened.meta)


def _encode(
    conv: Conversations, is_val: list[bool], tmpl: ChatTemplate, tok: Tokenizer
) -> dict[str, list[tuple[list[int], list[int]]]]:
    """(ids, mask) of every conversation through the template, by split."""
    encoded: dict[str, list[tuple[list[int], list[int]]]] = {s: [] for s in SPLITS}
    for messages, val in zip(conv.messages, is_val):
        encoded[SPLITS[int(val)]].append(tmpl.encode(tok, messages))
    return encoded


def _examples_meta(
    *,
    key: str,
    source: str,
    fmt: str,
    tmpl: ChatTemplate,
    tok: Tokenizer,
    base_tok: Tokenizer,
    tok_file: Path,
    folder: Path,
    dtype: np.dtype,
    fixed: bool,
    val_fraction: float,
    seed: int,
    counts: dict[str, dict[str, int]],
    conv: Conversations,
    unseen: Counter[str],
    errors: str,
    command: str | None,
) -> dict[str, Any]:
    """The meta.json of an examples folder written in `folder`."""
    return {
        "format": FORMAT_VERSION,
        "kind": KIND,
        "version": __version__,
        "key": key,
        "source": source,
        "data_format": fmt,
        "template": tmpl.name,
        "end_of_turn": tmpl.end_of_turn,
        "added_tokens": [s for s in tmpl.special_tokens if s not in base_tok.special_tokens],
        "tokenizer_kind": tok.kind,
        "tokenizer_hash": file_hash(folder / TOKENIZER),
        "base_tokenizer_hash": file_hash(tok_file),
        "vocab_size": tok.vocab_size,
        "eot_id": tok.eot_id,
        "dtype": dtype.name,
        "split": {"method": "records"}
        if fixed
        else {"method": "examples", "val_fraction": val_fraction, "seed": seed},
        "splits": counts,
        "records": conv.records,
        "skipped": len(conv.skipped),
        "skipped_records": [f"{w}: {why}" for w, why in conv.skipped[:KEPT_SKIPPED]],
        "unknown_characters": sum(unseen.values()),
        "errors": errors,
        "command": command if command is not None else shlex.join(sys.argv),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _held_out(
    source: str, conv: Conversations, val_fraction: float, seed: int
) -> tuple[list[bool], bool]:
    """(whether each conversation goes to validation, whether the records fixed it): the
    records' own split when every one has it, else a hash of (seed, index)."""
    fixed = all(s is not None for s in conv.splits)
    if not fixed:
        return split_assignment(len(conv.messages), val_fraction, seed), False
    is_val = [s == "val" for s in conv.splits]
    if all(is_val) or not any(is_val):
        raise TinyGPTError(
            f"every record of {source} says it belongs to the {conv.splits[0]} split;"
            " fine-tuning needs examples on both sides (or drop the split fields)"
        )
    return is_val, True


def _write_splits(
    folder: Path, encoded: dict[str, list[tuple[list[int], list[int]]]], dtype: np.dtype
) -> dict[str, dict[str, int]]:
    """Write each split's ids, mask and offsets into `folder`; return its counts."""
    counts = {}
    for split, rows in encoded.items():
        lengths = [len(ids) for ids, _ in rows]
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        ids = np.asarray([i for r, _ in rows for i in r], dtype=dtype)
        mask = np.asarray([m for _, r in rows for m in r], dtype=np.uint8)
        ids.tofile(folder / f"{split}.bin")
        mask.tofile(folder / f"{split}.mask")
        offsets.tofile(folder / f"{split}.idx")
        counts[split] = {
            "examples": len(rows),
            "tokens": int(len(ids)),
            "scored": int(mask.sum()),
            "longest": max(lengths, default=0),
        }
    return counts


def _report_too_long(examples: Examples, block_size: int, report: Report) -> None:
    for name in SPLITS:
        _, dropped = fit_to_context(getattr(examples, name), block_size)
        if dropped:
            report(
                f"{dropped} {name} examples are longer than a context of {block_size} (+1) "
                "tokens and will be dropped when fine-tuning"
            )


def fit_to_context(split: ExampleSplit, block_size: int) -> tuple[np.ndarray, int]:
    """(indices of the usable examples, how many were dropped): an example is used when it
    fits the context — at most block_size + 1 tokens, i.e. block_size inputs and their
    targets — and has a scored target. Longer ones are dropped, not truncated (module
    docstring).

    >>> s = ExampleSplit(np.arange(9), np.ones(9, np.uint8), np.array([0, 3, 9]))
    >>> fit_to_context(s, 4)
    (array([0]), 1)
    """
    lengths = split.lengths
    fits = lengths <= block_size + 1
    # Scored targets of example i: the mask summed over its tokens after the first.
    total = np.concatenate([[0], np.cumsum(split.mask, dtype=np.int64)])
    starts = np.minimum(split.offsets[:-1] + 1, split.offsets[1:])
    scored = total[split.offsets[1:]] - total[starts] > 0
    keep = np.flatnonzero(fits & scored)
    return keep, int(len(lengths) - len(keep))


def check_encodable(tokenizer: Tokenizer, texts: Iterable[str]) -> Counter[str]:
    """Characters of `texts` that a character-level tokenizer has never seen, with counts.

    Byte-level BPE encodes anything: the result is empty. A character tokenizer with an
    unknown token (`<unk>`) reads each unseen character as that token: the result says how
    many, for the caller to report. Without one, unseen characters are an error that gives
    their count and the most frequent of them; train the base on text that holds them, or
    on data prepared with `tinygpt prepare --unk`.

    >>> from tinygpt.data.tokenizer import CharTokenizer
    >>> check_encodable(CharTokenizer(["a", "b"], unk=True), ["abc", "cd"])
    Counter({'c': 2, 'd': 1})
    """
    known = getattr(tokenizer, "stoi", None)
    unseen: Counter[str] = Counter()
    if known is None:
        return unseen
    for text in texts:
        unseen.update(c for c in text if c not in known)
    if unseen and getattr(tokenizer, "unk_id", None) is None:
        examples = ", ".join(f"{c!r} (U+{ord(c):04X}) x{n}" for c, n in unseen.most_common(5))
        raise TinyGPTError(
            f"the data holds {sum(unseen.values())} characters ({len(unseen)} distinct) that "
            f"this character-level tokenizer has never seen, e.g. {examples}; it has no <unk> "
            "token to read them as, so pre-train the base on text that holds them (or on data "
            "prepared with `tinygpt prepare --unk`), or remove them from the data"
        )
    return unseen
