"""Character-level tokenizer: one id per Unicode code point.

Owns: learning a character vocabulary and encoding/decoding with it. Knows nothing about
corpora (it is handed texts) nor about how the JSON file is read (see `io.py`).

The vocabulary follows nanoGPT's convention: the sorted set of every character seen in the
training text, so ids 0..n-1 are the characters in code-point order (for Tiny Shakespeare,
0 is '\\n' and 1 is ' '). After them come the special tokens: `<|endoftext|>` (id n), then,
when trained with `unk=True`, `<unk>` (id n+1), which stands for any character the training
text did not contain, then any further special tokens (chat markers added for fine-tuning,
`Tokenizer.with_special_tokens`) in the order they were added. Without `<unk>`, encoding an
unseen character is an error that names the character and where it is.

A "character" is a code point, not a grapheme: an emoji with a skin tone or a ZWJ sequence is
several tokens, as is 'e' followed by a combining accent.

The saved `tokenizer.json` is a Hugging Face WordLevel model whose pre-tokenizer splits the
text into single code points (`Split` on the regex `[\\s\\S]`) and whose decoder (`Fuse`)
joins the pieces without spaces, so Hugging Face `tokenizers` gives the same ids.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from tinygpt.core.errors import TinyGPTError
from tinygpt.data.tokenizer.base import EOT, UNK, Tokenizer, added_token_entry
from tinygpt.data.tokenizer.normalize import Normalizer

# One code point per piece; `.` would miss line breaks.
CHAR_SPLIT_PATTERN = r"[\s\S]"


class CharTokenizer(Tokenizer):
    """One id per character of a fixed alphabet, plus `<|endoftext|>` (and maybe `<unk>`),
    then the extra special tokens `special`."""

    kind = "char"

    def __init__(
        self,
        chars: Sequence[str],
        *,
        unk: bool = False,
        special: Sequence[str] = (),
        normalizer: Normalizer | None = None,
    ) -> None:
        chars = list(chars)
        for c in chars:
            if len(c) != 1:
                raise TinyGPTError(
                    f"a character vocabulary holds single characters, got {c!r}; "
                    "is this file a character tokenizer?"
                )
        if len(set(chars)) != len(chars):
            raise TinyGPTError("the character vocabulary lists a character twice; rebuild it")
        self.chars: list[str] = chars
        self.stoi: dict[str, int] = {c: i for i, c in enumerate(chars)}
        specials = {EOT: len(chars)}
        if unk:
            specials[UNK] = len(chars) + 1
        self.extra_special: list[str] = []
        for token in special:
            if token == UNK:
                raise TinyGPTError(f"{UNK} is not an extra special token; build with unk=True")
            if not token or token in specials or token in self.stoi:
                raise TinyGPTError(
                    f"special token {token!r} is empty, listed twice or one of the characters"
                )
            specials[token] = len(chars) + len(specials)
            self.extra_special.append(token)
        self.unk_id: int | None = specials.get(UNK)
        super().__init__(specials, normalizer)

    @classmethod
    def train(
        cls, texts: Iterable[str], *, unk: bool = False, normalizer: Normalizer | None = None
    ) -> CharTokenizer:
        """The characters of `texts` after `normalizer` (which the tokenizer keeps)."""
        seen: set[str] = set()
        for text in texts:
            seen.update(normalizer(text) if normalizer is not None else text)
        if not seen:
            raise TinyGPTError(
                "the training text is empty; give a corpus or file that holds some text"
            )
        return cls(sorted(seen), unk=unk, normalizer=normalizer)

    @property
    def vocab_size(self) -> int:
        return len(self.chars) + len(self.special_tokens)

    def _append_special(self, tokens: list[str]) -> CharTokenizer:
        return CharTokenizer(
            self.chars,
            unk=self.unk_id is not None,
            special=[*self.extra_special, *tokens],
            normalizer=self.normalizer,
        )

    def _encode_ordinary(self, text: str) -> list[int]:
        stoi = self.stoi
        try:
            return [stoi[c] for c in text]
        except KeyError:
            pass
        ids: list[int] = []
        for pos, c in enumerate(text):
            i = stoi.get(c)
            if i is None:
                if self.unk_id is None:
                    raise TinyGPTError(
                        f"character {c!r} (U+{ord(c):04X}) at position {pos} is not in this "
                        "character vocabulary; build the vocabulary with `tinygpt prepare --unk` "
                        "or `tinygpt tokenizer train --unk` to map unseen characters to <unk>, "
                        "or from text that contains it"
                    )
                i = self.unk_id
            ids.append(i)
        return ids

    def token_bytes(self, id: int) -> bytes:
        id = int(id)
        if 0 <= id < len(self.chars):
            return self.chars[id].encode("utf-8")
        self.check_id(id)
        return b""

    def to_json_dict(self) -> dict[str, Any]:
        vocab = {c: i for i, c in enumerate(self.chars)}
        vocab.update(self.special_tokens)
        return {
            "version": "1.0",
            "truncation": None,
            "padding": None,
            "added_tokens": [added_token_entry(s, i) for s, i in self.special_tokens.items()],
            "normalizer": self._normalizer_json(),
            "pre_tokenizer": {
                "type": "Split",
                "pattern": {"Regex": CHAR_SPLIT_PATTERN},
                "behavior": "Isolated",
                "invert": False,
            },
            "post_processor": None,
            "decoder": {"type": "Fuse"},
            "model": {
                "type": "WordLevel",
                "vocab": vocab,
                # Hugging Face needs a name here even when the vocabulary has no such token;
                # then an unseen character is an error there too, as it is here.
                "unk_token": UNK,
            },
        }
