"""Input files that are not text: told apart from text while they are read, and reported.

Owns: watching the pieces of one file as pass 1 reads them (`TextCheck`: NUL bytes, control
characters, U+FFFD, whether there is any text at all), the verdict on a file (`verdict`,
`sniff_binary` for a file that fails to decode), and the one line that names every bad file
of a source (`bad_files_error`). Knows nothing about cleaning (`tinygpt.data.cleaning`) or
the spool (`tinygpt.data.spool`).

A file is bad when it holds NUL bytes, when more than `MAX_CONTROL_SHARE` of its characters
are control characters other than whitespace (tab, line breaks, form feed), when more than
`MAX_REPLACED_SHARE` of them are U+FFFD after decoding with `--errors replace`, when its
bytes are not UTF-8 (with `--errors strict`), or when it is empty or only whitespace. Text
files have none of these; a binary file named .txt has several.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tinygpt.core.errors import TinyGPTError

MAX_CONTROL_SHARE = 0.01
MAX_REPLACED_SHARE = 0.25
SNIFF_BYTES = 8192

_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f]")

# Reasons, as counted in meta.json and the summary.
REASONS = ("binary", "not_utf8", "empty", "whitespace")


@dataclass
class BadFile:
    path: str
    reason: str  # one of REASONS
    detail: str  # the words that follow the path in messages

    def line(self) -> str:
        return f"{self.path} {self.detail}"


class TextCheck:
    """Counts, over the pieces of one file, what tells text from something else."""

    def __init__(self) -> None:
        self.chars = 0
        self.controls = 0
        self.nul = False
        self.replaced = 0
        self.blank = True

    def watch(self, pieces: Iterable[str]) -> Iterator[str]:
        for piece in pieces:
            self.chars += len(piece)
            self.controls += len(_CONTROL.findall(piece))
            self.nul = self.nul or "\x00" in piece
            self.replaced += piece.count("\ufffd")
            if self.blank and piece.strip():
                self.blank = False
            yield piece

    def verdict(self, path: str) -> BadFile | None:
        """Why the file just read is not text, or None when it is."""
        if self.nul:
            return BadFile(path, "binary", "looks binary (NUL bytes)")
        if self.controls > MAX_CONTROL_SHARE * self.chars:
            share = self.controls / self.chars
            return BadFile(path, "binary", f"looks binary ({share:.0%} control characters)")
        if self.replaced > MAX_REPLACED_SHARE * self.chars:
            share = self.replaced / self.chars
            return BadFile(
                path, "binary", f"looks binary ({share:.0%} of it is not UTF-8, read as U+FFFD)"
            )
        if self.chars == 0:
            return BadFile(path, "empty", "holds no text (empty)")
        if self.blank:
            return BadFile(path, "whitespace", "holds no text (only whitespace)")
        return None


def sniff_binary(path: Path) -> bool:
    """Whether the start of the file holds a NUL byte (no text file does)."""
    try:
        with open(path, "rb") as f:
            return b"\x00" in f.read(SNIFF_BYTES)
    except OSError:
        return False


def undecodable(path: Path, error: TinyGPTError) -> BadFile:
    """A file that failed to decode as UTF-8: binary when it holds NUL bytes, else not UTF-8
    (the decoder's message, which names the byte and its offset)."""
    if sniff_binary(path):
        return BadFile(str(path), "binary", "looks binary (NUL bytes)")
    message = str(error)
    detail = message[len(str(path)) :].strip() if message.startswith(str(path)) else message
    return BadFile(str(path), "not_utf8", detail.split(";")[0])


def count_reasons(bad: list[BadFile]) -> dict[str, int]:
    return {r: n for r in REASONS if (n := sum(b.reason == r for b in bad))}


SKIP_HINT = "or leave them out with `tinygpt prepare --skip-bad-files`"


def bad_files_error(bad: list[BadFile], n_files: int) -> TinyGPTError:
    """One line naming every bad file, with what to do about them."""
    hints = ["convert or remove them"]
    if any(b.reason == "not_utf8" for b in bad):
        hints.append("pass --errors replace to read bytes that are not UTF-8 as U+FFFD")
    if len(bad) == 1:
        return TinyGPTError(
            f"{bad[0].line()}; {', '.join(hints).replace('them', 'it')}, "
            f"{SKIP_HINT.replace('them', 'it')}"
        )
    listing = "; ".join(b.line() for b in bad)
    return TinyGPTError(
        f"{len(bad)} of {n_files} input files are not text: {listing}; {', '.join(hints)}, "
        f"{SKIP_HINT}"
    )
