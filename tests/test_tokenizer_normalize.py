"""Normalisers (lowercasing, Turkish lowercasing, whitespace) inside tokenizers: what they do,
and that Hugging Face `tokenizers` and `transformers` read them from our files and agree."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tinygpt.cli import main
from tinygpt.core.errors import TinyGPTError
from tinygpt.data.prepare import open_dataset, prepare_dataset
from tinygpt.data.tokenizer import EOT, Normalizer, load_tokenizer, train_tokenizer
from tinygpt.data.tokenizer.normalize import HORIZONTAL_SPACE
from tokenizer_text import corpus

tokenizers = pytest.importorskip("tokenizers")
transformers = pytest.importorskip("transformers")

TURKISH = [
    "İSTANBUL'DA IŞIK VAR. Iğdır'ın dağları, İzmir'in İnciraltı'sı.",
    "Işık ılık; İİ II ıı ii. ÇANAKKALE GEÇİLMEZ!",
    "Türkiye  Cumhuriyeti\t\tANKARA\u00a0\u3000başkent\n\n  İKİ  satır\r\n",
    "ΟΔΟΣ Σ ς  DZ ǅ Ǆ ẞ",
    f"BİR{EOT}  İKİ {EOT}ÜÇ",
    "",
]

ALL = [
    {"lowercase": "tr", "whitespace": True},
    {"lowercase": "tr", "whitespace": False},
    {"lowercase": "default", "whitespace": False},
    {"lowercase": None, "whitespace": True},
]


def test_turkish_lowercasing_is_not_pythons():
    tr = Normalizer.build(lowercase="tr")
    assert tr("İSTANBUL IĞDIR Işık") == "istanbul ığdır ışık"
    assert "İSTANBUL IĞDIR".lower() == "i̇stanbul iğdir"  # what Python does: wrong for Turkish
    default = Normalizer.build(lowercase="default")
    assert default("İI") == "i\u0307i"  # Unicode's rule: İ keeps its dot as a combining mark


def test_whitespace_rule_exactly():
    ws = Normalizer.build(whitespace=True)
    assert ws("a \t\x0b\x0c\u00a0\u2000\u200a\u202f\u205f\u3000\u1680b") == "a b"
    # Line breaks are kept (also \r, U+0085, U+2028, U+2029); spaces around them shrink.
    assert ws("a  \n\n   b\r\n\tc\u0085d\u2028e\u2029") == "a \n\n b\r\n c\u0085d\u2028e\u2029"
    assert ws("zero\u200bwidth") == "zero\u200bwidth"  # not whitespace
    assert Normalizer.build() is None


def test_final_sigma_is_lowercased_per_character_as_in_hugging_face():
    assert Normalizer.build(lowercase="default")("ΟΔΟΣ") == "οδοσ"
    assert "ΟΔΟΣ".lower() == "οδος"  # Python's contextual rule, which HF does not apply


def test_unknown_lowercase_language():
    with pytest.raises(TinyGPTError, match=r"unknown --lowercase language 'de'.*default, tr"):
        Normalizer.build(lowercase="de")


@pytest.mark.parametrize("options", ALL)
def test_normalized_strings_match_hugging_face(options, tmp_path):
    norm = Normalizer.build(**options)
    tok = train_tokenizer("char", ["ab"], normalizer=norm)
    path = tok.save(tmp_path / "tokenizer.json")
    hf = tokenizers.Tokenizer.from_file(str(path))
    fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(path))
    for text in [*TURKISH, *corpus(3_000, seed=6)]:
        ours = tok.normalize(text)
        assert ours == hf.normalizer.normalize_str(text), text
        assert ours == fast.backend_tokenizer.normalizer.normalize_str(text), text


@pytest.mark.parametrize("options", ALL)
@pytest.mark.parametrize("kind, backend", [("char", "native"), ("bpe", "native"), ("bpe", "hf")])
def test_ids_match_hugging_face_on_turkish_text(kind, backend, options, tmp_path):
    norm = Normalizer.build(**options)
    docs = [*corpus(40_000, seed=4), *TURKISH]
    kwargs = {"vocab_size": 600, "backend": backend} if kind == "bpe" else {"unk": True}
    tok = train_tokenizer(kind, docs, normalizer=norm, **kwargs)
    path = tok.save(tmp_path / "tokenizer.json")
    back = load_tokenizer(path)
    assert back.normalizer == norm
    hf = tokenizers.Tokenizer.from_file(str(path))
    fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(path))
    for text in [*TURKISH, *corpus(4_000, seed=10)]:
        ids = back.encode(text, allowed_special=True)
        assert ids == tok.encode(text, allowed_special=True)
        assert ids == hf.encode(text).ids == fast.encode(text, add_special_tokens=False), text
    if options["lowercase"] == "tr":
        assert back.decode(back.encode("IĞDIR İZMİR")) == "ığdır izmir"
        if kind == "char":
            assert not {"I", "İ", "Ğ"} & set(tok.chars)  # learned from lowercased text


def test_unsupported_normalizers_are_refused(tmp_path):
    tok = train_tokenizer("bpe", ["hello"], vocab_size=260)
    data = tok.to_json_dict()
    for normalizer, message in [
        ({"type": "Strip", "left": True, "right": True}, "normalizer 'Strip' is not supported"),
        (
            {"type": "Replace", "pattern": {"Regex": r"\s+"}, "content": " "},
            "Replace with pattern .* is not supported",
        ),
    ]:
        data["normalizer"] = normalizer
        (tmp_path / "t.json").write_text(json.dumps(data))
        with pytest.raises(TinyGPTError, match=message):
            load_tokenizer(tmp_path / "t.json")
    data["normalizer"] = {"type": "Sequence", "normalizers": [{"type": "NFKC"}]}
    (tmp_path / "t.json").write_text(json.dumps(data))
    assert load_tokenizer(tmp_path / "t.json").normalize("ﬁ") == "fi"


def test_the_regex_is_written_as_json_that_hugging_face_reads(tmp_path):
    tok = train_tokenizer("char", ["a b"], normalizer=Normalizer.build(whitespace=True))
    data = tok.to_json_dict()
    assert data["normalizer"]["normalizers"][0]["pattern"] == {"Regex": HORIZONTAL_SPACE}


# --- prepare -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_prepare_records_the_normalizer(kind, tmp_path, capsys):
    text = "".join(TURKISH[:3]) * 50 + "".join(corpus(20_000, seed=2))
    (tmp_path / "in.txt").write_text(text, encoding="utf-8")
    out = tmp_path / "data"
    argv = ["prepare", "--input", str(tmp_path / "in.txt"), "--tokenizer", kind,
            "--lowercase", "tr", "--normalize-whitespace", "--out", str(out), "--workers", "1"]  # fmt: skip
    if kind == "bpe":
        argv += ["--vocab-size", "400"]
    assert main(argv) == 0
    ds = open_dataset(out)
    tok = ds.load_tokenizer()
    assert tok.normalizer == Normalizer.build(lowercase="tr", whitespace=True)
    assert ds.meta["tokenizer"]["normalizer"] == tok.normalizer.to_json()
    ids = np.concatenate([ds.train, ds.val]).tolist()
    assert ids[-1] == tok.eot_id
    assert tok.decode(ids[:-1]).replace(EOT, "") == tok.normalize(text)
    hf = tokenizers.Tokenizer.from_file(str(ds.tokenizer_path))
    prompt = "İZMİR  IŞIK\tBİR"
    assert tok.encode(prompt) == hf.encode(prompt).ids
    assert tok.decode(tok.encode(prompt)) == "izmir ışık bir"
    capsys.readouterr()
    # Without the flags it is another dataset, not a reuse of this one.
    assert main([a for a in argv if a not in ("--normalize-whitespace",)]) == 0
    assert "wrote" in capsys.readouterr().err


def test_prepare_bad_normalizer_flags(tmp_path, capsys):
    (tmp_path / "in.txt").write_text("Some text.\n" * 50)
    tok = train_tokenizer("char", ["Some text.\n"]).save(tmp_path / "tok.json")
    base = ["prepare", "--input", str(tmp_path / "in.txt"), "--out", str(tmp_path / "d")]
    for extra, message in [
        (["--lowercase", "de"], "unknown --lowercase language 'de'; choose one of: default, tr"),
        (["--tokenizer", str(tok), "--lowercase", "tr"], "carries its own normalizer"),
        (["--min-frequency", "2"], "--min-frequency applies to --tokenizer bpe, not char"),
    ]:
        assert main([*base, *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith("tinygpt: error: ") and err.count("\n") == 1 and message in err
    assert not (tmp_path / "d").exists()


def test_prepare_says_when_bpe_stops_short(tmp_path, capsys):
    (tmp_path / "in.txt").write_text("".join(corpus(8_000, seed=1)), encoding="utf-8")
    argv = ["prepare", "--input", str(tmp_path / "in.txt"), "--tokenizer", "bpe",
            "--vocab-size", "50257", "--out", str(tmp_path / "d"), "--workers", "1"]  # fmt: skip
    assert main(argv) == 0
    err = capsys.readouterr().err
    meta = open_dataset(tmp_path / "d").meta
    n = meta["vocab_size"]
    assert n < 50257
    assert f"note: the BPE vocabulary stopped at {n:,} of the 50,257 ids asked" in err
    assert f"bpe vocab {n:,} (of 50,257 asked)" in err
    assert meta["tokenizer"]["shortfall"].startswith("the BPE vocabulary stopped")
    # --min-frequency 2 stops earlier, for the other reason, on both backends alike.
    sizes = []
    for backend in ("native", "hf"):
        out = tmp_path / backend
        args = [*argv[:-4], "--min-frequency", "2", "--backend", backend, "--out", str(out)]
        assert main(args) == 0
        assert "--min-frequency 2" in capsys.readouterr().err
        sizes.append(open_dataset(out).meta["vocab_size"])
    assert sizes[0] == sizes[1] < n


def test_python_api_lowercase_for_gpt_style_bpe(tmp_path):
    (tmp_path / "in.txt").write_text("".join(corpus(10_000, seed=3)), encoding="utf-8")
    result = prepare_dataset(
        str(tmp_path / "in.txt"), tmp_path / "d", tokenizer="bpe", vocab_size=300,
        lowercase="default", progress=False, workers=1,
    )  # fmt: skip
    tok = load_tokenizer(result.path)
    assert tok.encode("THE KING") == tok.encode("the king")
