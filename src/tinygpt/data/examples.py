"""Instruction examples: records in four shapes become conversations, token ids and a loss
mask, prepared once into a dataset folder.

Owns: recognising a record's shape, turning it into messages, reading a JSON Lines file (or a
JSON list, or a Hugging Face dataset) of records with every malformed line reported by its
number and counted, encoding each conversation through a chat template (`tinygpt.data.template`), the
train/validation split of examples, the examples dataset folder (`prepare_examples`,
`open_examples`) and the rule for examples longer than the context (`fit_to_context`). Knows
nothing about models or the training loop: `tinygpt.data.batches.ExampleBatches` draws batches
from what `open_examples` returns, `tinygpt.train.finetune` puts the pieces together.

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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tinygpt.core import __version__
from tinygpt.core.errors import TinyGPTError
from tinygpt.core.files import read_jsonl, sha256_file

FORMAT_VERSION = 1
KIND = "examples"
META = "meta.json"
TOKENIZER = "tokenizer.json"
SPLITS = ("train", "val")
FORMATS = ("auto", "text", "alpaca", "prompt", "messages")
CHAT_FORMATS = ("alpaca", "prompt", "messages")
SHAPES = {
    "alpaca": '{"instruction", "input"?, "output"}',
    "prompt": '{"prompt", "response"|"completion"}',
    "messages": '{"messages": [{"role", "content"}, ...]}',
    "text": '{"text"}',
}
SHOWN_SKIPPED = 10  # skipped lines printed; meta.json keeps up to KEPT_SKIPPED
KEPT_SKIPPED = 100

Message = dict[str, str]
Report = Callable[[str], None]


def _stderr(line: str) -> None:
    print(f"note: {line}", file=sys.stderr)


# ------------------------------------------------------------------------------- shapes


def accepted_shapes() -> str:
    """The shapes, for error messages.

    >>> accepted_shapes().split("; ")[0]
    'alpaca {"instruction", "input"?, "output"}'
    """
    return "; ".join(f"{name} {shape}" for name, shape in SHAPES.items())


def detect_shape(record: Any) -> str | None:
    """The shape a record's keys say it has, or None.

    >>> detect_shape({"instruction": "Add", "input": "2 and 2", "output": "4"})
    'alpaca'
    >>> detect_shape({"prompt": "Hi", "completion": "Hello"}), detect_shape({"q": 1})
    ('prompt', None)
    """
    if not isinstance(record, dict):
        return None
    if "messages" in record:
        return "messages"
    if "instruction" in record and "output" in record:
        return "alpaca"
    if "prompt" in record and ("response" in record or "completion" in record):
        return "prompt"
    if "text" in record:
        return "text"
    return None


def _text_field(record: dict[str, Any], key: str, *, optional: bool = False) -> str | None:
    value = record.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, str):
        got = "missing" if key not in record else f"a {type(value).__name__}"
        raise TinyGPTError(f"field {key!r} is {got}, not text")
    return value


def to_messages(record: Any, shape: str) -> list[Message]:
    """The conversation a record of `shape` stands for; a TinyGPTError says why a record
    cannot be one.

    >>> to_messages({"instruction": "Translate", "input": "merhaba", "output": "hello"}, "alpaca")
    [{'role': 'user', 'content': 'Translate\\n\\nmerhaba'}, {'role': 'assistant', 'content': 'hello'}]
    """
    from tinygpt.data.template import validate_messages

    if not isinstance(record, dict):
        raise TinyGPTError(f"a {type(record).__name__}, not a JSON object")
    found = detect_shape(record)
    if found != shape:
        keys = ", ".join(map(str, record)) or "none"
        raise TinyGPTError(f"keys found: {keys}; --format {shape} needs {SHAPES[shape]}")
    messages: list[Message] = []
    if shape in ("alpaca", "prompt"):
        system = _text_field(record, "system", optional=True)
        if system:
            messages.append({"role": "system", "content": system})
    if shape == "alpaca":
        user = _text_field(record, "instruction")
        extra = _text_field(record, "input", optional=True)
        if extra:
            user = f"{user}\n\n{extra}"
        messages += [
            {"role": "user", "content": user},
            {"role": "assistant", "content": _text_field(record, "output")},
        ]
    elif shape == "prompt":
        key = "response" if "response" in record else "completion"
        messages += [
            {"role": "user", "content": _text_field(record, "prompt")},
            {"role": "assistant", "content": _text_field(record, key)},
        ]
    else:
        raw = record["messages"]
        validate_messages(raw, training=True)
        messages = [{"role": m["role"], "content": m["content"]} for m in raw]
    return messages


# ------------------------------------------------------------------------------ reading


def _source_files(source: str) -> tuple[str, list[Path]]:
    """("hf", []) for hf:NAME, ("json", [file]) for a .json list, ("jsonl", files), or
    ("text", files) for anything else `tinygpt prepare` reads."""
    if source.startswith("hf:"):
        return "hf", []
    path = Path(source).expanduser()
    if path.is_file() and path.suffix.lower() == ".json":
        return "json", [path]
    from tinygpt.data.corpora import open_source

    src = open_source(source)
    return ("jsonl" if src.kind in ("jsonl", "instructions") else "text"), list(src.files)


def iter_records(
    source: str, *, errors: str = "strict", skip: Callable[[str, str], None] | None = None
) -> Iterator[tuple[str, Any]]:
    """(where, record) for every record of a JSONL file or glob, a .json list or
    `hf:NAME[:CONFIG]`; `where` is `FILE:LINE`, `FILE[i]` or `hf:NAME#i`. Lines that are not
    JSON go to `skip(where, reason)` (an error without it)."""
    kind, files = _source_files(source)
    if kind == "hf":
        from tinygpt.data.corpora import iter_hf_records

        for i, record in enumerate(iter_hf_records(source[3:])):
            yield f"{source}#{i}", record
        return
    if kind == "json":
        path = files[0]
        try:
            data = json.loads(path.read_bytes().decode("utf-8", errors=errors))
        except UnicodeDecodeError as exc:
            from tinygpt.core.files import decode_error

            raise decode_error(path, exc.start, exc) from None
        except json.JSONDecodeError as exc:
            raise TinyGPTError(f"{path} is not valid JSON ({exc}); fix it or use JSONL") from None
        if not isinstance(data, list):
            raise TinyGPTError(
                f"{path} holds a JSON {type(data).__name__}; give a list of records, or one "
                "record per line in a .jsonl file"
            )
        for i, record in enumerate(data):
            yield f"{path}[{i}]", record
        return
    if kind != "jsonl":
        raise TinyGPTError(
            f"{source} is not JSON Lines; instruction examples are .jsonl (or .json) records "
            "of the shapes " + accepted_shapes() + ", or use --format text for plain text"
        )
    for path in files:
        bad = None if skip is None else (lambda n, why, p=path: skip(f"{p}:{n}", why))
        for lineno, record in read_jsonl(path, errors=errors, skip=bad):
            yield f"{path}:{lineno}", record


def resolve_format(source: str, fmt: str, *, errors: str = "strict") -> str:
    """The format to read `source` as: `fmt`, or for "auto" what the source holds — text for
    anything but JSON records, else the shape of the first record (a shape not recognised
    is an error that lists the keys found and the shapes accepted)."""
    if fmt not in FORMATS:
        import difflib

        close = difflib.get_close_matches(str(fmt), FORMATS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise TinyGPTError(f"--format {fmt!r} is not one of {', '.join(FORMATS)}{hint}")
    if fmt != "auto":
        return fmt
    kind, _ = _source_files(source)
    if kind == "text":
        return "text"
    for where, record in iter_records(source, errors=errors, skip=lambda *_: None):
        if not isinstance(record, dict):
            continue
        shape = detect_shape(record)
        if shape is None:
            keys = ", ".join(map(str, record)) or "none"
            raise TinyGPTError(
                f"{where}: data shape not recognised: keys found: {keys}; accepted: "
                f"{accepted_shapes()} (or choose one with --format)"
            )
        return shape
    raise TinyGPTError(
        f"{source} holds no JSON object; give records of the shapes " + (accepted_shapes())
    )


@dataclass
class Conversations:
    """The usable conversations of a source, and what was skipped."""

    messages: list[list[Message]]
    where: list[str]
    skipped: list[tuple[str, str]]  # (where, why)
    records: int  # records and lines seen
    splits: list[str | None] = field(default_factory=list)  # a record's own "split", if any


def read_conversations(
    source: str, fmt: str, *, errors: str = "strict", report: Report | None = _stderr
) -> Conversations:
    """Every record of `source` as a conversation of shape `fmt` (alpaca, prompt or
    messages); malformed ones are skipped, each reported (the first `SHOWN_SKIPPED`) with
    its line. No usable record at all is an error that quotes the first problem."""
    if fmt not in CHAT_FORMATS:
        raise TinyGPTError(
            f"format {fmt!r} is not a conversation shape ({', '.join(CHAT_FORMATS)})"
        )
    out = Conversations([], [], [], 0, [])

    def skip(where: str, why: str) -> None:
        out.skipped.append((where, why))
        out.records += 1

    for where, record in iter_records(source, errors=errors, skip=skip):
        out.records += 1
        try:
            messages = to_messages(record, fmt)
        except TinyGPTError as exc:
            out.records -= 1  # counted again by skip
            skip(where, str(exc))
            continue
        out.messages.append(messages)
        out.where.append(where)
        split = record.get("split") if isinstance(record, dict) else None
        out.splits.append(split if split in SPLITS else None)
    if not out.messages:
        if not out.skipped:
            raise TinyGPTError(f"{source} holds no records; give a file of {SHAPES[fmt]} records")
        first_where, first_why = out.skipped[0]
        raise TinyGPTError(
            f"{source} holds no usable example: all {len(out.skipped)} records were skipped; "
            f"the first, {first_where}: {first_why}"
        )
    if report is not None:  # reported once it is clear that something is usable
        for where, why in out.skipped[:SHOWN_SKIPPED]:
            report(f"skipped {where}: {why}")
        if len(out.skipped) > SHOWN_SKIPPED:
            report(f"... and {len(out.skipped) - SHOWN_SKIPPED} more skipped records")
    return out


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

    def load_tokenizer(self) -> Any:
        from tinygpt.data.tokenizer import load_tokenizer

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
    template: Any,
    tokenizer_file: Path,
    val_fraction: float,
    seed: int,
    errors: str,
) -> str:
    """The cache key of an examples folder: inputs (path, size, mtime), format, the
    template's rendering, the tokenizer file's hash and the split."""
    kind, files = _source_files(source)
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
    report: Report | None = _stderr,
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
    from tinygpt.data.corpora import cache_dir
    from tinygpt.data.prepare import _check_destination, _install, _make_temp_dir, _split_assignment
    from tinygpt.data.template import get_template

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
    meta = _read_meta(out_path) if out_path.is_dir() else None
    if meta is not None and meta.get("key") == key:
        try:
            opened = open_examples(out_path)
        except TinyGPTError:
            opened = None
        if opened is not None:
            if block_size is not None and report is not None:
                _report_too_long(opened, block_size, report)
            return ExamplesResult(out_path, True, opened.meta)
    _check_destination(out_path, source, force or out is None)
    conv = read_conversations(source, fmt, errors=errors, report=report)
    if len(conv.messages) < 2:
        raise TinyGPTError(
            f"{source} holds {len(conv.messages)} usable example; fine-tuning needs at least 2 "
            "(one is held out for validation)"
        )
    from tinygpt.data.tokenizer import file_hash, load_tokenizer
    from tinygpt.train.finetune import check_encodable

    base_tok = load_tokenizer(tok_file)
    tok = base_tok.with_special_tokens(tmpl.special_tokens)
    added = [s for s in tmpl.special_tokens if s not in base_tok.special_tokens]
    unseen = check_encodable(tok, (m["content"] for msgs in conv.messages for m in msgs))
    if unseen and report is not None:
        report(
            f"{sum(unseen.values())} characters the tokenizer has never seen read as <unk>, "
            f"e.g. {', '.join(repr(c) for c, _ in unseen.most_common(3))}"
        )
    fixed = all(s is not None for s in conv.splits)
    if fixed:
        is_val = [s == "val" for s in conv.splits]
        if all(is_val) or not any(is_val):
            raise TinyGPTError(
                f"every record of {source} says it belongs to the {conv.splits[0]} split;"
                " fine-tuning needs examples on both sides (or drop the split fields)"
            )
    else:
        is_val = _split_assignment(len(conv.messages), val_fraction, seed)
    encoded: dict[str, list[tuple[list[int], list[int]]]] = {s: [] for s in SPLITS}
    for messages, val in zip(conv.messages, is_val):
        encoded[SPLITS[int(val)]].append(tmpl.encode(tok, messages))
    dtype = np.dtype(np.uint16 if tok.vocab_size <= 65535 else np.uint32)
    tmp = _make_temp_dir(out_path)
    try:
        counts = {}
        for split, rows in encoded.items():
            lengths = [len(ids) for ids, _ in rows]
            offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
            ids = np.asarray([i for r, _ in rows for i in r], dtype=dtype)
            mask = np.asarray([m for _, r in rows for m in r], dtype=np.uint8)
            ids.tofile(tmp / f"{split}.bin")
            mask.tofile(tmp / f"{split}.mask")
            offsets.tofile(tmp / f"{split}.idx")
            counts[split] = {
                "examples": len(rows),
                "tokens": int(len(ids)),
                "scored": int(mask.sum()),
                "longest": max(lengths, default=0),
            }
        tok.save(tmp / TOKENIZER)
        meta = {
            "format": FORMAT_VERSION,
            "kind": KIND,
            "version": __version__,
            "key": key,
            "source": source,
            "data_format": fmt,
            "template": tmpl.name,
            "end_of_turn": tmpl.end_of_turn,
            "added_tokens": added,
            "tokenizer_kind": tok.kind,
            "tokenizer_hash": file_hash(tmp / TOKENIZER),
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
        (tmp / META).write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", "utf-8")
        _install(tmp, out_path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    opened = open_examples(out_path)
    if block_size is not None and report is not None:
        _report_too_long(opened, block_size, report)
    return ExamplesResult(out_path, False, meta)


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
