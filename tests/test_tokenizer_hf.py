"""Our tokenizers agree with their twin, Hugging Face `tokenizers` (and `transformers`)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinygpt.data.tokenizer import EOT, BPETokenizer, load_tokenizer, train_tokenizer
from tokenizer_text import EN_WORDS, TR_NAMES, TR_ROOTS, corpus

tokenizers = pytest.importorskip("tokenizers")
transformers = pytest.importorskip("transformers")

FIXED_TEXTS = [
    "",
    " ",
    "Hello, world! It's 2024; we'll see.\n",
    "İstanbul'da ışık; ŞşĞğÇçÖöÜü İIıi. Çanakkale'nin ağaçları, Iğdır'ın dağları!",
    "emoji 😀👍🏽 ❤️ family 👩‍👩‍👧‍👦 flag 🇹🇷 keycap 1️⃣",
    "中文字符测试，日本語のテキスト。",
    "line one\r\nline two\r\n\r\n\ttabbed\t\tand\t \n",
    "long        runs            of spaces   \n\n\n\n   and newlines      ",
    f"doc one{EOT}doc two {EOT} {EOT}{EOT}",
    "numbers 1234567 3.14159 -42 1,000,000 ١٢٣",
    "'S 'LL 'Ve DON'T won't y'all",
    "code: def f(x):\n    return x**2  # square\n",
]

# Code points on which Python's `regex` and Oniguruma (inside `tokenizers`) agree about
# letters, digits and whitespace: both follow Unicode, but possibly different versions.
ALPHABET = "".join(
    [
        *map(chr, range(0x20, 0x7F)),
        "\t\n\r",
        *map(chr, range(0xC0, 0x100)),  # Latin-1 letters
        *map(chr, range(0x100, 0x180)),  # Latin Extended-A: ğ, ş, ı, İ, ...
        *map(chr, range(0x391, 0x3AA)),  # Greek capitals
        *map(chr, range(0x3B1, 0x3CA)),  # Greek small
        *map(chr, range(0x410, 0x450)),  # Cyrillic
        *map(chr, range(0x4E00, 0x4E40)),  # CJK unified ideographs
        *map(chr, range(0x1F600, 0x1F650)),  # emoticons
        "\u200d\ufe0f",  # zero-width joiner, emoji presentation selector
    ]
)
PIECES = st.one_of(
    st.text(alphabet=ALPHABET, min_size=1, max_size=12),
    st.sampled_from(EN_WORDS + TR_ROOTS + TR_NAMES).map(lambda w: " " + w),
    st.sampled_from([" ", "  ", "\n", "\r\n", "\t", "   \n", EOT, "'s", "'ll", "123456"]),
)
TEXTS = st.lists(PIECES, max_size=25).map("".join)


@pytest.fixture(scope="module", params=["gpt2", "gpt4"])
def trained(request, tmp_path_factory):
    """(ours, path) for a tokenizer with more than 1000 merges on ~250 KB of text."""
    tok = train_tokenizer("bpe", corpus(250_000), vocab_size=1400, pattern=request.param)
    assert len(tok.merges) > 1000
    path = tok.save(tmp_path_factory.mktemp(request.param) / "tokenizer.json")
    return tok, path


@pytest.fixture(scope="module")
def hf(trained):
    return tokenizers.Tokenizer.from_file(str(trained[1]))


@pytest.fixture(scope="module")
def fast(trained):
    return transformers.PreTrainedTokenizerFast(tokenizer_file=str(trained[1]))


def _ours(trained, text):
    return trained[0].encode(text, allowed_special=True)


@pytest.mark.parametrize("text", FIXED_TEXTS)
def test_fixed_text_parity(trained, hf, fast, text):
    ids = _ours(trained, text)
    assert ids == hf.encode(text).ids
    assert ids == fast.encode(text, add_special_tokens=False)
    assert hf.decode(ids, skip_special_tokens=False) == text == trained[0].decode(ids)


@settings(deadline=None, max_examples=150)
@given(TEXTS)
def test_generated_text_parity(trained, hf, fast, text):
    ids = _ours(trained, text)
    assert ids == hf.encode(text).ids
    assert ids == fast.encode(text, add_special_tokens=False)


def test_parity_on_the_training_corpus(trained, hf):
    tok, _ = trained
    docs = corpus(40_000, seed=7)
    assert tok.encode_batch(docs) == [e.ids for e in hf.encode_batch(docs)]


def test_reloaded_file_is_the_same_tokenizer(trained):
    tok, path = trained
    back = load_tokenizer(path)
    assert back.merges == tok.merges and back.special_tokens == tok.special_tokens
    assert back.to_json_dict() == tok.to_json_dict()


def test_hf_vocabulary_matches_ours(trained, hf):
    tok, _ = trained
    assert hf.get_vocab_size(with_added_tokens=True) == tok.vocab_size
    assert hf.token_to_id(EOT) == tok.eot_id
    for i in range(0, tok.vocab_size - 1, 37):
        piece = hf.id_to_token(i)
        assert hf.decode([i]) == tok.decode([i]), piece


@pytest.mark.parametrize("pattern", ["gpt2", "gpt4"])
def test_hf_backend_file_read_by_our_encoder(pattern, tmp_path):
    docs = corpus(80_000, seed=5)
    tok = train_tokenizer("bpe", docs, vocab_size=700, backend="hf", pattern=pattern)
    assert isinstance(tok, BPETokenizer) and tok.pattern_name == pattern
    assert tok.vocab_size == 700 and tok.special_tokens == {EOT: 699}
    path = tok.save(tmp_path / "tokenizer.json")
    ours = load_tokenizer(path)
    theirs = tokenizers.Tokenizer.from_file(str(path))
    for text in [*FIXED_TEXTS, *corpus(5_000, seed=9)]:
        assert ours.encode(text, allowed_special=True) == theirs.encode(text).ids


def test_our_encoder_reads_a_file_saved_by_hf(tmp_path):
    """A file written by `tokenizers` itself (not re-serialised by us) loads too."""
    hf_tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    hf_tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(
        add_prefix_space=False, use_regex=True
    )
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=500,
        initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[EOT],
        show_progress=False,
    )
    hf_tok.train_from_iterator(corpus(30_000, seed=11), trainer=trainer)
    path = tmp_path / "tokenizer.json"
    hf_tok.save(str(path))
    ours = load_tokenizer(path)
    assert ours.eot_id == 0 and ours.pattern_name == "gpt2"
    for text in FIXED_TEXTS:
        assert ours.encode(text, allowed_special=True) == hf_tok.encode(text).ids


def test_char_tokenizer_parity(tmp_path):
    tok = train_tokenizer("char", corpus(20_000), unk=True)
    path = tok.save(tmp_path / "tokenizer.json")
    hf_tok = tokenizers.Tokenizer.from_file(str(path))
    fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(path))
    for text in [*corpus(3_000, seed=4), "unseen ✓ € and 😀", f"a{EOT}b\r\n", ""]:
        ids = tok.encode(text, allowed_special=True)
        assert ids == hf_tok.encode(text).ids == fast.encode(text, add_special_tokens=False)
    text = "İstanbul'da ağaç\n"
    assert hf_tok.decode(tok.encode(text)) == text


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_added_special_tokens_parity(trained, tmp_path, kind):
    """Special tokens added after training keep every old id, and `tokenizers` and
    `transformers` read them as single tokens with our ids."""
    base = trained[0] if kind == "bpe" else train_tokenizer("char", corpus(20_000), unk=True)
    chat = ["<|im_start|>", "<|im_end|>", "<INST>", "</INST>"]
    tok = base.with_special_tokens(chat)
    path = tok.save(tmp_path / "tokenizer.json")
    hf_tok = tokenizers.Tokenizer.from_file(str(path))
    fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(path))
    assert hf_tok.get_vocab_size(with_added_tokens=True) == tok.vocab_size
    for s in chat:
        assert hf_tok.token_to_id(s) == tok.special_tokens[s] >= base.vocab_size
    texts = [
        *corpus(3_000, seed=12),
        "<|im_start|>user\nMerhaba<|im_end|>\n<|im_start|>assistant\n",
        f"<INST>soru</INST>cevap{EOT}<INST><INST>x",
        "<|im_start<|im_end|>|>",
    ]
    for text in texts:
        ids = tok.encode(text, allowed_special=True)
        assert ids == hf_tok.encode(text).ids == fast.encode(text, add_special_tokens=False)
        assert hf_tok.decode(ids, skip_special_tokens=False) == tok.decode(ids)
    for text in corpus(3_000, seed=13):
        assert tok.encode(text, allowed_special=True) == base.encode(text, allowed_special=True)


def _merged_bytes(tok: BPETokenizer) -> list[tuple[bytes, bytes]]:
    return [(tok.token_bytes(a), tok.token_bytes(b)) for a, b in tok.merges]


@pytest.mark.parametrize(
    "pattern, min_frequency, vocab_size",
    [("gpt4", 1, 1200), ("gpt2", 2, 50_000), ("gpt4", 3, 50_000), ("gpt2", 1, 50_000)],
)
def test_native_and_hf_trainers_learn_the_same_merges(pattern, min_frequency, vocab_size):
    """Same counts, same tie-break, same stopping rules: the same merges, in the same order,
    whether the vocabulary fills up, runs out of pairs or hits --min-frequency."""
    docs = corpus(40_000, seed=3)
    kwargs = dict(vocab_size=vocab_size, pattern=pattern, min_frequency=min_frequency)
    ours = train_tokenizer("bpe", docs, **kwargs)
    theirs = train_tokenizer("bpe", docs, backend="hf", **kwargs)
    assert len(ours.merges) > 500
    assert _merged_bytes(ours) == _merged_bytes(theirs)
    assert ours.vocab_size == theirs.vocab_size
    assert ours.shortfall == theirs.shortfall
    assert (ours.shortfall is None) == (vocab_size == 1200)
    for text in FIXED_TEXTS:
        assert ours.decode(ours.encode(text)) == theirs.decode(theirs.encode(text))
        assert [ours.token_bytes(i) for i in ours.encode(text)] == [
            theirs.token_bytes(i) for i in theirs.encode(text)
        ]
