"""`tinygpt tokenizer train | encode | decode`, including the bad inputs."""

from __future__ import annotations

import pytest

from tinygpt.cli import main
from tinygpt.data.tokenizer import EOT, load_tokenizer
from tokenizer_text import corpus


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text("".join(corpus(30_000, seed=2)), encoding="utf-8")
    return path


def _train_bpe(text_file, out):
    return main(["tokenizer", "train", "--input", str(text_file), "--vocab-size", "400",
                 "--out", str(out)])  # fmt: skip


@pytest.fixture
def bpe_file(tmp_path, text_file, capsys):
    assert _train_bpe(text_file, tmp_path / "bpe.json") == 0
    capsys.readouterr()
    return tmp_path / "bpe.json"


def test_train_bpe(tmp_path, text_file, capsys):
    assert _train_bpe(text_file, tmp_path / "bpe.json") == 0
    tok = load_tokenizer(tmp_path / "bpe.json")
    assert tok.kind == "bpe" and tok.vocab_size == 400 and tok.special_tokens == {EOT: 399}
    assert "vocabulary 400, 143 merges, pattern gpt4" in capsys.readouterr().out


@pytest.mark.parametrize("backend", ["native", "hf"])
def test_train_bpe_options(tmp_path, text_file, backend):
    out = tmp_path / "t.json"
    args = ["tokenizer", "train", "--input", str(text_file), "--tokenizer", "bpe",
            "--vocab-size", "300", "--backend", backend, "--pattern", "gpt2",
            "--special", "<|user|>", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    tok = load_tokenizer(out)
    assert tok.pattern_name == "gpt2" and tok.special_tokens == {EOT: 298, "<|user|>": 299}


def test_train_char(tmp_path, text_file, capsys):
    out = tmp_path / "char.json"
    args = ["tokenizer", "train", "--input", str(text_file), "--tokenizer", "char", "--unk"]
    assert main([*args, "--out", str(out)]) == 0
    tok = load_tokenizer(out)
    assert tok.kind == "char" and "<unk>" in tok.special_tokens
    assert f"wrote {out}: char, vocabulary {tok.vocab_size}," in capsys.readouterr().out


def test_encode_table(bpe_file, capsys):
    assert main(["tokenizer", "encode", str(bpe_file), "the ş" + EOT, "--allowed-special"]) == 0
    out = capsys.readouterr().out.splitlines()
    tok = load_tokenizer(bpe_file)
    ids = tok.encode("the ş" + EOT, allowed_special=True)
    assert out[0].split() == ["id", "piece"]
    assert [int(line.split()[0]) for line in out[1:-1]] == ids
    assert out[-2].split() == [str(tok.eot_id), EOT]
    assert out[-1] == f"{len(ids)} tokens, {len('the ş' + EOT) + 1} bytes"


def test_encode_shows_partial_bytes_escaped(tmp_path, capsys):
    out = tmp_path / "t.json"
    (tmp_path / "a.txt").write_text("plain ascii only")
    main(["tokenizer", "train", "--input", str(tmp_path / "a.txt"), "--vocab-size", "260",
          "--out", str(out)])  # fmt: skip
    capsys.readouterr()
    assert main(["tokenizer", "encode", str(out), "ğ"]) == 0  # two bytes, no merge for them
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split() == ["196", "b'\\xc4'"]
    assert lines[2].split() == ["159", "b'\\x9f'"]


def test_encode_ids_and_decode_round_trip(bpe_file, capsys):
    text = "İstanbul'da\r\n  ağaç 😀"
    assert main(["tokenizer", "encode", str(bpe_file), text, "--ids"]) == 0
    ids = capsys.readouterr().out.split()
    assert main(["tokenizer", "decode", str(bpe_file), *ids]) == 0
    assert capsys.readouterr().out == text + "\n"
    assert main(["tokenizer", "decode", str(bpe_file), ",".join(ids)]) == 0
    assert capsys.readouterr().out == text + "\n"


def _error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("tinygpt: error: ") and err.count("\n") == 1
    return err


def test_bad_vocab_size(capsys, text_file, tmp_path):
    err = _error(capsys, ["tokenizer", "train", "--input", str(text_file), "--vocab-size", "100",
                          "--out", str(tmp_path / "t.json")])  # fmt: skip
    assert "BPE vocabulary size 100 is too small" in err and "--vocab-size 257" in err


def test_bad_flag_combinations(capsys, text_file, tmp_path):
    base = ["tokenizer", "train", "--input", str(text_file), "--out", str(tmp_path / "t.json")]
    assert "--unk applies to --tokenizer char" in _error(capsys, [*base, "--unk"])
    err = _error(capsys, [*base, "--tokenizer", "char", "--vocab-size", "300"])
    assert "--vocab-size, --special and --min-frequency apply to --tokenizer bpe" in err
    err = _error(capsys, [*base, "--tokenizer", "char", "--min-frequency", "2"])
    assert "--min-frequency apply to --tokenizer bpe" in err
    assert "--min-frequency = 0 must be at least 1" in _error(
        capsys, [*base, "--min-frequency", "0"]
    )
    err = _error(capsys, [*base, "--lowercase", "de"])
    assert "unknown --lowercase language 'de'; choose one of: default, tr" in err


def test_empty_input(capsys, tmp_path):
    (tmp_path / "empty.txt").write_text("")
    err = _error(capsys, ["tokenizer", "train", "--input", str(tmp_path / "empty.txt"),
                          "--out", str(tmp_path / "t.json")])  # fmt: skip
    assert "training text is empty" in err


def test_unknown_corpus(capsys, tmp_path):
    err = _error(capsys, ["tokenizer", "train", "--corpus", "shakespear",
                          "--out", str(tmp_path / "t.json")])  # fmt: skip
    assert "unknown corpus 'shakespear'" in err


def test_not_a_tokenizer_file(capsys, tmp_path):
    bogus = tmp_path / "notes.json"
    bogus.write_text("[1, 2, 3]")
    assert "is not a tokenizer.json" in _error(capsys, ["tokenizer", "encode", str(bogus), "hi"])
    bogus.write_text("hello")
    assert "not valid JSON" in _error(capsys, ["tokenizer", "decode", str(bogus), "1"])
    missing = tmp_path / "missing.json"
    assert "does not exist" in _error(capsys, ["tokenizer", "encode", str(missing), "hi"])


def test_decode_bad_ids(capsys, bpe_file):
    assert "'x1' is not an integer" in _error(capsys, ["tokenizer", "decode", str(bpe_file), "x1"])
    err = _error(capsys, ["tokenizer", "decode", str(bpe_file), "5", "400"])
    assert "token id 400 is out of range" in err
    err = _error(capsys, ["tokenizer", "decode", str(bpe_file), "--", "-1"])
    assert "token id -1 is out of range" in err


def test_unknown_pattern_is_refused_by_argparse(capsys, text_file, tmp_path):
    with pytest.raises(SystemExit) as exc:
        main(["tokenizer", "train", "--input", str(text_file), "--pattern", "gpt3",
              "--out", str(tmp_path / "t.json")])  # fmt: skip
    assert exc.value.code == 2
    assert "invalid choice: 'gpt3'" in capsys.readouterr().err


def test_train_says_when_the_vocabulary_stops_short(tmp_path, text_file, capsys):
    out = tmp_path / "t.json"
    args = ["tokenizer", "train", "--input", str(text_file), "--vocab-size", "50257",
            "--min-frequency", "3", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    err = capsys.readouterr().err
    n = load_tokenizer(out).vocab_size
    assert n < 50257
    assert f"note: the BPE vocabulary stopped at {n:,} of the 50,257 ids asked: no pair" in err
    assert "(--min-frequency 3)" in err
