"""The interface every tokenizer offers, and what all of them share.

Owns: the `Tokenizer` base class (normalize, encode, decode, special tokens, save), the name
of the end-of-text token, the splitting of text around literal special-token strings, and
atomic writing of a `tokenizer.json`. Knows nothing about how a vocabulary is learned (see `char.py`
and `bpe.py`) nor about the layout of the JSON file beyond "a dict written as JSON" (see
`io.py`).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import regex

from tinygpt.errors import TinyGPTError
from tinygpt.tokenizer.normalize import Normalizer

EOT = "<|endoftext|>"
UNK = "<unk>"


class Tokenizer:
    """Maps text to a list of integer ids and back.

    Subclasses set `kind`, `special_tokens` and implement `_encode_ordinary`, `token_bytes`,
    `_piece_text`, `vocab_size` and `to_json_dict`. Special tokens (`<|endoftext|>`, chat
    markers) have ids of their own that ordinary text never produces: a literal
    `<|endoftext|>` in the text only becomes the special id when the caller asks for it with
    `allowed_special=True` (text from users or the web should not be able to forge document
    boundaries).

    A tokenizer may carry a `normalizer` (lowercasing, whitespace; see `normalize.py`):
    `encode` applies it to the text between special tokens, as Hugging Face does, so that
    every caller gets the same normalised text; `decode` gives the normalised text back.
    """

    kind: str = ""
    # Set by training when the vocabulary stopped short of the size asked for: why, in words.
    # Not saved with the tokenizer.
    shortfall: str | None = None

    def __init__(
        self, special_tokens: dict[str, int], normalizer: Normalizer | None = None
    ) -> None:
        self.normalizer = normalizer
        if EOT not in special_tokens:
            raise TinyGPTError(f"a tokenizer needs the end-of-text token {EOT!r}; add it")
        self.special_tokens: dict[str, int] = dict(special_tokens)
        self._special_by_id: dict[int, str] = {i: s for s, i in self.special_tokens.items()}
        # Longest first, so that a special token that is a prefix of another cannot win.
        names = sorted(self.special_tokens, key=len, reverse=True)
        self._special_re = regex.compile("|".join(regex.escape(s) for s in names))

    # --- what subclasses provide -------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        raise NotImplementedError

    def _encode_ordinary(self, text: str) -> list[int]:
        """Encode text that holds no special tokens (or whose special strings are plain)."""
        raise NotImplementedError

    def token_bytes(self, id: int) -> bytes:
        """The UTF-8 bytes token `id` stands for; special tokens stand for no bytes."""
        raise NotImplementedError

    def to_json_dict(self) -> dict[str, Any]:
        """The Hugging Face `tokenizer.json` content for this tokenizer."""
        raise NotImplementedError

    # --- shared behaviour ---------------------------------------------------------------
    @property
    def eot_id(self) -> int:
        return self.special_tokens[EOT]

    def is_special(self, id: int) -> bool:
        return id in self._special_by_id

    def normalize(self, text: str) -> str:
        """`text` as this tokenizer's normalizer leaves it (unchanged when it has none)."""
        return self.normalizer(text) if self.normalizer is not None else text

    def encode(self, text: str, *, allowed_special: bool = False) -> list[int]:
        """Token ids of `text`, normalised first.

        With `allowed_special=True`, literal special-token strings become their ids and the
        text between them is normalised and encoded on its own (as Hugging Face `tokenizers`
        does with added tokens); otherwise they are encoded like any other text.
        """
        norm = self.normalize
        if not allowed_special:
            return self._encode_ordinary(norm(text))
        ids: list[int] = []
        for part, special in self._split_special(text):
            if special:
                ids.append(self.special_tokens[part])
            elif part:
                ids.extend(self._encode_ordinary(norm(part)))
        return ids

    def encode_batch(
        self, texts: Iterable[str], *, allowed_special: bool = False
    ) -> list[list[int]]:
        return [self.encode(t, allowed_special=allowed_special) for t in texts]

    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids`; special tokens come back as their literal strings.

        Bytes that do not form valid UTF-8 on their own (a sequence cut inside a character)
        become U+FFFD, as in every byte-level tokenizer.
        """
        out: list[str] = []
        run = bytearray()
        for i in ids:
            i = int(i)
            special = self._special_by_id.get(i)
            if special is None:
                run += self.token_bytes(i)
                continue
            out.append(run.decode("utf-8", errors="replace"))
            run.clear()
            out.append(special)
        out.append(run.decode("utf-8", errors="replace"))
        return "".join(out)

    def piece(self, id: int) -> str:
        """A printable form of one token for tables: its text, or escaped bytes.

        Examples: `' the'`, `'\\n'`, `b'\\xc4'` (half of a two-byte character), `<|endoftext|>`.
        """
        special = self._special_by_id.get(int(id))
        if special is not None:
            return special
        raw = self.token_bytes(id)
        try:
            return repr(raw.decode("utf-8"))
        except UnicodeDecodeError:
            return repr(raw)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write a Hugging Face-compatible `tokenizer.json` (atomically) and return its path."""
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        write_json_atomic(path, self.to_json_dict())
        return path

    def check_id(self, id: int) -> None:
        if not 0 <= int(id) < self.vocab_size:
            raise TinyGPTError(
                f"token id {id} is out of range for this tokenizer "
                f"(valid ids are 0..{self.vocab_size - 1})"
            )

    def _split_special(self, text: str) -> Iterator[tuple[str, bool]]:
        """Yield (part, is_special) pieces of `text`, cut at literal special-token strings."""
        start = 0
        for m in self._special_re.finditer(text):
            yield text[start : m.start()], False
            yield m.group(), True
            start = m.end()
        yield text[start:], False

    def __repr__(self) -> str:
        return f"<{type(self).__name__} kind={self.kind!r} vocab_size={self.vocab_size}>"

    def _normalizer_json(self) -> dict[str, Any] | None:
        return self.normalizer.to_json() if self.normalizer is not None else None


def write_json_atomic(path: Path, obj: dict[str, Any]) -> None:
    """Write `obj` as JSON to `path` through a temporary file and a rename.

    A reader (or a run killed mid-write) never sees half a file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, ensure_ascii=False, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def added_token_entry(content: str, id: int) -> dict[str, Any]:
    """One `added_tokens` record of a `tokenizer.json`: a special token matched verbatim."""
    return {
        "id": id,
        "content": content,
        "single_word": False,
        "lstrip": False,
        "rstrip": False,
        "normalized": False,
        "special": True,
    }
