"""The interface every tokenizer offers, and what all of them share.

Owns: the `Tokenizer` base class (encode, decode, special tokens, save), the name of the
end-of-text token, the splitting of text around literal special-token strings, and atomic
writing of a `tokenizer.json`. Knows nothing about how a vocabulary is learned (see `char.py`
and `bpe.py`) nor about the layout of the JSON file beyond "a dict written as JSON" (see
`io.py`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import regex

from tinygpt.errors import TinyGPTError
from tinygpt.files import atomic_write_json

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
    """

    kind: str = ""

    def __init__(self, special_tokens: dict[str, int]) -> None:
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

    def encode(self, text: str, *, allowed_special: bool = False) -> list[int]:
        """Token ids of `text`.

        With `allowed_special=True`, literal special-token strings become their ids and the
        text between them is encoded on its own (as Hugging Face `tokenizers` does with added
        tokens); otherwise they are encoded like any other text.
        """
        if not allowed_special:
            return self._encode_ordinary(text)
        ids: list[int] = []
        for part, special in self._split_special(text):
            if special:
                ids.append(self.special_tokens[part])
            elif part:
                ids.extend(self._encode_ordinary(part))
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
        atomic_write_json(path, self.to_json_dict(), indent=2)
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
