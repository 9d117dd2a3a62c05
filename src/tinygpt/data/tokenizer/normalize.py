"""Text normalisation that a tokenizer applies before it cuts text: lowercasing, whitespace.

Owns: the `Normalizer` (an ordered list of steps), building one from the `prepare` options
(`lowercase="default"|"tr"`, `whitespace=True`), and its translation to and from the
`normalizer` section of a Hugging Face `tokenizer.json`. Knows nothing about vocabularies;
`base.Tokenizer.encode` calls it on every stretch of text between special tokens, which is
where Hugging Face `tokenizers` calls its normalizer too, so prompts given to `sample`,
`chat` or `serve`, and the exported tokenizer, see the same text as training did.

The steps, each written as Hugging Face writes it and computed here exactly as its Rust code
computes it:

- `Lowercase`: every character mapped on its own by Unicode's full lowercase mapping
  (Rust's `char::to_lowercase`). Python's `str.lower` agrees except for one contextual rule,
  the final sigma (`"ΟΔΟΣ".lower()` ends in `ς`); here `Σ` always becomes `σ`, as there.
  `İ` (U+0130) becomes `i` followed by U+0307 COMBINING DOT ABOVE, and `I` becomes `i`:
  right for English, wrong for Turkish.
- Turkish (`lowercase="tr"`): `Replace("İ", "i")` and `Replace("I", "ı")` before
  `Lowercase`, so that `İSTANBUL IĞDIR` becomes `istanbul ığdır`.
- Whitespace (`whitespace=True`): `Replace` of the regex `HORIZONTAL_SPACE` by one ASCII
  space. A run of one or more of: tab, vertical tab, form feed, space, and the Unicode
  space separators U+00A0, U+1680, U+2000-U+200A, U+202F, U+205F, U+3000 becomes a single
  " ". Line breaks (`\\n`, `\\r`, U+0085, U+2028, U+2029) are kept as they are, so lines and
  blank lines survive; spaces before a line break shrink to one space but are not removed.
  Whitespace runs first, then lowercasing.
- `NFC`, `NFD`, `NFKC`, `NFKD` (read from files made elsewhere; Python's `unicodedata`).

Replace steps with a regex are read back only for the pattern written here: Python's
`regex` and Hugging Face's Oniguruma agree on it, but not on every pattern.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import Any, Literal, cast

import regex

from tinygpt.core.errors import TinyGPTError

LOWERCASE = ("default", "tr")

# The characters are written out, not as \s or \h, so that both regex engines read the same
# set; the class holds no line break.
HORIZONTAL_SPACE = "[\t\x0b\x0c \u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]+"

_TURKISH = (("İ", "i"), ("I", "ı"))
_KNOWN_REGEXES = {HORIZONTAL_SPACE: regex.compile(HORIZONTAL_SPACE)}
_UNICODE_FORMS = ("NFC", "NFD", "NFKC", "NFKD")
UnicodeForm = Literal["NFC", "NFD", "NFKC", "NFKD"]


def lowercase(text: str) -> str:
    """Lowercase one character at a time, as Hugging Face's `Lowercase` does.

    >>> lowercase("ΟΔΟΣ İ")
    'οδοσ i̇'
    """
    if "Σ" not in text:
        return text.lower()  # no context rule can fire: same as per character, faster
    return "".join(c.lower() for c in text)


@dataclass(frozen=True)
class Step:
    """One normalisation step: `kind` is Lowercase, Replace or a Unicode form."""

    kind: str
    pattern: str = ""
    content: str = ""
    is_regex: bool = False

    def apply(self, text: str) -> str:
        if self.kind == "Lowercase":
            return lowercase(text)
        if self.kind == "Replace":
            if self.is_regex:
                return _KNOWN_REGEXES[self.pattern].sub(self.content, text)
            return text.replace(self.pattern, self.content)
        # _read_steps makes a Step of no other kind.
        return unicodedata.normalize(cast(UnicodeForm, self.kind), text)

    def to_json(self) -> dict[str, Any]:
        if self.kind == "Replace":
            key = "Regex" if self.is_regex else "String"
            return {"type": "Replace", "pattern": {key: self.pattern}, "content": self.content}
        return {"type": self.kind}


@dataclass(frozen=True)
class Normalizer:
    """The steps a tokenizer applies, in order, to text before splitting it."""

    steps: tuple[Step, ...]

    @classmethod
    def build(cls, *, lowercase: str | None = None, whitespace: bool = False) -> Normalizer | None:
        """The normaliser for the `prepare` options, or None when neither is asked for.

        >>> Normalizer.build(lowercase="tr")("İSTANBUL IĞDIR")
        'istanbul ığdır'
        """
        check_lowercase(lowercase)
        steps: list[Step] = []
        if whitespace:
            steps.append(Step("Replace", HORIZONTAL_SPACE, " ", is_regex=True))
        if lowercase == "tr":
            steps += [Step("Replace", a, b) for a, b in _TURKISH]
        if lowercase is not None:
            steps.append(Step("Lowercase"))
        return cls(tuple(steps)) if steps else None

    def __call__(self, text: str) -> str:
        for step in self.steps:
            text = step.apply(text)
        return text

    def to_json(self) -> dict[str, Any]:
        return {"type": "Sequence", "normalizers": [s.to_json() for s in self.steps]}

    def describe(self) -> dict[str, Any]:
        """The `prepare` options this normaliser stands for (for meta.json), if it is one
        of ours; otherwise its steps."""
        for lower in (None, *LOWERCASE):
            for ws in (False, True):
                if Normalizer.build(lowercase=lower, whitespace=ws) == self:
                    return {"lowercase": lower, "normalize_whitespace": ws}
        return {"steps": [s.to_json() for s in self.steps]}

    @classmethod
    def from_json(cls, data: Any, *, where: str = "tokenizer.json") -> Normalizer | None:
        """Read the `normalizer` section of a `tokenizer.json` (None when there is none)."""
        if data is None:
            return None
        steps: list[Step] = []
        _read_steps(data, steps, where)
        return cls(tuple(steps)) if steps else None


def _read_steps(data: Any, out: list[Step], where: str) -> None:
    kind = data.get("type") if isinstance(data, dict) else None
    if kind == "Sequence":
        for sub in data.get("normalizers") or []:
            _read_steps(sub, out, where)
    elif kind == "Lowercase" or kind in _UNICODE_FORMS:
        out.append(Step(kind))
    elif kind == "Replace":
        pattern = data.get("pattern") or {}
        content = data.get("content", "")
        if "String" in pattern:
            out.append(Step("Replace", pattern["String"], content))
        elif pattern.get("Regex") in _KNOWN_REGEXES:
            out.append(Step("Replace", pattern["Regex"], content, is_regex=True))
        else:
            raise TinyGPTError(
                f"{where}: normalizer Replace with pattern {pattern} is not supported; "
                "tinygpt reads plain-string replacements and its own whitespace pattern"
            )
    else:
        raise TinyGPTError(
            f"{where}: normalizer {kind!r} is not supported; tinygpt reads Lowercase, "
            f"Replace, {', '.join(_UNICODE_FORMS)} and Sequences of them"
        )


def check_lowercase(language: str | None) -> None:
    """Refuse a lowercasing language we do not know."""
    if language is not None and language not in LOWERCASE:
        raise TinyGPTError(
            f"unknown --lowercase language {language!r}; choose one of: {', '.join(LOWERCASE)} "
            "(tr maps İ to i and I to ı; default is Unicode's rule)"
        )
