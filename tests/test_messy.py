"""Messy corpora: files that are not text are named (all in one run) or skipped and counted,
Gutenberg framing is stripped on request, `--unk` works where it is named, and the language
filter keeps short sentences of the wanted language."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest

from tinygpt.cli import main
from tinygpt.core.errors import TinyGPTError
from tinygpt.data.boilerplate import strip_boilerplate
from tinygpt.data.cleaning import Cleaning, filter_sentences, language_matches
from tinygpt.data.tokenizer import load_tokenizer, train_tokenizer

MESSY = Path(__file__).parent / "fixtures" / "messy"
BAD = ("binary.txt", "latin1.txt", "empty.txt", "blank.txt")


def run(argv: list[str], capsys, code: int = 0) -> str:
    assert main(argv) == code
    err = capsys.readouterr().err
    if code:
        assert err.startswith("tinygpt: error: ") and err.count("\n") == 1, err
    return err


def copy(names, tmp_path: Path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    for name in names:
        shutil.copy(MESSY / name, folder / name)
    return folder


def prepare(src: Path, out: Path, *extra: str) -> list[str]:
    return ["prepare", "--input", str(src), "--workers", "1", "--out", str(out), *extra]


def text_of(ds: Path) -> str:
    import numpy as np

    tok = load_tokenizer(ds / "tokenizer.json")
    meta = json.loads((ds / "meta.json").read_text())
    ids = [np.fromfile(ds / f"{s}.bin", dtype=meta["dtype"]) for s in ("train", "val")]
    return "".join(tok.decode([int(i) for i in part if i != tok.eot_id]) for part in ids)


def test_every_bad_file_is_named_in_one_run(tmp_path, capsys):
    err = run(prepare(MESSY, tmp_path / "ds"), capsys, 2)
    assert "4 of 8 input files are not text" in err
    assert re.search(r"binary.txt looks binary \(NUL bytes\)", err)
    assert re.search(r"latin1.txt is not valid UTF-8 \(byte 0xe9 at offset 6\)", err)
    assert re.search(r"empty.txt holds no text \(empty\)", err)
    assert re.search(r"blank.txt holds no text \(only whitespace\)", err)
    assert "--errors replace" in err and "`tinygpt prepare --skip-bad-files`" in err
    assert not (tmp_path / "ds").exists()


def test_skip_bad_files_counts_them(tmp_path, capsys):
    ds = tmp_path / "ds"
    err = run(prepare(MESSY, ds, "--skip-bad-files"), capsys)
    assert "dropped: 1 binary files, 1 files not UTF-8, 1 empty files, 1 files of only" in err
    meta = json.loads((ds / "meta.json").read_text())
    assert meta["dropped"] == {
        "files_binary": 1, "files_not_utf8": 1, "files_empty": 1, "files_whitespace": 1
    }  # fmt: skip
    assert sorted(Path(f["path"]).name for f in meta["skipped_files"]) == sorted(BAD)
    text = text_of(ds)
    assert "\ufeff" not in text and "\ufffd" not in text and "\x00" not in text
    assert text.count("Bu gece burada") == 1 and "Istanbul is a city" in text


def test_binary_is_refused_under_errors_replace(tmp_path, capsys):
    folder = copy(["bom.txt", "crlf.txt", "binary.txt"], tmp_path)
    (folder / "noise.txt").write_bytes(bytes(range(0x80, 0x100)) * 20)  # no NUL, not UTF-8
    (folder / "controls.txt").write_bytes(b"ab\x01\x02\x03cd\x1b[0m" * 50)  # valid UTF-8
    err = run(prepare(folder, tmp_path / "ds", "--errors", "replace"), capsys, 2)
    assert "3 of 5 input files are not text" in err
    assert "binary.txt looks binary (NUL bytes)" in err
    assert re.search(r"noise.txt looks binary \(\d+% of it is not UTF-8, read as U\+FFFD\)", err)
    assert re.search(r"controls.txt looks binary \(\d+% control characters\)", err)
    ds = tmp_path / "ds"
    run(prepare(folder, ds, "--errors", "replace", "--skip-bad-files"), capsys)
    assert json.loads((ds / "meta.json").read_text())["dropped"] == {"files_binary": 3}
    chars = load_tokenizer(ds / "tokenizer.json").chars
    assert "\ufffd" not in chars and "\x00" not in chars and "\x1b" not in chars


def test_one_bad_file_and_latin1_under_replace(tmp_path, capsys):
    folder = copy(["latin1.txt", "crlf.txt"], tmp_path)
    err = run(prepare(folder, tmp_path / "ds"), capsys, 2)
    assert "latin1.txt is not valid UTF-8 (byte 0xe9 at offset 6); convert or remove it" in err
    assert "leave it out with `tinygpt prepare --skip-bad-files`" in err
    # A few stray bytes are what --errors replace is for: the file stays.
    run(prepare(folder, tmp_path / "ds", "--errors", "replace"), capsys)


def test_only_bad_files_left_out(tmp_path, capsys):
    folder = copy(["empty.txt", "blank.txt"], tmp_path)
    err = run(prepare(folder, tmp_path / "ds", "--skip-bad-files"), capsys, 2)
    assert "holds no text: all its files were left out as not text" in err


def test_long_line_crlf_and_bom(tmp_path, capsys):
    folder = copy(["bom.txt", "crlf.txt"], tmp_path)
    line = "kelime " * 14_286  # a line of 100,002 characters
    (folder / "long.txt").write_text(line + "\n", encoding="utf-8")
    ds = tmp_path / "ds"
    run(prepare(folder, ds), capsys)
    text = text_of(ds)
    assert line in text and "\r\n" in text and "\ufeff" not in text
    assert json.loads((ds / "meta.json").read_text())["dropped"] == {}


def test_strip_boilerplate(tmp_path, capsys):
    folder = copy(["gutenberg.txt", "gutenberg-old.txt", "bom.txt"], tmp_path)
    plain, stripped = tmp_path / "plain", tmp_path / "stripped"
    run(prepare(folder, plain), capsys)
    run(prepare(folder, stripped, "--strip-boilerplate"), capsys)
    assert "PROJECT GUTENBERG" in text_of(plain)
    text = text_of(stripped)
    assert "Once upon a time" in text and "In the old days" in text and "Bu gece" in text
    for gone in ("Project Gutenberg", "PROJECT GUTENBERG", "LICENSE", "SMALL PRINT", "Small Print"):
        assert gone not in text, gone
    meta = json.loads((stripped / "meta.json").read_text())
    assert meta["cleaning"]["strip_boilerplate"] is True
    assert "strip_boilerplate" not in json.loads((plain / "meta.json").read_text())["cleaning"]
    assert meta["key"] != json.loads((plain / "meta.json").read_text())["key"]


def test_strip_boilerplate_known_answers():
    old = (MESSY / "gutenberg-old.txt").read_text(encoding="utf-8")
    assert strip_boilerplate(old).strip() == (
        "AN OLD TALE\n\nIn the old days, the tale was told by the fire."
    )
    crlf = "Head\r\n*** START OF THIS PROJECT GUTENBERG EBOOK X ***\r\nBody.\r\n" \
        "*** END OF THIS PROJECT GUTENBERG EBOOK X ***\r\nLicence\r\n"  # fmt: skip
    assert strip_boilerplate(crlf) == "Body.\r\n"
    assert strip_boilerplate("No framing here.\nAt all.") == "No framing here.\nAt all."


def test_unk_on_prepare(tmp_path, capsys):
    folder = copy(["crlf.txt"], tmp_path)
    plain = tmp_path / "plain"
    run(prepare(folder, plain), capsys)
    with pytest.raises(TinyGPTError, match=r"`tinygpt prepare --unk`") as exc:
        load_tokenizer(plain / "tokenizer.json").encode("ğ")
    assert "`tinygpt tokenizer train --unk`" in str(exc.value)
    with_unk = tmp_path / "unk"
    run(prepare(folder, with_unk, "--unk"), capsys)
    tok = load_tokenizer(with_unk / "tokenizer.json")
    assert tok.encode("ğ") == [tok.unk_id]
    assert json.loads((with_unk / "meta.json").read_text())["tokenizer"]["unk"] is True
    err = run(prepare(folder, tmp_path / "b", "--unk", "--tokenizer", "bpe"), capsys, 2)
    assert "--unk applies to --tokenizer char" in err


def test_clean_input_is_unchanged(tmp_path, capsys):
    """A dataset of clean text with default flags is what it was before these checks
    (digests from the code before them)."""
    text = "".join(
        f"Satır {i}: İstanbul'da ılık bir akşam; şişe, ağaç, göz.\r\nLine {i} of plain text.\n"
        for i in range(200)
    )
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.txt").write_text(text, encoding="utf-8")
    (folder / "b.txt").write_bytes(b"\xef\xbb\xbf" + text[:3000].encode())
    expected = {
        "char": "806631d5729a42ce4e75d9db04ec5cd2ba90e59cd595532c5b4512665c791ee3",
        "bpe": "48e378ca18028305ae55a7fca5dd838166f350e31f8db312e2e6bbca11cb842a",
    }
    for name, extra in (("char", []), ("bpe", ["--tokenizer", "bpe", "--vocab-size", "300"])):
        err = run(prepare(folder, tmp_path / name, *extra), capsys)
        assert "dropped" not in err
        digest = hashlib.sha256()
        for f in ("train.bin", "val.bin", "tokenizer.json"):
            digest.update((tmp_path / name / f).read_bytes())
        assert digest.hexdigest() == expected[name]
    assert set(Cleaning().to_dict()) == {
        "nfc", "strip_markup", "collapse_whitespace", "dedup", "min_chars", "lang",
        "lang_min_prob", "lang_unit",
    }  # fmt: skip


# --- the language filter -------------------------------------------------------------------

TURKISH_SHORT = [
    "Merhaba, bugün hava nasıl?",
    "Tarihi yarımada, şehrin en eski yapılarını barındırır.",
]
ENGLISH_SHORT = [
    "The weather is lovely today, is it not?",
    "This sentence is plainly written in the English language.",
]


def test_language_filter_known_answers():
    pytest.importorskip("py3langid")
    for sentence in TURKISH_SHORT:
        assert language_matches(sentence, "tr", 0.9, top=2), sentence
    assert not language_matches("Merhaba, bugün hava nasıl?", "tr", 0.9, top=0)  # p = 0.870
    for sentence in ENGLISH_SHORT:
        assert not language_matches(sentence, "tr", 0.9, top=2), sentence
    kept, dropped = filter_sentences(" ".join(TURKISH_SHORT + ENGLISH_SHORT), "tr", 0.9, 2)
    assert kept == " ".join(TURKISH_SHORT) and dropped == 2


def test_language_filter_through_prepare(tmp_path, capsys):
    pytest.importorskip("py3langid")
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "mixed.txt").write_text("\n".join(TURKISH_SHORT + ENGLISH_SHORT) * 3 + "\n")
    ds = tmp_path / "ds"
    err = run(prepare(folder, ds, "--lang", "tr"), capsys)
    assert "dropped: 6 sentences in another language" in err
    text = text_of(ds)
    assert "Merhaba, bugün hava nasıl?" in text and "weather" not in text
    meta = json.loads((ds / "meta.json").read_text())
    assert meta["cleaning"]["lang_top"] == 2 and meta["dropped"] == {"sentences_language": 6}
    with pytest.raises(TinyGPTError, match="--lang-top must be between 0 and 10"):
        Cleaning(lang="tr", lang_top=11)


def test_refusals_name_flags_that_exist(capsys):
    with pytest.raises(SystemExit):
        main(["prepare", "--help"])
    help_text = capsys.readouterr().out
    for flag in ("--unk", "--skip-bad-files", "--strip-boilerplate", "--lang-top"):
        assert flag in help_text
    tok = train_tokenizer("char", ["ab"])
    with pytest.raises(TinyGPTError, match="tinygpt prepare --unk"):
        tok.encode("c")
