"""Reading any source as a stream of documents: built-in names, the user's files, Hugging
Face datasets.

Owns: resolving a source (`open_source`: a built-in corpus or instruction set by name, a
file, a folder, a glob, a .jsonl file or `hf:NAME[:CONFIG]`) without reading its text yet,
and reading it as documents (`Source.documents`, `iter_documents`), files larger than memory
in pieces cut at line starts (`read_text_pieces`, `cut_point`). Built-in names are fetched
by `tinygpt.data.corpora` and `tinygpt.data.instructions`; this module knows nothing about
how they are made, nor about cleaning (`tinygpt.data.cleaning`) or tokens
(`tinygpt.data.prepare`, `tinygpt.data.tokenizer`).
"""

from __future__ import annotations

import codecs
import glob
import logging
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tinygpt.core.errors import TinyGPTError
from tinygpt.core.files import decode_error, kind_of, read_jsonl
from tinygpt.data.corpora import CORPORA, INSTRUCTION_SETS, corpus_info, get_corpus
from tinygpt.data.instructions import get_instructions

TEXT_SUFFIXES = (".txt", ".md")

# Files are read in pieces of about this many characters; documents larger than this never
# sit in memory whole.
PIECE_CHARS = 1 << 20


def cut_point(text: str) -> int:
    """Where to cut `text` so that the head ends a line and the tail starts with a
    non-space: tokenizers that group runs of newlines then see the same pieces whether or
    not the text was cut. Returns 0 when there is no such place.

    >>> cut_point("a\\n\\nb\\nc")
    5
    """
    pos = len(text)
    while True:
        pos = text.rfind("\n", 0, pos)
        if pos < 0:
            return 0
        if pos + 1 < len(text) and not text[pos + 1].isspace():
            return pos + 1


def read_text_pieces(
    path: Path, errors: str = "strict", piece_chars: int = PIECE_CHARS
) -> Iterator[str]:
    """Yield the text of a file in pieces of about `piece_chars`, each cut at a line start
    (see `cut_point`), so that a file larger than memory can be streamed."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors=errors)
    carry = ""
    consumed = 0  # bytes handed to the decoder so far
    first = True
    with open(path, "rb") as f:
        while True:
            block = f.read(piece_chars)
            final = not block
            pending = decoder.getstate()[0]
            try:
                text = decoder.decode(block, final=final)
            except UnicodeDecodeError as exc:
                raise decode_error(path, consumed - len(pending) + exc.start, exc) from None
            consumed += len(block)
            if first and text.startswith("\ufeff"):
                text = text[1:]  # a byte-order mark is not part of the text
            first = False
            carry += text
            if final:
                break
            if len(carry) >= piece_chars:
                cut = cut_point(carry) or len(carry)
                yield carry[:cut]
                carry = carry[cut:]
    if carry:
        yield carry


@dataclass
class Document:
    """One document of a source: its text in memory, or a file read in pieces."""

    name: str
    text: str | None = None
    path: Path | None = None
    errors: str = "strict"

    def pieces(self, piece_chars: int = PIECE_CHARS) -> Iterator[str]:
        if self.text is not None:
            for start in range(0, len(self.text), piece_chars):
                yield self.text[start : start + piece_chars]
        elif self.path is not None:
            yield from read_text_pieces(self.path, self.errors, piece_chars)

    def read(self) -> str:
        return self.text if self.text is not None else "".join(self.pieces())


@dataclass
class Source:
    """A resolved input: what it is, the files behind it, and how to read its documents."""

    spec: str
    kind: str  # "corpus", "files", "jsonl", "hf" or "instructions" (a built-in set)
    files: list[Path]
    text_field: str = "text"
    errors: str = "strict"

    def fingerprint(self) -> list[dict[str, Any]]:
        """Cheap identity of the inputs (path, size, modification time) for cache keys."""
        out = []
        for path in self.files:
            st = path.stat()
            out.append(
                {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
            )
        if self.kind == "hf":
            out.append({"hf": self.spec, "text_field": self.text_field})
        return out

    def documents(self) -> Iterator[Document]:
        if self.kind == "instructions":
            raise TinyGPTError(
                f"{self.spec} is an instruction set (questions and answers), not text:"
                f" fine-tune on it with `tinygpt finetune BASE --corpus {self.spec}`, or"
                f" prepare it with --format messages --tokenizer BASE"
            )
        if self.kind == "hf":
            for i, text in enumerate(_iter_hf(self.spec[3:], self.text_field)):
                yield Document(name=f"{self.spec}#{i}", text=text)
            return
        for path in self.files:
            if self.kind in ("corpus", "jsonl"):
                field = "text" if self.kind == "corpus" else self.text_field
                yield from _iter_jsonl(path, field, self.errors)
            else:
                yield Document(name=str(path), path=path, errors=self.errors)


def _iter_jsonl(path: Path, field: str, errors: str) -> Iterator[Document]:
    for lineno, record in read_jsonl(path, errors=errors):
        if not isinstance(record, dict) or field not in record:
            fields = ", ".join(map(str, record)) if isinstance(record, dict) else "none"
            raise TinyGPTError(
                f"{path}:{lineno}: no {field!r} field (fields: {fields}); "
                "choose the text field with --text-field NAME"
            )
        text = record[field]
        if not isinstance(text, str):
            raise TinyGPTError(
                f"{path}:{lineno}: field {field!r} is {type(text).__name__}, not text; "
                "choose the text field with --text-field NAME"
            )
        yield Document(name=f"{path}:{lineno}", text=text)


def _iter_hf(spec: str, field: str) -> Iterator[str]:
    """Stream the `field` text of the train split of a Hugging Face dataset `NAME[:CONFIG]`."""
    for i, record in enumerate(iter_hf_records(spec)):
        if field not in record:
            raise TinyGPTError(
                f"hf:{spec} record {i} has no {field!r} field (fields: "
                f"{', '.join(map(str, record))}); choose one with --text-field NAME"
            )
        yield str(record[field])


def iter_hf_records(spec: str) -> Iterator[dict[str, Any]]:
    """Stream the records (dicts) of the train split of a Hugging Face dataset
    `NAME[:CONFIG]`; without the `datasets` package or a connection, one clear line."""
    name, _, config = spec.partition(":")
    if not name:
        raise TinyGPTError(
            "give a dataset after hf:, e.g. --input hf:wikimedia/wikipedia:20231101.tr"
        )
    try:
        import datasets  # an optional extra: pip install 'tinygpt[hf]'
    except ImportError:
        raise TinyGPTError(
            "--input hf:... needs the Hugging Face datasets package: pip install 'tinygpt[hf]'"
        ) from None
    if not Path(name).expanduser().exists():  # a dataset folder on disk needs no network
        _check_hub_reachable(spec)
    _quiet_hf_logs()
    try:
        stream = datasets.load_dataset(name, config or None, split="train", streaming=True)
        for record in stream:
            yield dict(record)
    except TinyGPTError:
        raise
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise TinyGPTError(
            f"could not stream Hugging Face dataset hf:{spec} ({type(exc).__name__}: {first}); "
            "check the name and the internet connection, or save the text locally and use "
            "--input PATH"
        ) from None


HUB_TIMEOUT_S = 10.0  # to reach the Hub before streaming; HF_HUB_ETAG_TIMEOUT overrides


def _check_hub_reachable(spec: str) -> None:
    """Fail in seconds, with one line, when the Hub cannot be reached: `datasets` would
    otherwise retry for about half a minute and print a line per retry. Skipped in offline
    mode (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE), where `datasets` reads its own cache."""
    if any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in _OFFLINE_VARS):
        return
    from huggingface_hub import constants

    timeout = float(os.environ.get("HF_HUB_ETAG_TIMEOUT", HUB_TIMEOUT_S))
    endpoint = os.environ.get("HF_ENDPOINT") or constants.ENDPOINT
    try:
        urllib.request.urlopen(endpoint, timeout=timeout).close()
    except urllib.error.HTTPError:
        return  # the server answered: reachable
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TinyGPTError(
            f"cannot stream hf:{spec}: the Hugging Face Hub ({endpoint}) is out of"
            f" reach ({reason}); check the internet connection, or save the text locally and"
            " use --input PATH"
        ) from None


_OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")


def _quiet_hf_logs() -> None:
    """`datasets` and `huggingface_hub` log every retry and progress step; errors reach the
    user as one line of ours instead."""
    for name in ("datasets", "huggingface_hub", "fsspec", "urllib3"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _looks_like_name(spec: str) -> bool:
    return os.sep not in spec and "/" not in spec and not Path(spec).suffix


def open_source(source: str, *, text_field: str = "text", errors: str = "strict") -> Source:
    """Resolve `source` (a built-in corpus name, a file, a folder, a glob, a .jsonl file or
    `hf:NAME[:CONFIG]`) without reading its text yet; built-in corpora are fetched."""
    if errors not in ("strict", "replace"):
        raise TinyGPTError(f"--errors must be strict or replace, got {errors!r}")
    if source.startswith("hf:"):
        return Source(source, "hf", [], text_field, errors)
    if source in CORPORA:
        return Source(source, "corpus", [get_corpus(source)], "text", errors)
    if source in INSTRUCTION_SETS:
        return Source(source, "instructions", [get_instructions(source)], text_field, errors)
    path = Path(source).expanduser()
    if path.is_dir():
        files = sorted(
            p
            for p in path.rglob("*")
            if p.is_file()
            and p.suffix.lower() in TEXT_SUFFIXES
            and not any(part.startswith(".") for part in p.relative_to(path).parts)
        )
        if not files:
            raise TinyGPTError(
                f"folder {source} holds no {' or '.join(TEXT_SUFFIXES)} files; "
                "point --input at a text file, a folder of them, a glob or a .jsonl file"
            )
        return Source(source, "files", files, text_field, errors)
    if path.is_file():
        kind = "jsonl" if path.suffix.lower() == ".jsonl" else "files"
        return Source(source, kind, [path], text_field, errors)
    if any(ch in source for ch in "*?["):
        files = sorted(Path(p) for p in glob.glob(os.path.expanduser(source), recursive=True))
        files = [p for p in files if p.is_file()]
        if not files:
            raise TinyGPTError(f"no files match {source!r}; check the pattern")
        if all(p.suffix.lower() == ".jsonl" for p in files):
            return Source(source, "jsonl", files, text_field, errors)
        return Source(source, "files", files, text_field, errors)
    if path.exists():  # a FIFO, a device, ...: not something to read text from
        raise TinyGPTError(f"input path {source} is {kind_of(path)}, not a file or folder")
    if _looks_like_name(source):
        corpus_info(source)  # raises with the closest built-in name
    raise TinyGPTError(f"input path {source} does not exist; check the path")


def iter_documents(
    source: str, *, text_field: str = "text", errors: str = "strict"
) -> Iterator[str]:
    """The documents of `source` as strings (see `open_source` for what `source` can be).

    A plain text file is one document; a folder or glob gives one per file; JSONL and
    Hugging Face datasets give one per record; built-in corpora one per play, speech or
    chapter.
    """
    for doc in open_source(source, text_field=text_field, errors=errors).documents():
        yield doc.read()
