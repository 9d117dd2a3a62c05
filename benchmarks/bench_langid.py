"""Benchmark language identification for the `--lang` filter: py3langid vs langdetect.

Sentences of known language come from the built-in corpora: Turkish from `ataturk`, English
from `shakespeare` (fetched into the cache on first use). For each library: time per
sentence, accuracy, accuracy among sentences kept at probability >= 0.9 and how many are
kept, and agreement between the two.

    python benchmarks/bench_langid.py --per-language 1500
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

from common import machine_line
from tinygpt.data.cleaning import split_sentences
from tinygpt.data.sources import iter_documents

RESULTS = Path(__file__).parent / "results" / "langid.md"


def sentences(corpus: str, n: int, seed: int, min_chars: int) -> list[str]:
    found = []
    for doc in iter_documents(corpus):
        parts = split_sentences(doc.replace("\n", " "))
        found.extend(s.strip() for s in parts[::2] if len(s.strip()) >= min_chars)
    random.Random(seed).shuffle(found)
    return found[:n]


def run_py3langid(texts: list[str]) -> tuple[list[tuple[str, float]], float, float]:
    start = time.perf_counter()
    from py3langid.langid import MODEL_DIR, MODEL_FILE, LanguageIdentifier

    ident = LanguageIdentifier.from_modelpath(MODEL_DIR / MODEL_FILE, norm_probs=True)
    load = time.perf_counter() - start
    start = time.perf_counter()
    out = [tuple(ident.classify(t)) for t in texts]
    return [(str(a), float(b)) for a, b in out], load, time.perf_counter() - start


def run_langdetect(texts: list[str]) -> tuple[list[tuple[str, float]], float, float]:
    start = time.perf_counter()
    from langdetect import DetectorFactory, detect_langs
    from langdetect.lang_detect_exception import LangDetectException

    DetectorFactory.seed = 0  # langdetect samples n-grams at random
    detect_langs("warm up the profiles")
    load = time.perf_counter() - start
    start = time.perf_counter()
    out = []
    for t in texts:
        try:
            best = detect_langs(t)[0]
            out.append((best.lang, float(best.prob)))
        except LangDetectException:
            out.append(("", 0.0))
    return out, load, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-language", type=int, default=1500)
    parser.add_argument("--min-chars", type=int, default=20)
    parser.add_argument("--threshold", type=float, default=0.9)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--write", type=Path, default=RESULTS)
    args = parser.parse_args()

    data = [(s, "tr") for s in sentences("ataturk", args.per_language, args.seed, args.min_chars)]
    data += [
        (s, "en") for s in sentences("shakespeare", args.per_language, args.seed, args.min_chars)
    ]
    texts = [s for s, _ in data]
    truth = [lang for _, lang in data]
    mean_len = sum(map(len, texts)) / len(texts)

    results = {"py3langid": run_py3langid(texts), "langdetect": run_langdetect(texts)}
    lines = [
        "# language identification benchmark\n",
        f"- {machine_line()}",
        f"- {len(texts)} sentences of at least {args.min_chars} characters (mean {mean_len:.0f}): "
        f"{args.per_language} Turkish from `ataturk`, {args.per_language} English from `shakespeare`",
        "",
        f"| library | load (s) | ms / sentence | accuracy | kept at p >= {args.threshold} | "
        "accuracy of kept | accuracy tr | accuracy en |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, (preds, load, seconds) in results.items():
        correct = [p[0] == t for p, t in zip(preds, truth, strict=True)]
        kept = [p[1] >= args.threshold for p in preds]
        n_kept = sum(kept)
        kept_ok = sum(c for c, k in zip(correct, kept, strict=True) if k)
        by_lang = {
            lang: sum(c for c, t in zip(correct, truth, strict=True) if t == lang)
            / truth.count(lang)
            for lang in ("tr", "en")
        }
        lines.append(
            f"| {name} | {load:.2f} | {1000 * seconds / len(texts):.3f} | "
            f"{sum(correct) / len(texts):.3f} | {n_kept / len(texts):.3f} | "
            f"{kept_ok / max(n_kept, 1):.3f} | {by_lang['tr']:.3f} | {by_lang['en']:.3f} |"
        )
    a, b = results["py3langid"][0], results["langdetect"][0]
    agree = sum(x[0] == y[0] for x, y in zip(a, b, strict=True)) / len(texts)
    lines += ["", f"Agreement between the two on the top language: {agree:.3f}."]
    report = "\n".join(lines) + "\n"
    print(report)
    args.write.parent.mkdir(parents=True, exist_ok=True)
    args.write.write_text(report, encoding="utf-8")


if __name__ == "__main__":
    main()
