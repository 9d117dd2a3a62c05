"""The interface every tokenizer offers, and what all of them share.

Owns: the `Tokenizer` base class (normalize, encode, decode, special tokens and adding more of
them, save), the name of the end-of-text token, the splitting of text around literal
special-token strings, and atomic writing of a `tokenizer.json`. Knows nothing about how a
vocabulary is learned (see `char.py` and `bpe.py`) nor about the layout of the JSON file beyond "a dict written as JSON" (see
`io.py`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import regex

from tinygpt.core.errors import TinyGPTError
from tinygpt.core.files import atomic_write_json
from tinygpt.data.tokenizer.normalize import Normalizer

EOT = "<|endoftext|>"
UNK = "<unk>"


class Tokenizer:
    """Maps text to a list of integer ids and back.

    Subclasses set `kind`, `special_tokens` and implement `_encode_ordinary`, `token_bytes`,
    `vocab_size`, `to_json_dict` and `_append_special`. Special tokens (`<|endoftext|>`, chat
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
        atomic_write_json(path, self.to_json_dict(), indent=2)
        return path

    def with_special_tokens(self, tokens: Iterable[str]) -> Tokenizer:
        """This tokenizer with `tokens` as special tokens too: every existing id keeps its
        meaning and each missing token gets the next free id, in the order given.

        Tokens it already has keep their ids; when none is missing, the tokenizer itself is
        returned. A new special token is matched whole and never split (by our encoder with
        `allowed_special=True`, and by Hugging Face `tokenizers` reading the saved file, which
        lists it among the `added_tokens`). A string that is already one ordinary token is
        refused: the file's vocabulary could not hold both.
        """
        missing: list[str] = []
        for token in tokens:
            if not isinstance(token, str) or not token:
                raise TinyGPTError(f"a special token must be a non-empty string, got {token!r}")
            if token in self.special_tokens or token in missing:
                continue
            ordinary = self._ordinary_token_of(token)
            if ordinary is not None:
                raise TinyGPTError(
                    f"special token {token!r} is already the ordinary token {ordinary} of this "
                    "tokenizer; choose a string that is not one of its tokens"
                )
            missing.append(token)
        if not missing:
            return self
        return self._append_special(missing)

    def _append_special(self, tokens: list[str]) -> Tokenizer:
        """A copy with `tokens` (none of them known) as special ids vocab_size, vocab_size+1..."""
        raise NotImplementedError

    def _ordinary_token_of(self, text: str) -> int | None:
        """The id of the single ordinary token whose bytes are `text`, if there is one."""
        try:
            ids = self._encode_ordinary(text)
        except TinyGPTError:  # a character vocabulary without these characters
            return None
        if len(ids) == 1 and self.token_bytes(ids[0]) == text.encode("utf-8"):
            return ids[0]
        return None

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
