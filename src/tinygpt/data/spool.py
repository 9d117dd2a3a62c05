"""The first pass of preparation: a source's documents read, cleaned and spooled to disk.

Owns: reading every document of a source once, cleaning and filtering it
(`tinygpt.data.cleaning`), appending the kept text to a spool file, and keeping only what
later steps need in memory — per-document offsets, the set of characters (char tokenizer)
or a bounded sample of text (BPE training) — and reading a spooled document back in pieces
(`read_spool`). Knows nothing about tokenizers, the split or the dataset folder
(`tinygpt.data.prepare`).
"""

from __future__ import annotations

import codecs
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from tinygpt.core.files import sha256_file
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


def spool(
    src: Source,
    cleaning: Cleaning,
    spool_path: Path,
    *,
    want_chars: bool,
    sample_chars: int,
    progress: bool,
) -> Spooled:
    """Pass 1: read, clean and filter every document; append kept text to the spool."""
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
    return Spooled(docs, chars, sample, cleaner.stats.to_dict(), hashes)


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
