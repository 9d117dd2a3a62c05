"""Deterministic English and Turkish text for tokenizer tests (no files, no network)."""

from __future__ import annotations

import random


def _words(text: str) -> list[str]:
    return text.split()


EN_WORDS = _words(
    "the of and to in is was he that it for on with as his they at be this from have or by "
    "one had not but what all were when we there can an your which their said if do will each "
    "about how up out them then she many some so these would other into has more her two like "
    "him see time could no make than first been its who now people my made over did down only "
    "way find use may water long little very after words called just where most know king "
    "queen lord night heart love death blood crown sword father mother brother daughter"
)
EN_CONTRACTIONS = ["don't", "it's", "I'll", "we've", "you're", "he'd", "I'm", "can't"]
TR_ROOTS = _words(
    "ev göz kitap okul yol su gün çocuk kadın şehir ağaç dağ deniz köy iş söz yüz kız "
    "öğretmen çiçek güneş ışık kapı masa kalem bahçe yağmur rüzgâr ülke millet"
)
TR_SUFFIXES = [
    "",
    "ler",
    "lar",
    "de",
    "da",
    "den",
    "dan",
    "e",
    "a",
    "i",
    "ı",
    "in",
    "ın",
    "imiz",
    "ımız",
    "ci",
    "li",
    "lı",
    "siz",
    "sız",
    "lik",
    "lık",
    "lerde",
    "larda",
    "ini",
    "ünü",
]
TR_NAMES = ["İstanbul", "İzmir", "Ankara", "Çanakkale", "Şişli", "Ömer", "Ünye", "Iğdır"]


def sentence(rng: random.Random) -> str:
    words: list[str] = []
    for _ in range(rng.randint(4, 12)):
        r = rng.random()
        if r < 0.45:
            words.append(rng.choice(EN_WORDS))
        elif r < 0.85:
            words.append(rng.choice(TR_ROOTS) + rng.choice(TR_SUFFIXES))
        elif r < 0.92:
            words.append(rng.choice(EN_CONTRACTIONS))
        elif r < 0.97:
            words.append(rng.choice(TR_NAMES) + rng.choice(["", "'da", "'ya", "'nın"]))
        else:
            words.append(str(rng.randint(0, 20000)))
    words[0] = words[0].capitalize()
    if rng.random() < 0.3:
        words[rng.randrange(len(words))] += ","
    return " ".join(words) + rng.choice([".", ".", ".", "!", "?", ";", ":"])


def corpus(n_bytes: int, seed: int = 0) -> list[str]:
    """Documents (paragraphs of sentences, mixed line endings) totalling about `n_bytes`."""
    rng = random.Random(seed)
    docs: list[str] = []
    total = 0
    while total < n_bytes:
        lines = [sentence(rng) for _ in range(rng.randint(1, 8))]
        doc = rng.choice(["\n", "\r\n", "\n\n", "  \n"]).join(lines) + "\n"
        docs.append(doc)
        total += len(doc.encode("utf-8"))
    return docs
