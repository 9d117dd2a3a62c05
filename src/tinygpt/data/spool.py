"""The first pass of preparation: a source's documents read, cleaned and spooled to disk.

Owns: reading every document of a source once, cleaning and filtering it
(`tinygpt.data.cleaning`), telling files that are not text apart (`tinygpt.data.badfiles`:
every bad file of a source is named in one error at the end of the pass, or left out and
counted), appending the kept text to a spool file, and keeping only what
later steps need in memory — per-document offsets, the set of characters (char tokenizer)
or a bounded sample of text (BPE training) — and reading a spooled document back in pieces
(`read_spool`). Knows nothing about tokenizers, the split or the dataset folder
(`tinygpt.data.prepare`).
"""

from __future__ import annotations

import codecs
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from tqdm import tqdm

from tinygpt.core.errors import TinyGPTError
from tinygpt.core.files import sha256_file
from tinygpt.data.badfiles import BadFile, TextCheck, bad_files_error, count_reasons, undecodable
from tinygpt.data.cleaning import LANGUAGE_SAMPLE_CHARS, Cleaner, Cleaning, document_digest
from tinygpt.data.sources import Source, cut_point


@dataclass
class Spooled:
    """What pass 1 kept: where each document lies in the spool, and what the tokenizer is
    trained on (the set of characters, or a bounded sample of text)."""

    docs: list[tuple[int, int, int]]  # (start byte, end byte, characters) per kept document
    chars: set[str] | None
    sample: list[str]
    stats: dict[str, Any]
    input_hashes: list[dict[str, Any]]
    bad_files: list[BadFile] = field(default_factory=list)  # left out (--skip-bad-files)

    def dropped(self) -> dict[str, int]:
        """What was left out and why, counts per reason (only those that happened): files
        that are not text, then documents and sentences the cleaning dropped."""
        out = {f"files_{k}": n for k, n in count_reasons(self.bad_files).items()}
        for key in ("empty", "short", "duplicate", "language"):
            if self.stats.get(f"dropped_{key}"):
                out[f"documents_{key}"] = self.stats[f"dropped_{key}"]
        if self.stats.get("sentences_dropped"):
            out["sentences_language"] = self.stats["sentences_dropped"]
        return out

    def empty_error(self, source: str) -> TinyGPTError:
        """Why nothing of `source` was kept, in one line."""
        stats = self.stats
        if self.bad_files and not stats["documents_in"]:
            return TinyGPTError(f"{source} holds no text: all its files were left out as not text")
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


def spool(
    src: Source,
    cleaning: Cleaning,
    spool_path: Path,
    *,
    want_chars: bool,
    sample_chars: int,
    progress: bool,
    skip_bad_files: bool = False,
) -> Spooled:
    """Pass 1: read, clean and filter every document; append kept text to the spool.
    Files that are not text are named together at the end of the pass (`TinyGPTError`), or
    left out with `skip_bad_files`."""
    cleaner = Cleaner(cleaning)
    docs: list[tuple[int, int, int]] = []
    chars: set[str] | None = set() if want_chars else None
    sample: list[str] = []
    bad: list[BadFile] = []
    budget = sample_chars
    bar = tqdm(desc="reading", unit=" docs", file=sys.stderr, disable=not progress or None)
    with open(spool_path, "wb") as out:
        for doc in src.documents():
            start = out.tell()
            check = TextCheck() if doc.path is not None else None
            pieces = check.watch(doc.pieces()) if check is not None else doc.pieces()
            try:
                read = _spool_document(cleaner.clean_pieces(pieces), out, chars, budget)
            except TinyGPTError as exc:
                if doc.path is None or not str(exc).startswith(str(doc.path)):
                    raise
                bad.append(undecodable(doc.path, exc))  # bytes that are not UTF-8
                read = None
            bar.update(1)
            verdict = check.verdict(doc.name) if check is not None and read else None
            if verdict is not None:
                bad.append(verdict)
            if read is not None and verdict is None and cleaner.keep(*read.decision):
                docs.append((start, out.tell(), read.n_chars))
                if chars is not None:
                    chars |= read.chars
                if read.sample:
                    sample.append("".join(read.sample))
                    budget = read.budget
            else:
                out.seek(start)
                out.truncate()
    bar.close()
    if bad and not skip_bad_files:
        raise bad_files_error(bad, len(src.files))
    hashes = [{"path": str(p), "sha256": sha256_file(p)} for p in src.files]
    stats = cleaner.stats.to_dict()
    return Spooled(docs, chars, sample, stats, hashes, bad)


@dataclass
class _Read:
    """One document as pass 1 saw it, before it is kept or dropped."""

    n_chars: int
    digest: bytes
    head: str  # the first characters, for document-level language id
    chars: set[str]
    sample: list[str]
    budget: int

    @property
    def decision(self) -> tuple[int, bytes, str]:
        return self.n_chars, self.digest, self.head


def _spool_document(
    cleaned: Iterator[str], out: BinaryIO, chars: set[str] | None, budget: int
) -> _Read:
    """Append the cleaned pieces of one document to the spool, noting what pass 1 keeps."""
    digest = document_digest()
    n_chars = 0
    head: list[str] = []
    head_len = 0
    doc_chars: set[str] = set()
    doc_sample: list[str] = []
    for text in cleaned:
        data = text.encode("utf-8")
        out.write(data)
        digest.update(data)
        n_chars += len(text)
        if head_len < LANGUAGE_SAMPLE_CHARS:
            head.append(text[: LANGUAGE_SAMPLE_CHARS - head_len])
            head_len += len(head[-1])
        if chars is not None:
            doc_chars.update(text)
        if budget > 0:
            doc_sample.append(text[:budget])
            budget -= len(doc_sample[-1])
    return _Read(n_chars, digest.digest(), "".join(head), doc_chars, doc_sample, budget)


def read_spool(spool_path: Path, start: int, end: int, piece_chars: int) -> Iterator[str]:
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
