"""Dataset preparation: split, encoding, meta, reuse, and every bad input."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from tinygpt.cli import main
from tinygpt.core.errors import TinyGPTError
from tinygpt.data import corpora, sources
from tinygpt.data import prepare as data
from tinygpt.data.cleaning import Cleaning
from tinygpt.data.corpora import cache_dir
from tinygpt.data.prepare import open_dataset, prepare, prepare_dataset
from tinygpt.data.tokenizer import file_hash, train_tokenizer

TEXT = "".join(
    f"SPEAKER {i}:\nIşık ılık İstanbul; şişe ğ ç ö ü, line {i} of the play.\n\n" for i in range(300)
)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def write_jsonl(path: Path, texts: list[str], field: str = "text") -> Path:
    return write(path, "".join(json.dumps({field: t}, ensure_ascii=False) + "\n" for t in texts))


def segments(ids: np.ndarray, eot: int) -> list[list[int]]:
    """Split ids at end-of-text tokens; every document must end with one."""
    assert len(ids) and ids[-1] == eot
    out, cur = [], []
    for i in ids.tolist():
        if i == eot:
            out.append(cur)
            cur = []
        else:
            cur.append(i)
    return out


def fast(**kwargs):
    return {"workers": 1, "progress": False, **kwargs}


def leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


def test_single_text_tail_split_like_nanogpt(tmp_path):
    src = write(tmp_path / "input.txt", TEXT)
    out = prepare(str(src), tmp_path / "ds", **fast())
    ds = open_dataset(out)
    tok = ds.load_tokenizer()
    cut = int(len(TEXT) * 0.9)
    assert tok.decode(segments(ds.train, tok.eot_id)[0]) == TEXT[:cut]
    assert tok.decode(segments(ds.val, tok.eot_id)[0]) == TEXT[cut:]
    meta = ds.meta
    assert meta["split"]["method"] == "tail"
    assert meta["splits"]["train"] == {
        "tokens": cut + 1,
        "bytes": len(TEXT[:cut].encode()),
        "documents": 1,
    }
    assert meta["splits"]["val"]["tokens"] == len(TEXT) - cut + 1
    assert ds.train.dtype == np.uint16 and meta["dtype"] == "uint16"
    assert meta["tokenizer_kind"] == "char" and meta["vocab_size"] == tok.vocab_size


def test_documents_split_by_seed_with_eot_after_each(tmp_path):
    docs = [f"Belge {i}: ığüşöç İŞĞÜÖÇ {'x' * (i % 7)}" for i in range(40)]
    src = write_jsonl(tmp_path / "docs.jsonl", docs)
    a = open_dataset(prepare(str(src), tmp_path / "a", **fast(seed=1)))
    tok = a.load_tokenizer()
    train = [tok.decode(s) for s in segments(a.train, tok.eot_id)]
    val = [tok.decode(s) for s in segments(a.val, tok.eot_id)]
    assert sorted(train + val) == sorted(docs)
    assert [d for d in docs if d in val] == val  # order is kept within a split
    assert a.meta["splits"]["train"]["documents"] == len(train)
    assert a.meta["splits"]["val"]["documents"] == len(val) >= 1
    assert a.meta["split"] == {"method": "documents", "val_fraction": 0.1, "seed": 1}
    again = open_dataset(prepare(str(src), tmp_path / "a2", **fast(seed=1)))
    assert np.array_equal(again.val, a.val)
    other = open_dataset(prepare(str(src), tmp_path / "b", **fast(seed=2)))
    assert not np.array_equal(other.val, a.val)


def test_two_documents_give_one_val_document(tmp_path):
    src = write_jsonl(tmp_path / "two.jsonl", ["first document", "second document"])
    meta = open_dataset(prepare(str(src), tmp_path / "ds", **fast())).meta
    assert meta["splits"]["train"]["documents"] == meta["splits"]["val"]["documents"] == 1


def test_big_vocabulary_uses_uint32(tmp_path):
    chars = [chr(c) for c in range(0x100, 0x100 + 70_000) if not 0xD800 <= c <= 0xDFFF]
    text = "".join(chars)
    src = write(tmp_path / "wide.txt", text)
    ds = open_dataset(prepare(str(src), tmp_path / "ds", **fast()))
    assert ds.meta["dtype"] == "uint32" and ds.train.dtype == np.uint32
    assert ds.meta["vocab_size"] > 65535 and int(ds.train.max()) > 65535
    assert ds.load_tokenizer().decode(ds.val[:-1].tolist()) == text[int(len(text) * 0.9) :]


def test_meta_records_everything(tmp_path):
    src = write(tmp_path / "input.txt", TEXT)
    out = prepare(
        str(src),
        tmp_path / "ds",
        **fast(
            cleaning=Cleaning(nfc=True, collapse_whitespace=True),
            block_size=8,
            command="tinygpt prepare x",
        ),
    )
    meta = json.loads((out / "meta.json").read_text("utf-8"))
    assert meta["tokenizer_hash"] == file_hash(out / "tokenizer.json")
    assert meta["source"] == str(src) and meta["source_kind"] == "files"
    assert meta["cleaning"]["nfc"] and meta["cleaning"]["collapse_whitespace"]
    assert meta["cleaning"]["stats"]["documents_kept"] == 1
    assert meta["input_hashes"][0]["sha256"] == corpora.sha256_file(src)
    assert meta["inputs"][0]["size"] == src.stat().st_size
    assert meta["command"] == "tinygpt prepare x"
    assert meta["version"] and meta["block_size"] == 8 and meta["eot_id"] >= 0
    assert sorted(p.name for p in out.iterdir()) == [
        "meta.json",
        "tokenizer.json",
        "train.bin",
        "val.bin",
    ]


def test_reuse_and_invalidation(tmp_path):
    src = write(tmp_path / "input.txt", TEXT)
    out = tmp_path / "ds"
    first = prepare_dataset(str(src), out, **fast())
    assert not first.reused
    stamp = (out / "train.bin").stat().st_mtime_ns
    second = prepare_dataset(str(src), out, **fast(workers=2))  # workers do not change the result
    assert second.reused and (out / "train.bin").stat().st_mtime_ns == stamp
    changed_flag = prepare_dataset(str(src), out, **fast(val_fraction=0.2))
    assert not changed_flag.reused and changed_flag.meta["split"]["val_fraction"] == 0.2
    write(src, TEXT + "more\n")
    os.utime(src, ns=(stamp + 10**9, stamp + 10**9))
    changed_input = prepare_dataset(str(src), out, **fast(val_fraction=0.2))
    assert not changed_input.reused
    assert changed_input.meta["characters"] == len(TEXT) + 5
    assert leftovers(tmp_path) == []


def test_workers_give_identical_files(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "TASK_CHARS", 500)  # many small tasks, so that order matters
    docs = [TEXT[i : i + 997] for i in range(0, len(TEXT), 997)]
    src = write_jsonl(tmp_path / "docs.jsonl", docs)
    tok = train_tokenizer("bpe", [TEXT], vocab_size=300)
    tok.save(tmp_path / "tok" / "tokenizer.json")
    one = prepare(
        str(src), tmp_path / "one", tokenizer=str(tmp_path / "tok" / "tokenizer.json"), **fast()
    )
    two = prepare(str(src), tmp_path / "two", tokenizer=str(tmp_path / "tok"), **fast(workers=2))
    for name in ("train.bin", "val.bin", "tokenizer.json"):
        assert (one / name).read_bytes() == (two / name).read_bytes()
    ds = open_dataset(two)
    assert ds.meta["tokenizer_kind"] == "bpe" and ds.meta["vocab_size"] == tok.vocab_size
    assert [tok.decode(s) for s in segments(ds.train, tok.eot_id)] == [
        d for d in docs if d in {tok.decode(s) for s in segments(ds.train, tok.eot_id)}
    ]


def test_single_large_text_streams_in_pieces(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "TASK_CHARS", 300)
    monkeypatch.setattr(sources, "PIECE_CHARS", 256)
    src = write(tmp_path / "input.txt", TEXT)
    ds = open_dataset(prepare(str(src), tmp_path / "ds", **fast(workers=2)))
    tok = ds.load_tokenizer()
    cut = int(len(TEXT) * 0.9)
    assert tok.decode(segments(ds.train, tok.eot_id)[0]) == TEXT[:cut]
    assert tok.decode(segments(ds.val, tok.eot_id)[0]) == TEXT[cut:]


def test_bpe_training_and_cleaning_flags_via_cli(tmp_path, capsys):
    docs = ["Aynı metin, aynı metin.", "Aynı metin, aynı metin.", "kısa", "Başka bir metin burada."]
    src = write_jsonl(tmp_path / "docs.jsonl", docs * 3, field="body")
    out = tmp_path / "ds"
    argv = ["prepare", "--input", str(src), "--text-field", "body", "--tokenizer", "bpe",
            "--vocab-size", "280", "--dedup", "--min-chars", "5", "--workers", "1", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    assert capsys.readouterr().out.strip() == str(out)
    meta = open_dataset(out).meta
    stats = meta["cleaning"]["stats"]
    assert meta["cleaning"]["dedup"] and meta["cleaning"]["min_chars"] == 5
    assert (
        stats["documents_kept"] == 2
        and stats["dropped_duplicate"] == 7
        and stats["dropped_short"] == 3
    )
    assert meta["tokenizer_kind"] == "bpe" and meta["vocab_size"] == 280
    assert main(argv) == 0
    assert "reused" in capsys.readouterr().err


def test_builtin_corpus_through_prepare(tmp_path, monkeypatch):
    cached = write_jsonl(tmp_path / "cache" / "ataturk.jsonl", ["Ey Türk gençliği!", "İstiklal."])
    monkeypatch.setattr(sources, "get_corpus", lambda name, force=False: cached)
    assert (
        main(["prepare", "--corpus", "ataturk", "--workers", "1", "--out", str(tmp_path / "ds")])
        == 0
    )
    ds = open_dataset(tmp_path / "ds")
    assert ds.meta["source"] == "ataturk" and ds.meta["source_kind"] == "corpus"
    tok = ds.load_tokenizer()
    texts = [tok.decode(s) for s in segments(ds.train, tok.eot_id) + segments(ds.val, tok.eot_id)]
    assert sorted(texts) == sorted(["Ey Türk gençliği!", "İstiklal."])


def test_a_cached_dataset_is_reused_across_context_sizes(tmp_path):
    src = write(tmp_path / "input.txt", TEXT)
    a = prepare_dataset(str(src), None, block_size=16, progress=False, workers=1).path
    assert a.parent == cache_dir() / "datasets"
    stamp = (a / "train.bin").stat().st_mtime_ns
    assert prepare_dataset(str(src), None, block_size=16, progress=False, workers=1).path == a
    assert (a / "train.bin").stat().st_mtime_ns == stamp
    # The context length only gates a size check: another one reuses the same tokens ...
    assert prepare_dataset(str(src), None, block_size=32, progress=False, workers=1).path == a
    assert (a / "train.bin").stat().st_mtime_ns == stamp
    # ... and one longer than the reused split is still refused.
    with pytest.raises(TinyGPTError, match="shorter than one context window"):
        prepare_dataset(str(src), None, block_size=10**6, progress=False, workers=1)
    # Another tokenizer setting is another dataset.
    b = prepare_dataset(
        str(src), None, tokenizer="bpe", vocab_size=300, progress=False, workers=1
    ).path
    assert b != a and open_dataset(b).meta["tokenizer_kind"] == "bpe"


# --- bad input: one line, exit 2, nothing left behind ------------------------------------


def run_cli(argv: list[str], capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("tinygpt: error: ") and err.count("\n") == 1, err
    return err


@pytest.mark.parametrize(
    "make, extra, message",
    [
        (lambda d: write(d / "empty.txt", ""), [], "holds no text"),
        (lambda d: write(d / "blank.txt", " \n\n"), ["--collapse-whitespace"], "holds no text"),
        (lambda d: write(d / "short.txt", "tiny text here"), ["--block-size", "64"], "shorter than one context window.*--block-size \\+ 1 = 65"),
        (lambda d: write(d / "in.txt", TEXT), ["--tokenizer", "bpe", "--vocab-size", "100"], "vocab"),
        (lambda d: write(d / "in.txt", TEXT), ["--tokenizer", str(Path("/nonexistent/tok.json"))], "must be char, bpe, gpt2 or a tokenizer.json"),
        (lambda d: write(d / "in.txt", TEXT), ["--val-fraction", "1.5"], "--val-fraction = 1.5 must be between 0 and 1"),
        (lambda d: write(d / "in.txt", TEXT), ["--dedup", "--min-chars", "999999"], "cleaning dropped all 1 documents.*shorter than --min-chars: 1"),
        (lambda d: write_jsonl(d / "d.jsonl", ["a", "b"], field="body"), [], "d.jsonl:1: no 'text' field.*--text-field"),
        (lambda d: d / "missing.txt", [], "input path .*missing.txt does not exist"),
    ],
)  # fmt: skip
def test_bad_inputs_leave_nothing(tmp_path, capsys, make, extra, message):
    src = make(tmp_path)
    out = tmp_path / "out" / "ds"
    err = run_cli(
        ["prepare", "--input", str(src), "--workers", "1", "--out", str(out), *extra], capsys
    )
    assert pytest.importorskip("re").search(message, err), err
    assert not out.exists()
    assert not (tmp_path / "out").exists() or leftovers(tmp_path / "out") == []


def test_non_utf8_input(tmp_path, capsys):
    src = tmp_path / "latin1.txt"
    src.write_bytes(b"ok text\ncaf\xe9\n")
    err = run_cli(["prepare", "--input", str(src), "--out", str(tmp_path / "ds")], capsys)
    assert (
        "latin1.txt is not valid UTF-8 (byte 0xe9 at offset 11)" in err
        and "--errors replace" in err
    )
    assert not (tmp_path / "ds").exists()
    assert (
        main(
            [
                "prepare",
                "--input",
                str(src),
                "--errors",
                "replace",
                "--workers",
                "1",
                "--out",
                str(tmp_path / "ds"),
            ]
        )
        == 0
    )
    ds = open_dataset(tmp_path / "ds")
    assert "\ufffd" in ds.load_tokenizer().decode(np.concatenate([ds.train, ds.val]).tolist())


def test_unknown_corpus_suggests(tmp_path, capsys):
    err = run_cli(["prepare", "--corpus", "nutuk", "--out", str(tmp_path / "ds")], capsys)
    assert "did you mean 'nutuk-en'" in err
    assert not (tmp_path / "ds").exists()


def test_unwritable_output(tmp_path, capsys):
    src = write(tmp_path / "in.txt", TEXT)
    blocker = write(tmp_path / "file", "x")
    err = run_cli(["prepare", "--input", str(src), "--out", str(blocker / "ds")], capsys)
    assert "cannot write to output folder" in err
    err = run_cli(["prepare", "--input", str(src), "--out", str(blocker)], capsys)
    assert "is a file" in err
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        err = run_cli(["prepare", "--input", str(src), "--out", str(locked / "ds")], capsys)
        assert "cannot write to output folder" in err


def test_output_with_other_dataset_or_unrelated_files(tmp_path, capsys):
    a = write(tmp_path / "a.txt", TEXT)
    b = write(tmp_path / "b.txt", TEXT.upper())
    out = tmp_path / "ds"
    assert main(["prepare", "--input", str(a), "--workers", "1", "--out", str(out)]) == 0
    before = (out / "train.bin").read_bytes()
    capsys.readouterr()
    err = run_cli(["prepare", "--input", str(b), "--workers", "1", "--out", str(out)], capsys)
    assert "already holds a different dataset" in err and "--force" in err
    assert (out / "train.bin").read_bytes() == before
    assert main(["prepare", "--input", str(b), "--workers", "1", "--force", "--out", str(out)]) == 0
    assert open_dataset(out).meta["source"] == str(b)
    capsys.readouterr()
    assert leftovers(tmp_path) == []
    unrelated = tmp_path / "mine"
    write(unrelated / "notes.txt", "keep me")
    err = run_cli(["prepare", "--input", str(a), "--force", "--out", str(unrelated)], capsys)
    assert "holds files that are not a tinygpt dataset" in err
    assert sorted(p.name for p in unrelated.iterdir()) == ["notes.txt"]


def test_open_dataset_errors(tmp_path):
    with pytest.raises(TinyGPTError, match="does not exist; create one with: tinygpt prepare"):
        open_dataset(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TinyGPTError, match="is not a tinygpt dataset"):
        open_dataset(tmp_path / "empty")
    out = prepare(str(write(tmp_path / "in.txt", TEXT)), tmp_path / "ds", **fast())
    with open(out / "train.bin", "r+b") as f:
        f.truncate(10)
    with pytest.raises(TinyGPTError, match="train.bin holds 10 bytes .* prepare it again"):
        open_dataset(out)
    (out / "meta.json").write_text("{not json", "utf-8")
    with pytest.raises(TinyGPTError, match="damaged"):
        open_dataset(out)


def test_pool_workers_leave_sigterm_to_the_pool(tmp_path):
    """The console entry turns SIGTERM into an exception; a pool worker forked from it must
    not, or closing the pool (which sends SIGTERM) prints the workers' tracebacks after a
    good preparation."""
    import signal

    tok = train_tokenizer("char", [TEXT])
    tok.save(tmp_path / "tokenizer.json")

    def raising(signum, frame):
        raise RuntimeError("inherited handler")

    before = (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT))
    signal.signal(signal.SIGTERM, raising)
    try:
        data._init_worker(str(tmp_path / "tokenizer.json"), "uint16", pool=True)
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    finally:
        data._WORKER.clear()
        signal.signal(signal.SIGTERM, before[0])
        signal.signal(signal.SIGINT, before[1])
