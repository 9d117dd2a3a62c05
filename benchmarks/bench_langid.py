"""Benchmark the rule of the `--lang` filter on short sentences: py3langid at several
thresholds, py3langid's ranking of the wanted language, langdetect, a rule on letters only
Turkish uses, and the filter as shipped (`tinygpt.data.cleaning.language_matches`).

Sentences of known language come from the built-in corpora (fetched into the cache on first
use): Turkish from `ataturk`, English from `nutuk-en` and `shakespeare`, every sentence of
20 to 80 characters. The filter must keep at least 99 % of the Turkish ones and reject at
least 95 % of the English ones with `--lang tr`. langdetect (5 to 6 ms a sentence) runs on a
random sample of each language.

    python benchmarks/bench_langid.py
"""

from __future__ import annotations

import argparse
import random
import re
import time
from collections.abc import Callable
from pathlib import Path

from common import machine_line
from tinygpt.data.cleaning import LANG_TOP_MIN_PROB, language_matches, split_sentences
from tinygpt.data.sources import iter_documents

RESULTS = Path(__file__).parent / "results" / "langid.md"
TURKISH_LETTERS = re.compile("[ıİşŞğĞ]")
KNOWN = ["Merhaba, bugün hava nasıl?"]

Ranking = list[tuple[str, float]]


def sentences(corpora: list[str], lo: int, hi: int) -> list[str]:
    found = []
    for corpus in corpora:
        for doc in iter_documents(corpus):
            found.extend(s.strip() for s in split_sentences(doc)[::2] if lo <= len(s.strip()) <= hi)
    return found


def py3langid_rules(lang: str) -> dict[str, Callable[[str, Ranking], bool]]:
    def prob(p: float) -> Callable[[str, Ranking], bool]:
        return lambda s, r: r[0][0] == lang and r[0][1] >= p

    def top(k: int, floor: float = 0.0) -> Callable[[str, Ranking], bool]:
        return lambda s, r: any(c == lang and p >= floor for c, p in r[:k])

    return {
        "py3langid p >= 0.9 (the old filter)": prob(0.9),
        "py3langid p >= 0.5": prob(0.5),
        "py3langid p >= 0.3": prob(0.3),
        "py3langid top 1, any p": top(1),
        "py3langid top 2": top(2),
        "py3langid top 3": top(3),
        f"py3langid top 2, p >= {LANG_TOP_MIN_PROB}": top(2, LANG_TOP_MIN_PROB),
        "letters ı İ ş Ş ğ Ğ": lambda s, r: bool(TURKISH_LETTERS.search(s)),
    }


def run_langdetect(texts: list[str], lang: str) -> tuple[list[bool], list[bool], float]:
    from langdetect import DetectorFactory, detect_langs
    from langdetect.lang_detect_exception import LangDetectException

    DetectorFactory.seed = 0  # langdetect samples n-grams at random
    p9, any_p = [], []
    start = time.perf_counter()
    for t in texts:
        try:
            best = detect_langs(t)[0]
            p9.append(best.lang == lang and best.prob >= 0.9)
            any_p.append(best.lang == lang)
        except LangDetectException:
            p9.append(False)
            any_p.append(False)
    return p9, any_p, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--min-chars", type=int, default=20)
    parser.add_argument("--max-chars", type=int, default=80)
    parser.add_argument("--langdetect-sample", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--write", type=Path, default=RESULTS)
    args = parser.parse_args()

    from py3langid.langid import MODEL_DIR, MODEL_FILE, LanguageIdentifier

    ident = LanguageIdentifier.from_modelpath(MODEL_DIR / MODEL_FILE, norm_probs=True)
    tr = sentences(["ataturk"], args.min_chars, args.max_chars)
    en = sentences(["nutuk-en", "shakespeare"], args.min_chars, args.max_chars)
    start = time.perf_counter()
    ranks = {"tr": [ident.rank(s) for s in tr], "en": [ident.rank(s) for s in en]}
    ms = 1000 * (time.perf_counter() - start) / (len(tr) + len(en))
    lines = [
        "# language identification of short sentences (`--lang tr`)\n",
        f"- {machine_line()}",
        f"- every sentence of {args.min_chars} to {args.max_chars} characters: {len(tr):,} "
        f"Turkish from `ataturk`, {len(en):,} English from `nutuk-en` and `shakespeare`",
        f"- py3langid: {ms:.3f} ms per sentence (ranking all its languages)",
        "- goal: keep >= 99 % of the Turkish sentences, reject >= 95 % of the English ones",
        "",
        "| rule | Turkish kept | English rejected |",
        "|---|---:|---:|",
    ]
    for name, rule in py3langid_rules("tr").items():
        kept = sum(rule(s, r) for s, r in zip(tr, ranks["tr"], strict=True)) / len(tr)
        wrong = sum(rule(s, r) for s, r in zip(en, ranks["en"], strict=True)) / len(en)
        lines.append(f"| {name} | {kept:.2%} | {1 - wrong:.2%} |")
    shipped = sum(language_matches(s, "tr", 0.9, 2) for s in tr) / len(tr)
    shipped_en = sum(language_matches(s, "tr", 0.9, 2) for s in en) / len(en)
    lines.append(
        f"| **the filter as shipped** (p >= 0.9, or top 2 with p >= {LANG_TOP_MIN_PROB}) | "
        f"**{shipped:.2%}** | **{1 - shipped_en:.2%}** |"
    )
    rng = random.Random(args.seed)
    n = args.langdetect_sample
    tr_s, en_s = rng.sample(tr, min(n, len(tr))), rng.sample(en, min(n, len(en)))
    tr9, tr_any, t1 = run_langdetect(tr_s, "tr")
    en9, en_any, t2 = run_langdetect(en_s, "tr")
    per = 1000 * (t1 + t2) / (len(tr_s) + len(en_s))
    for label, a, b in (("p >= 0.9", tr9, en9), ("top 1, any p", tr_any, en_any)):
        lines.append(
            f"| langdetect {label} (sample of {len(tr_s):,} + {len(en_s):,}; {per:.1f} ms each) | "
            f"{sum(a) / len(a):.2%} | {1 - sum(b) / len(b):.2%} |"
        )
    lines += [
        "",
        "Known answers (py3langid's three most likely languages; the filter's verdict):",
        "",
    ]
    for s in KNOWN:
        top3 = ", ".join(f"{c} {p:.3f}" for c, p in ident.rank(s)[:3])
        verdict = "kept" if language_matches(s, "tr", 0.9, 2) else "dropped"
        lines.append(f"- {s!r}: {top3}; {verdict}")
    report = "\n".join(lines) + "\n"
    print(report)
    args.write.parent.mkdir(parents=True, exist_ok=True)
    args.write.write_text(report, encoding="utf-8")


if __name__ == "__main__":
    main()
