"""GPT-2's vocabulary: fetching the rank file (from a source distribution built here), the
conversion of ranks to merges, and parity with tiktoken and transformers on the same ranks."""

from __future__ import annotations

import base64
import hashlib
import io
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from tinygpt.cli import main
from tinygpt.core.errors import TinyGPTError
from tinygpt.data import cache
from tinygpt.data.tokenizer import EOT, gpt2_tokenizer, load_tokenizer, train_tokenizer
from tinygpt.data.tokenizer import gpt2 as gpt2_mod
from tinygpt.data.tokenizer.bpe import PATTERNS, bytes_to_unicode
from tinygpt.data.tokenizer.gpt2 import (
    extract_ranks,
    merges_from_ranks,
    read_ranks,
    tokenizer_from_ranks,
)
from tokenizer_text import corpus

tiktoken = pytest.importorskip("tiktoken")
tokenizers = pytest.importorskip("tokenizers")
transformers = pytest.importorskip("transformers")

TEXTS = [
    "Hello world",
    "",
    " ",
    "Hello, world! It's 2024; we'll see.\n",
    "İstanbul'da ışık; ŞşĞğÇçÖöÜü İIıi. Çanakkale'nin ağaçları, Iğdır'ın dağları!",
    "emoji 😀👍🏽 ❤️ family 👩‍👩‍👧‍👦 flag 🇹🇷 keycap 1️⃣",
    "中文字符测试，日本語のテキスト。",
    "line one\r\nline two\r\n\r\n\ttabbed\t\tand\t \n",
    "long        runs            of spaces   \n\n\n\n   and newlines      ",
    "numbers 1234567 3.14159 -42 1,000,000 ١٢٣",
    "'S 'LL 'Ve DON'T won't y'all",
    "code: def f(x):\n    return x**2  # square\n",
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n",
]


def rank_file_bytes(ranks: dict[bytes, int]) -> bytes:
    lines = [
        f"{base64.b64encode(t).decode()} {r}" for t, r in sorted(ranks.items(), key=lambda x: x[1])
    ]
    return ("\n".join(lines) + "\n").encode()


@pytest.fixture(scope="module")
def small_ranks() -> dict[bytes, int]:
    """A small rank file in GPT-2's layout: the 256 bytes in GPT-2's printable-first order,
    then the tokens of a BPE trained here, in the order they were learned."""
    tok = train_tokenizer("bpe", corpus(120_000, seed=21), vocab_size=1200, pattern="gpt2")
    ranks = {bytes([b]): r for r, b in enumerate(bytes_to_unicode())}
    for i in range(256, tok.vocab_size):
        if not tok.is_special(i):
            ranks[tok.token_bytes(i)] = len(ranks)
    return ranks


@pytest.fixture
def rank_file(small_ranks, tmp_path, monkeypatch) -> Path:
    """The small rank file on disk, pinned in place of GPT-2's."""
    data = rank_file_bytes(small_ranks)
    path = tmp_path / "gpt2.tiktoken"
    path.write_bytes(data)
    monkeypatch.setattr(gpt2_mod, "RANKS_SHA256", hashlib.sha256(data).hexdigest())
    return path


def build_sdist(folder: Path, ranks_data: bytes, *, member: str = gpt2_mod.MEMBER) -> Path:
    """A stand-in for the openai-whisper source distribution: the rank file, code that must
    never run, and a member whose path points outside the archive."""
    sdist = folder / "openai_whisper-20250625.tar.gz"
    with tarfile.open(sdist, "w:gz") as tf:
        for name, data in [
            ("openai_whisper-20250625/setup.py", b"raise RuntimeError('never run')\n"),
            ("openai_whisper-20250625/whisper/__init__.py", b"raise RuntimeError('never')\n"),
            ("../escape.txt", b"must not be written\n"),
            (f"openai_whisper-20250625/{member}", ranks_data),
        ]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return sdist


@pytest.fixture
def fake_index(rank_file, tmp_path, monkeypatch):
    """Serve the stand-in sdist instead of the package index; its hash is pinned."""
    folder = tmp_path / "index"
    folder.mkdir()
    sdist = build_sdist(folder, rank_file.read_bytes())
    monkeypatch.setattr(gpt2_mod, "SDIST_SHA256", hashlib.sha256(sdist.read_bytes()).hexdigest())
    calls: list[tuple[str, str, bool]] = []

    def fake_download(package, version, dest, *, sdist: bool, fallback: str) -> Path:
        calls.append((package, version, sdist))
        target = Path(dest) / folder.joinpath("openai_whisper-20250625.tar.gz").name
        target.write_bytes((folder / target.name).read_bytes())
        return target

    monkeypatch.setattr(gpt2_mod, "pip_download", fake_download)
    return calls


def tiktoken_encoding(ranks: dict[bytes, int]):
    return tiktoken.Encoding(
        "gpt2-test",
        pat_str=PATTERNS["gpt2"],
        mergeable_ranks=ranks,
        special_tokens={EOT: len(ranks)},
    )


# --- ranks and merges ----------------------------------------------------------------------


def test_merges_from_ranks_known_answer():
    # "abb": with ranks below 4, a b b -> [ab] b (ab is rank 2, bb rank 3) -> merge (ab, b).
    ranks = {b"a": 0, b"b": 1, b"ab": 2, b"bb": 3, b"abb": 4, b"aab": 5}
    assert merges_from_ranks(ranks) == [(b"a", b"b"), (b"b", b"b"), (b"ab", b"b"), (b"a", b"ab")]
    # "abc" has no token for "ab" or "bc" below it: three parts, not two.
    with pytest.raises(TinyGPTError, match=r"b'abc' \(rank 3\) is not the join of two"):
        merges_from_ranks({b"a": 0, b"b": 1, b"c": 2, b"abc": 3})


@pytest.mark.parametrize(
    "data, message",
    [
        (b"YQ== 0\nYg==\n", r":2: not a 'base64 rank' line"),
        (b"YQ== 0\n!!!! 1\n", r":2: not a 'base64 rank' line"),
        (b"YQ== 0\nYQ== 1\n", r":2: token b'a' is empty or listed twice"),
        (b"YQ== 0\nYg== 2\n", r"ranks are not 0\.\.1"),
    ],
)
def test_read_ranks_rejects_broken_files(data, message):
    with pytest.raises(TinyGPTError, match=message):
        read_ranks(data)


def test_converted_ranks_match_tiktoken_and_transformers(small_ranks, tmp_path):
    tok = tokenizer_from_ranks(small_ranks)
    assert tok.vocab_size == len(small_ranks) + 1 and tok.eot_id == len(small_ranks)
    assert tok.token_bytes(0) == b"!"  # ids are ranks, not byte values
    path = tok.save(tmp_path / "tokenizer.json")
    enc = tiktoken_encoding(small_ranks)
    hf = tokenizers.Tokenizer.from_file(str(path))
    fast = transformers.GPT2TokenizerFast(tokenizer_file=str(path))
    ours = load_tokenizer(path)
    for text in [*TEXTS, *corpus(20_000, seed=5)]:
        ids = ours.encode(text)
        assert ids == enc.encode_ordinary(text), text
        assert ids == hf.encode(text).ids == fast.encode(text), text
        assert ours.decode(ids) == text
    special = f"a{EOT}b"
    assert ours.encode(special, allowed_special=True) == enc.encode(special, allowed_special="all")


# --- finding and fetching the rank file ----------------------------------------------------


def test_fetch_extracts_verifies_and_caches(fake_index, small_ranks, tmp_path):
    tok = gpt2_tokenizer()
    assert fake_index == [("openai-whisper", "20250625", True)]
    cached = gpt2_mod.cached_ranks_path()
    assert read_ranks(cached.read_bytes()) == small_ranks
    assert tok.encode("the king") == tokenizer_from_ranks(small_ranks).encode("the king")
    assert not (tmp_path.parent / "escape.txt").exists()
    # Cached: neither downloaded nor converted again.
    json_file = gpt2_mod.gpt2_tokenizer_file()
    mtime = json_file.stat().st_mtime_ns
    gpt2_tokenizer()
    assert fake_index == [("openai-whisper", "20250625", True)]
    assert json_file.stat().st_mtime_ns == mtime


def test_extract_refuses_an_archive_without_the_ranks(tmp_path):
    sdist = build_sdist(tmp_path, b"YQ== 0\n", member="whisper/assets/other.tiktoken")
    with pytest.raises(TinyGPTError, match=r"holds no whisper/assets/gpt2.tiktoken"):
        extract_ranks(sdist)
    (tmp_path / "broken.tar.gz").write_bytes(b"not a tar file")
    with pytest.raises(TinyGPTError, match="not a readable source distribution"):
        extract_ranks(tmp_path / "broken.tar.gz")


def test_wrong_sdist_hash_is_refused(fake_index, monkeypatch):
    monkeypatch.setattr(gpt2_mod, "SDIST_SHA256", "0" * 64)
    with pytest.raises(TinyGPTError, match=r"sha256 .* expected 0{64}.*TINYGPT_GPT2_TIKTOKEN"):
        gpt2_tokenizer()
    assert not gpt2_mod.cached_ranks_path().exists()


def test_wrong_ranks_hash_is_refused(fake_index, monkeypatch):
    monkeypatch.setattr(gpt2_mod, "RANKS_SHA256", "1" * 64)
    with pytest.raises(TinyGPTError, match=r"is not GPT-2's gpt2.tiktoken \(sha256 .*1{64}"):
        gpt2_tokenizer()
    assert not gpt2_mod.cached_ranks_path().exists()


def test_local_file_named_by_environment(rank_file, small_ranks, monkeypatch):
    monkeypatch.setenv("TINYGPT_GPT2_TIKTOKEN", str(rank_file))
    monkeypatch.setattr(gpt2_mod, "pip_download", None)  # must not be called
    assert gpt2_tokenizer().vocab_size == len(small_ranks) + 1
    monkeypatch.setenv("TINYGPT_GPT2_TIKTOKEN", str(rank_file.parent / "missing.tiktoken"))
    gpt2_mod.gpt2_tokenizer_file().unlink()
    with pytest.raises(TinyGPTError, match=r"TINYGPT_GPT2_TIKTOKEN=.*missing.tiktoken does not"):
        gpt2_tokenizer()


def test_copy_in_the_cache_folder_works_offline(rank_file, small_ranks, monkeypatch):
    cached = gpt2_mod.cached_ranks_path()
    cached.parent.mkdir(parents=True)
    cached.write_bytes(rank_file.read_bytes())
    monkeypatch.setattr(gpt2_mod, "pip_download", None)  # must not be called
    assert gpt2_tokenizer().vocab_size == len(small_ranks) + 1


def test_offline_without_cache_is_one_line(rank_file, tmp_path, monkeypatch, capsys):
    seen = []

    def offline(cmd, **kwargs):
        seen.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution\n")

    monkeypatch.setattr(cache.subprocess, "run", offline)
    (tmp_path / "in.txt").write_text("Some text to prepare.\n" * 20)
    argv = ["prepare", "--input", str(tmp_path / "in.txt"), "--tokenizer", "gpt2"]
    assert main([*argv, "--out", str(tmp_path / "data")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("tinygpt: error: could not download")
    assert "openai-whisper==20250625" in err and "No matching distribution" in err
    assert str(gpt2_mod.cached_ranks_path()) in err and "TINYGPT_GPT2_TIKTOKEN" in err
    assert seen[0][3:6] == ["download", "--no-deps", "--no-binary=:all:"]
    assert "openai-whisper==20250625" in seen[0]
    assert not (tmp_path / "data").exists()


# --- the command line ----------------------------------------------------------------------


def test_prepare_and_encode_with_gpt2(fake_index, small_ranks, tmp_path, capsys):
    (tmp_path / "in.txt").write_text("".join(corpus(20_000, seed=8)), encoding="utf-8")
    out = tmp_path / "data"
    argv = ["prepare", "--input", str(tmp_path / "in.txt"), "--tokenizer", "gpt2"]
    assert main([*argv, "--out", str(out), "--workers", "1"]) == 0
    assert f"bpe vocab {len(small_ranks) + 1:,}" in capsys.readouterr().err
    tok = load_tokenizer(out)
    assert tok.to_json_dict() == gpt2_tokenizer().to_json_dict()
    assert main(["tokenizer", "encode", "gpt2", "the king", "--ids"]) == 0
    assert capsys.readouterr().out.split() == [str(i) for i in tok.encode("the king")]
    assert main(["tokenizer", "decode", "gpt2", *map(str, tok.encode("the king"))]) == 0
    assert capsys.readouterr().out == "the king\n"
    assert main([*argv, "--out", str(out), "--vocab-size", "100"]) == 2
    assert "--vocab-size does not apply to --tokenizer gpt2" in capsys.readouterr().err


def test_train_with_data_tokenizer_gpt2(fake_index, small_ranks, tmp_path, capsys):
    (tmp_path / "in.txt").write_text("".join(corpus(30_000, seed=9)), encoding="utf-8")
    run = tmp_path / "run"
    args = ["train", "--input", str(tmp_path / "in.txt"), "--data.tokenizer", "gpt2",
            "--out", str(run), "--max-steps", "2", "--preset", "one-layer", "--no-progress",
            "--model.n_embd", "16", "--model.n_head", "2", "--model.block_size", "16",
            "--train.batch_size", "4", "--train.sample_tokens", "4"]  # fmt: skip
    assert main(args) == 0, capsys.readouterr().err
    assert load_tokenizer(run).to_json_dict() == gpt2_tokenizer().to_json_dict()
    assert f"vocab_size = {len(small_ranks) + 1}" in (run / "config.toml").read_text()


# --- the real thing ------------------------------------------------------------------------


@pytest.mark.network
def test_real_gpt2_vocabulary(tmp_path):
    for attempt in range(3):
        try:
            path = gpt2_mod.gpt2_tokenizer_file()
            break
        except TinyGPTError:
            if attempt == 2:
                raise
            time.sleep(5 * (attempt + 1))
    ranks_path = gpt2_mod.cached_ranks_path()
    from tiktoken.load import load_tiktoken_bpe

    ranks = load_tiktoken_bpe(str(ranks_path))
    assert len(ranks) == 50256 and read_ranks(ranks_path.read_bytes()) == ranks
    assert len(merges_from_ranks(ranks)) == 50000
    tok = gpt2_tokenizer()
    assert tok.vocab_size == 50257 and tok.eot_id == 50256
    assert tok.encode("Hello world") == [15496, 995]
    enc = tiktoken_encoding(ranks)
    hf = tokenizers.Tokenizer.from_file(str(path))
    fast = transformers.GPT2TokenizerFast(tokenizer_file=str(path))
    generic = transformers.PreTrainedTokenizerFast(tokenizer_file=str(path))
    for text in [*TEXTS, *corpus(30_000, seed=13)]:
        ids = tok.encode(text)
        assert ids == enc.encode_ordinary(text), text
        assert ids == hf.encode(text).ids == fast.encode(text) == generic.encode(text), text
    assert fast.eos_token is None or fast.convert_tokens_to_ids(EOT) == 50256
    assert tok.encode(f"a{EOT}", allowed_special=True) == [64, 50256]
