"""Opt-in text cleaning applied between reading documents and tokenizing them.

Owns: the `Cleaning` settings (one field per command-line flag, recorded in a dataset's
`meta.json`), the text transforms (Unicode NFC, markup stripping, whitespace collapsing), the
document filters (exact duplicates, minimum length) and language identification. Knows
nothing about where documents come from (`tinygpt.data.corpora`) or how they become tokens
(`tinygpt.data.prepare`).

Nothing is changed unless asked for: no lowercasing, no transliteration, so Turkish dotted
and dotless i (İ i I ı) and the other letters with diacritics reach the tokenizer as written.

Language identification uses py3langid, a re-packaging of langid.py (Lui & Baldwin, 2012)
whose naive-Bayes model over byte n-grams ships inside its wheel. Measured against
langdetect (a port of Google's language-detection library) on 3,000 sentences of known
language, Turkish from Atatürk's speeches and English from Shakespeare (mean 137 characters;
benchmarks/results/langid.md): py3langid takes 0.36 ms per sentence against 5.9 ms (16x
faster) and is right on 98.3 % against 97.1 %, with no random seed to fix. The trade-off: its
probabilities are less peaked on short sentences, so a 0.9 threshold keeps 80 % of sentences
(all of them correct) where langdetect keeps 94 % (98.8 % correct).

Short sentences of the wanted language often score below 0.9 with the language still ranked
first or second ("Merhaba, bugün hava nasıl?" is Turkish at 0.870, then Crimean Tatar and
Azerbaijani). So a unit is kept when the wanted language is its most likely one with
probability >= `lang_min_prob`, or when it ranks among its `lang_top` most likely languages
with probability >= `LANG_TOP_MIN_PROB`. Measured on every sentence of 20 to 80 characters
of the built-in corpora (benchmarks/results/langid.md), the second rule with `lang_top` 2
keeps 99.9 % of the Turkish ones and rejects 99.97 % of the English ones, where p >= 0.9
alone keeps 76 %. `lang_top` 0 leaves only the first rule.
"""

from __future__ import annotations

import hashlib
import html
import re
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any

from tinygpt.core.errors import TinyGPTError
from tinygpt.data.boilerplate import strip_boilerplate_pieces

LANG_UNITS = ("sentence", "document")
# Document-level language identification looks at this much text: enough for a confident
# answer, bounded so that one huge document costs no more than a page.
LANGUAGE_SAMPLE_CHARS = 4000
# The least probability of the wanted language when it ranks among the top `lang_top`.
LANG_TOP_MIN_PROB = 0.05


@dataclass(frozen=True)
class Cleaning:
    """Which cleaning steps to apply; the defaults change nothing.

    Steps run in this order on each piece of text: boilerplate (per document), NFC, markup stripping, whitespace
    collapsing, sentence-level language filtering; then, per document: empty, minimum
    length, language (document unit), duplicate removal (cheapest checks first).
    """

    nfc: bool = False
    strip_markup: bool = False
    collapse_whitespace: bool = False
    dedup: bool = False
    min_chars: int = 0
    lang: str | None = None
    lang_min_prob: float = 0.9
    lang_unit: str = "sentence"
    lang_top: int = 2
    strip_boilerplate: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.lang_top <= 10:
            raise TinyGPTError(f"--lang-top must be between 0 and 10, got {self.lang_top}")
        if self.min_chars < 0:
            raise TinyGPTError(f"--min-chars must be 0 or more, got {self.min_chars}")
        if not 0.0 <= self.lang_min_prob <= 1.0:
            raise TinyGPTError(f"--lang-min-prob must be between 0 and 1, got {self.lang_min_prob}")
        if self.lang_unit not in LANG_UNITS:
            raise TinyGPTError(
                f"--lang-unit must be one of {', '.join(LANG_UNITS)}, got {self.lang_unit!r}"
            )
        if self.lang is not None:
            supported = supported_languages()
            if self.lang not in supported:
                raise TinyGPTError(
                    f"unknown language code {self.lang!r} for --lang; use an ISO 639-1 code "
                    f"such as tr or en (supported: {' '.join(sorted(supported))})"
                )

    def to_dict(self) -> dict[str, Any]:
        """The settings, for meta.json and the cache key. Settings added later appear only
        where they act (`lang_top` with `lang`, `strip_boilerplate` when on), so that a
        dataset made without them keeps its key."""
        out = asdict(self)
        if self.lang is None:
            out.pop("lang_top")
        if not self.strip_boilerplate:
            out.pop("strip_boilerplate")
        return out


@dataclass
class CleaningStats:
    """What the filters did, for `meta.json` and for the user."""

    documents_in: int = 0
    documents_kept: int = 0
    dropped_empty: int = 0
    dropped_short: int = 0
    dropped_duplicate: int = 0
    dropped_language: int = 0
    sentences_dropped: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("extra")
        out.update(self.extra)
        return out


# --- text transforms ---------------------------------------------------------------------

_HTML_COMMENT = re.compile(r"<!--.*?-->", re.S)
# <ref>…</ref>, <script>, <style> carry no prose: drop them with their content.
_HTML_DROP = re.compile(r"<(ref|script|style)\b[^>]*?(?:/>|>.*?</\1\s*>)", re.S | re.I)
_HTML_TAG = re.compile(r"</?[A-Za-z][^<>]*>")
_WIKI_TEMPLATE = re.compile(r"\{\{[^{}]*\}\}")
_WIKI_TABLE = re.compile(r"^\{\|.*?^\|\}\s*$", re.S | re.M)
_WIKI_FILE = re.compile(r"\[\[(?:File|Image|Dosya|Resim|Category|Kategori):[^\[\]]*\]\]", re.I)
_WIKI_LINK = re.compile(r"\[\[(?:[^\[\]|]*\|)?([^\[\]]*)\]\]")
_EXT_LINK = re.compile(r"\[(?:https?|ftp)://[^\s\]]+(?:\s+([^\]]*))?\]")
_WIKI_EMPHASIS = re.compile(r"'{2,5}")
_WIKI_HEADING = re.compile(r"^(={1,6})\s*(.*?)\s*\1\s*$", re.M)


def strip_markup(text: str) -> str:
    """Remove HTML tags and common MediaWiki markup, keeping the readable text.

    >>> strip_markup("<p>Ankara is the <b>capital</b>.</p>")
    'Ankara is the capital.'
    >>> strip_markup("== History ==\\n'''Ankara''' is in [[Central Anatolia|central Anatolia]].{{cn}}")
    'History\\nAnkara is in central Anatolia.'
    """
    text = _HTML_COMMENT.sub("", text)
    text = _HTML_DROP.sub("", text)
    text = _HTML_TAG.sub("", text)
    # Templates nest ({{a|{{b}}}}): peel the innermost layer until none is left.
    while True:
        stripped = _WIKI_TEMPLATE.sub("", text)
        if stripped == text:
            break
        text = stripped
    text = _WIKI_TABLE.sub("", text)
    text = _WIKI_FILE.sub("", text)
    text = _WIKI_LINK.sub(r"\1", text)
    text = _EXT_LINK.sub(lambda m: m.group(1) or "", text)
    text = _WIKI_EMPHASIS.sub("", text)
    text = _WIKI_HEADING.sub(r"\2", text)
    # Entities last, so that an escaped "&lt;b&gt;" in prose stays visible as "<b>".
    return html.unescape(text)


_INLINE_SPACE = re.compile(r"[^\S\n]+")  # whitespace other than newlines
_MANY_NEWLINES = re.compile(r"\n{3,}")


def collapse_whitespace(text: str) -> str:
    """Runs of spaces and tabs become one space, lines lose trailing/leading blanks, and
    more than one empty line in a row becomes one; paragraph breaks survive.

    >>> collapse_whitespace("  a \\t b  \\r\\n\\n\\n\\nc ")
    'a b\\n\\nc'
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    lines = [_INLINE_SPACE.sub(" ", line).strip() for line in text.split("\n")]
    return _MANY_NEWLINES.sub("\n\n", "\n".join(lines)).strip()


# --- language identification -------------------------------------------------------------


@lru_cache(maxsize=1)
def _identifier() -> Any:
    try:
        from py3langid.langid import MODEL_DIR, MODEL_FILE, LanguageIdentifier
    except ImportError as exc:
        raise TinyGPTError(
            "the language filter needs py3langid: pip install 'tinygpt[lang]'"
        ) from exc
    return LanguageIdentifier.from_modelpath(MODEL_DIR / MODEL_FILE, norm_probs=True)


@lru_cache(maxsize=1)
def supported_languages() -> frozenset[str]:
    return frozenset(_identifier().nb_classes)


def language_matches(text: str, lang: str, min_prob: float, top: int = 0) -> bool:
    """Whether `text` is in `lang`: its most likely language with probability >= `min_prob`,
    or one of its `top` most likely with probability >= `LANG_TOP_MIN_PROB`.

    >>> language_matches("Merhaba, bugün hava nasıl?", "tr", 0.9)
    False
    >>> language_matches("Merhaba, bugün hava nasıl?", "tr", 0.9, top=2)
    True
    """
    ranking = _identifier().rank(text)
    found, prob = ranking[0]
    if found == lang and prob >= min_prob:
        return True
    return any(code == lang and p >= LANG_TOP_MIN_PROB for code, p in ranking[:top])


def detect_language(text: str) -> tuple[str, float]:
    """(ISO 639-1 code, probability) of the most likely language of `text`.

    >>> detect_language("Bu gece burada sizleri toplamaktan maksadım şudur.")[0]
    'tr'
    """
    lang, prob = _identifier().classify(text)
    return str(lang), float(prob)


# A sentence ends at . ! ? … (optionally followed by closing quotes or brackets) and
# whitespace, or at a line break. The separators are kept so that the text can be put
# back together exactly as it was around the sentences that stay.
_SENTENCE_SPLIT = re.compile(r"((?<=[.!?…])[\"'”’»)\]]*[^\S\n]+|\n+)")
_LETTER = re.compile(r"[^\W\d_]")


def split_sentences(text: str) -> list[str]:
    """Alternating sentence, separator, sentence, ... (always an odd number of items).

    >>> split_sentences("Hi there. Bye!\\nNext")
    ['Hi there.', ' ', 'Bye!', '\\n', 'Next']
    """
    return _SENTENCE_SPLIT.split(text)


def filter_sentences(text: str, lang: str, min_prob: float, top: int = 0) -> tuple[str, int]:
    """Keep the sentences in `lang` (see `language_matches`).

    Returns the kept text and the number of sentences dropped. Pieces without any letter
    (numbers, punctuation) carry no language evidence and are dropped too.
    """
    parts = split_sentences(text)
    kept: list[str] = []
    dropped = 0
    for i in range(0, len(parts), 2):
        sentence = parts[i]
        if not sentence.strip():
            continue
        if _LETTER.search(sentence) and language_matches(sentence, lang, min_prob, top):
            if kept:
                sep = parts[i - 1] if i > 0 else " "
                kept.append("\n" if "\n" in sep else " ")
            kept.append(sentence)
        else:
            dropped += 1
    return "".join(kept), dropped


# --- the per-document pipeline -----------------------------------------------------------


class Cleaner:
    """Applies a `Cleaning` to a stream of documents and remembers what it dropped.

    A document arrives as an iterator of text pieces (a large file is read in pieces so that
    memory does not grow with its size). `clean_piece` transforms one piece; `keep` decides,
    once the whole cleaned document has been seen, whether it stays. Duplicate detection keeps
    only a 16-byte hash per distinct document, never the text.
    """

    def __init__(self, cleaning: Cleaning) -> None:
        self.cleaning = cleaning
        self.stats = CleaningStats()
        self._seen: set[bytes] = set()

    def clean_piece(self, text: str) -> str:
        c = self.cleaning
        if c.nfc:
            text = unicodedata.normalize("NFC", text)
        if c.strip_markup:
            text = strip_markup(text)
        if c.collapse_whitespace:
            text = collapse_whitespace(text)
        if c.lang is not None and c.lang_unit == "sentence":
            text, dropped = filter_sentences(text, c.lang, c.lang_min_prob, c.lang_top)
            self.stats.sentences_dropped += dropped
        return text

    def clean_pieces(self, pieces: Iterable[str]) -> Iterator[str]:
        """Clean the consecutive pieces of one document.

        Pieces are cut at line starts. Steps that trim lines (whitespace collapsing, the
        sentence filter) would glue the last line of one piece to the first of the next, so
        the line break, or paragraph break, that stood between them is put back.
        """
        prev_raw = prev_text = ""
        if self.cleaning.strip_boilerplate:
            pieces = strip_boilerplate_pieces(pieces)
        for raw in pieces:
            text = self.clean_piece(raw)
            if not text:
                if raw.strip():
                    prev_raw = raw
                continue
            if prev_text and not prev_text.endswith("\n") and not text.startswith("\n"):
                trailing = prev_raw[len(prev_raw.rstrip()) :]
                breaks = trailing.replace("\r\n", "\n").replace("\r", "\n").count("\n")
                text = "\n" * min(breaks, 2) + text
            prev_raw, prev_text = raw, text
            yield text

    def keep(self, n_chars: int, digest: bytes, language_sample: str) -> bool:
        """Decide about one whole document from its cleaned length, hash and first text."""
        c = self.cleaning
        self.stats.documents_in += 1
        if n_chars == 0 or not language_sample.strip():
            self.stats.dropped_empty += 1
            return False
        if n_chars < c.min_chars:
            self.stats.dropped_short += 1
            return False
        if (
            c.lang is not None
            and c.lang_unit == "document"
            and not language_matches(language_sample, c.lang, c.lang_min_prob, c.lang_top)
        ):
            self.stats.dropped_language += 1
            return False
        if c.dedup:
            if digest in self._seen:
                self.stats.dropped_duplicate += 1
                return False
            self._seen.add(digest)
        self.stats.documents_kept += 1
        return True


def document_digest() -> Any:
    """A fresh hash object for `Cleaner.keep` (BLAKE2b, 16 bytes: collisions are not a worry
    at corpus sizes, and it is faster than SHA-256)."""
    return hashlib.blake2b(digest_size=16)


def iter_cleaned(documents: Iterable[str], cleaning: Cleaning) -> Iterator[str]:
    """Clean whole in-memory documents one by one, yielding those that are kept."""
    cleaner = Cleaner(cleaning)
    for doc in documents:
        text = "".join(cleaner.clean_pieces([doc]))
        digest = document_digest()
        digest.update(text.encode("utf-8"))
        if cleaner.keep(len(text), digest.digest(), text[:LANGUAGE_SAMPLE_CHARS]):
            yield text
