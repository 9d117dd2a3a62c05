"""Instruction records: their shapes, reading them from a source, and turning them into
conversations.

Owns: the shapes a record may have (`SHAPES`, `detect_shape`, `resolve_format`), turning a
record into messages (`to_messages`), and reading every record of a JSON Lines file or glob,
a JSON list or a Hugging Face dataset (`iter_records`, `read_conversations`) with every
malformed line skipped, reported by its place and counted. Knows nothing about tokens,
templates' rendering or the examples folder (`tinygpt.data.examples`); what a source is comes
from `tinygpt.data.sources`.
"""

from __future__ import annotations

import difflib
import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, overload

from tinygpt.core.errors import TinyGPTError
from tinygpt.core.files import decode_error, read_jsonl
from tinygpt.data.sources import iter_hf_records, open_source
from tinygpt.data.template import validate_messages

SPLITS = ("train", "val")
FORMATS = ("auto", "text", "alpaca", "prompt", "messages")
CHAT_FORMATS = ("alpaca", "prompt", "messages")
SHAPES = {
    "alpaca": '{"instruction", "input"?, "output"}',
    "prompt": '{"prompt", "response"|"completion"}',
    "messages": '{"messages": [{"role", "content"}, ...]}',
    "text": '{"text"}',
}
SHOWN_SKIPPED = 10  # skipped lines printed (an examples folder's meta.json keeps more)

Message = dict[str, str]
Report = Callable[[str], None]


def stderr_note(line: str) -> None:
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


@overload
def _text_field(record: dict[str, Any], key: str, *, optional: Literal[False] = False) -> str: ...


@overload
def _text_field(record: dict[str, Any], key: str, *, optional: bool) -> str | None: ...


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


def source_files(source: str) -> tuple[str, list[Path]]:
    """("hf", []) for hf:NAME, ("json", [file]) for a .json list, ("jsonl", files), or
    ("text", files) for anything else `tinygpt prepare` reads."""
    if source.startswith("hf:"):
        return "hf", []
    path = Path(source).expanduser()
    if path.is_file() and path.suffix.lower() == ".json":
        return "json", [path]
    src = open_source(source)
    return ("jsonl" if src.kind in ("jsonl", "instructions") else "text"), list(src.files)


def iter_records(
    source: str, *, errors: str = "strict", skip: Callable[[str, str], None] | None = None
) -> Iterator[tuple[str, Any]]:
    """(where, record) for every record of a JSONL file or glob, a .json list or
    `hf:NAME[:CONFIG]`; `where` is `FILE:LINE`, `FILE[i]` or `hf:NAME#i`. Lines that are not
    JSON go to `skip(where, reason)` (an error without it)."""
    kind, files = source_files(source)
    if kind == "hf":
        for i, record in enumerate(iter_hf_records(source[3:])):
            yield f"{source}#{i}", record
        return
    if kind == "json":
        path = files[0]
        try:
            data = json.loads(path.read_bytes().decode("utf-8", errors=errors))
        except UnicodeDecodeError as exc:
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
        close = difflib.get_close_matches(str(fmt), FORMATS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise TinyGPTError(f"--format {fmt!r} is not one of {', '.join(FORMATS)}{hint}")
    if fmt != "auto":
        return fmt
    kind, _ = source_files(source)
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
    source: str, fmt: str, *, errors: str = "strict", report: Report | None = stderr_note
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
