"""Opt-in cleaning: transforms, filters, language identification."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinygpt.core.errors import TinyGPTError
from tinygpt.data.cleaning import (
    Cleaner,
    Cleaning,
    collapse_whitespace,
    detect_language,
    document_digest,
    filter_sentences,
    iter_cleaned,
    split_sentences,
    strip_markup,
)

TURKISH = "Iğdır'da ılık bir İstanbul akşamı: şişe, Şule, ağaç, Çınar, göz, Ödül, üzüm, Ülkü."


def test_turkish_survives_every_transform():
    cleaner = Cleaner(Cleaning(nfc=True, strip_markup=True, collapse_whitespace=True))
    assert cleaner.clean_piece(TURKISH) == TURKISH
    assert list(iter_cleaned([TURKISH], Cleaning(nfc=True, dedup=True))) == [TURKISH]


def test_nfc_composes_combining_marks():
    decomposed = "I\u0307stanbul s\u0327 g\u0306"  # I + dot above, s + cedilla, g + breve
    assert Cleaner(Cleaning(nfc=True)).clean_piece(decomposed) == "İstanbul ş ğ"
    assert Cleaner(Cleaning()).clean_piece(decomposed) == decomposed


def test_strip_markup_html_and_wiki():
    html = '<p>Ankara is the <b>capital</b>.<ref name="a">Source</ref><!-- note --></p>&amp; more'
    assert strip_markup(html) == "Ankara is the capital.& more"
    wiki = (
        "== Tarih ==\n'''Ankara''', [[İç Anadolu Bölgesi|İç Anadolu]]'da{{kaynak|{{tarih}}}} "
        "bir [[şehir]]dir. [https://example.org Bağlantı][[Dosya:x.jpg|thumb|x]]"
    )
    assert strip_markup(wiki) == "Tarih\nAnkara, İç Anadolu'da bir şehirdir. Bağlantı"


def test_collapse_whitespace_keeps_paragraphs():
    assert collapse_whitespace("  a \t b  \r\n\n\n\n c\u00a0 d \n") == "a b\n\nc d"


def test_language_detection_and_sentence_filter():
    assert detect_language(TURKISH)[0] == "tr"
    mixed = (
        "Bu gece burada sizleri toplamaktan maksadım şudur. "
        "This sentence is plainly written in the English language. "
        "Memleketin yaşadığı vahim anları size söylemeye lüzum görmüyorum.\n1919."
    )
    kept, dropped = filter_sentences(mixed, "tr", 0.9)
    assert kept == (
        "Bu gece burada sizleri toplamaktan maksadım şudur. "
        "Memleketin yaşadığı vahim anları size söylemeye lüzum görmüyorum."
    )
    assert dropped == 2


def test_split_sentences_keeps_separators():
    assert split_sentences("Hi there. Bye!\nNext") == ["Hi there.", " ", "Bye!", "\n", "Next"]


def keep(cleaner: Cleaner, text: str) -> bool:
    digest = document_digest()
    digest.update(text.encode())
    return cleaner.keep(len(text), digest.digest(), text)


def test_document_filters_and_stats():
    cleaner = Cleaner(Cleaning(dedup=True, min_chars=10, lang="tr", lang_unit="document"))
    assert keep(cleaner, TURKISH)
    assert not keep(cleaner, TURKISH)  # duplicate
    assert not keep(cleaner, "Kısa.")  # short
    assert not keep(cleaner, "This document is clearly written in English, not Turkish.")
    assert not keep(cleaner, "")
    stats = cleaner.stats.to_dict()
    assert stats == {
        "documents_in": 5,
        "documents_kept": 1,
        "dropped_empty": 1,
        "dropped_short": 1,
        "dropped_duplicate": 1,
        "dropped_language": 1,
        "sentences_dropped": 0,
    }


def test_dedup_off_keeps_duplicates():
    assert list(iter_cleaned(["a b", "a b"], Cleaning())) == ["a b", "a b"]
    assert list(iter_cleaned(["a b", "a b", "c"], Cleaning(dedup=True))) == ["a b", "c"]


def test_clean_pieces_restores_breaks_between_pieces():
    cleaner = Cleaner(Cleaning(collapse_whitespace=True))
    pieces = ["one  line\n", "two\n\n", "three \n", "four"]
    assert "".join(cleaner.clean_pieces(pieces)) == "one line\ntwo\n\nthree\nfour"
    plain = Cleaner(Cleaning(nfc=True))
    assert "".join(plain.clean_pieces(pieces)) == "".join(pieces)


@settings(deadline=None, max_examples=60)
@given(st.lists(st.text(alphabet="ab ıİ\n\t", max_size=30), min_size=1, max_size=6))
def test_collapse_in_pieces_matches_whole(parts):
    """Collapsing whitespace piece by piece (cut at line starts) equals doing it at once."""
    text = "".join(p + "\n" for p in parts) + "x"
    # Cut where the streaming reader would: after a newline followed by a non-space.
    pieces, start = [], 0
    for i in range(1, len(text)):
        if text[i - 1] == "\n" and not text[i].isspace():
            pieces.append(text[start:i])
            start = i
    pieces.append(text[start:])
    cleaner = Cleaner(Cleaning(collapse_whitespace=True))
    assert "".join(cleaner.clean_pieces(pieces)) == collapse_whitespace(text)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"min_chars": -1}, "--min-chars must be 0 or more"),
        ({"lang_min_prob": 1.5}, "--lang-min-prob must be between 0 and 1"),
        ({"lang_unit": "word"}, "--lang-unit must be one of sentence, document"),
        ({"lang": "turkish"}, "unknown language code 'turkish'.*such as tr"),
    ],
)
def test_bad_settings(kwargs, message):
    with pytest.raises(TinyGPTError, match=message):
        Cleaning(**kwargs)
