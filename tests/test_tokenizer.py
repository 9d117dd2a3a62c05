"""Tokenizers: round trips, known answers, the incremental trainer, files and bad input."""

from __future__ import annotations

import json
from collections import Counter
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinygpt.core.errors import TinyGPTError
from tinygpt.data.tokenizer import (
    EOT,
    UNK,
    BPETokenizer,
    CharTokenizer,
    file_hash,
    load_tokenizer,
    train_tokenizer,
)
from tinygpt.data.tokenizer.bpe import (
    PATTERNS,
    MergeStats,
    bytes_to_unicode,
    count_chunks,
    learn_merges,
)
from tinygpt.data.tokenizer.merges import _tie_keys
from tokenizer_text import corpus


@pytest.fixture(scope="module")
def docs() -> list[str]:
    return corpus(60_000, seed=1)


@pytest.fixture(scope="module")
def bpe(docs) -> BPETokenizer:
    return train_tokenizer("bpe", docs, vocab_size=800, pattern="gpt4")


# --- char ---------------------------------------------------------------------------------


def test_char_vocabulary_is_sorted_characters_then_specials():
    tok = train_tokenizer("char", ["hello", "world\n"])
    assert tok.kind == "char"
    assert tok.chars == sorted(set("helloworld\n"))
    assert tok.special_tokens == {EOT: 8}
    assert tok.eot_id == 8 and tok.vocab_size == 9
    assert tok.encode("hold") == [tok.chars.index(c) for c in "hold"]
    assert tok.token_bytes(tok.eot_id) == b""


def test_char_unseen_character_is_an_error_naming_it():
    tok = train_tokenizer("char", ["abc"])
    with pytest.raises(TinyGPTError, match=r"character 'z' \(U\+007A\) at position 2"):
        tok.encode("abz")


def test_char_unk_maps_unseen_characters():
    tok = train_tokenizer("char", ["abc"], unk=True)
    assert tok.special_tokens == {EOT: 3, UNK: 4}
    assert tok.encode("azb") == [0, 4, 1]
    assert tok.decode([0, 4, 1]) == f"a{UNK}b"


def test_char_special_tokens_only_when_allowed():
    tok = train_tokenizer("char", ["<|endoftext|> ab"])
    plain = tok.encode(f"a{EOT}b")
    assert len(plain) == 2 + len(EOT) and tok.eot_id not in plain
    assert tok.encode(f"a{EOT}b", allowed_special=True) == [
        tok.stoi["a"],
        tok.eot_id,
        tok.stoi["b"],
    ]


CHAR_ALPHABET = "abcİıŞşĞğ é😀\n\r\t中"


@settings(deadline=None, max_examples=60)
@given(st.text(alphabet=CHAR_ALPHABET, max_size=80))
def test_char_round_trip(text):
    tok = CharTokenizer(sorted(set(CHAR_ALPHABET)))
    assert tok.decode(tok.encode(text)) == text


def test_char_save_load(tmp_path):
    tok = train_tokenizer("char", ["İstanbul 😀\r\n"], unk=True)
    path = tok.save(tmp_path / "tokenizer.json")
    back = load_tokenizer(path)
    assert isinstance(back, CharTokenizer)
    assert back.chars == tok.chars and back.special_tokens == tok.special_tokens
    assert back.encode("İs😀?") == tok.encode("İs😀?")
    assert load_tokenizer(tmp_path).vocab_size == tok.vocab_size  # a folder works too


# --- bpe: known answer and the trainer --------------------------------------------------


def test_bpe_known_answer():
    # "aaabdaaabac" is one chunk (all letters). Bytes: a=97 b=98 c=99 d=100.
    # Pairs: aa x4, ab x2, bd da ba ac x1.            -> merge 256 = (a, a)
    # Left to right: [aa] a b d [aa] a b a c.
    # Pairs: (aa,a) x2, (a,b) x2, others x1. Tie at 2: (97, 98) < (256, 97)
    #                                                   -> merge 257 = (a, b)
    # [aa][ab] d [aa][ab] a c. Pairs: (aa,ab) x2        -> merge 258 = (256, 257) "aaab"
    # [aaab] d [aaab] a c. All pairs x1: (258,100) (100,258) (258,97) (97,99);
    # the smallest is (97, 99)                          -> merge 259 = (a, c)
    # [aaab] d [aaab][ac]: (258,100) (100,258) (258,259) x1; smallest (100, 258)
    #                                                   -> merge 260 = (d, aaab) "daaab"
    tok = train_tokenizer("bpe", ["aaabdaaabac"], vocab_size=256 + 5 + 1, pattern="gpt2")
    assert tok.merges == [(97, 97), (97, 98), (256, 257), (97, 99), (100, 258)]
    assert [tok.token_bytes(i) for i in range(256, 261)] == [b"aa", b"ab", b"aaab", b"ac", b"daaab"]
    assert tok.special_tokens == {EOT: 261}
    assert tok.encode("aaabdaaabac") == [258, 260, 259]
    assert tok.encode("abab aa") == [257, 257, 32, 256]


def naive_merges(chunk_counts: dict[bytes, int], num_tokens: int):
    """Reference trainer: recount every pair over every chunk before each merge."""
    key = _tie_keys()
    vocab = [bytes([b]) for b in range(256)]
    words = [(list(c), f) for c, f in chunk_counts.items()]
    merges, touched = [], []
    while len(vocab) < num_tokens:
        counts: Counter = Counter()
        for w, f in words:
            for p in pairwise(w):
                counts[p] += f
        if not counts:
            break
        a, b = min(counts, key=lambda p: (-counts[p], key[p[0]], key[p[1]]))
        joined = vocab[a] + vocab[b]
        new = vocab.index(joined) if joined in vocab else len(vocab)
        if new == len(vocab):
            vocab.append(joined)
            key.append(new)
        merges.append((a, b, new))
        n_touched = 0
        for k, (w, f) in enumerate(words):
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and w[i] == a and w[i + 1] == b:
                    out.append(new)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            n_touched += len(out) != len(w)
            words[k] = (out, f)
        touched.append(n_touched)
    return merges, vocab, touched


@pytest.mark.parametrize("pattern", ["gpt2", "gpt4"])
def test_incremental_trainer_matches_full_recount(pattern):
    docs = corpus(15_000, seed=3)
    counts = Counter()
    for chunk, c in count_chunks(docs, PATTERNS[pattern]).items():
        counts[chunk.encode("utf-8")] += c
    stats = MergeStats()
    merges, vocab = learn_merges(counts, 256 + 400, stats=stats)
    ref_merges, ref_vocab, ref_touched = naive_merges(counts, 256 + 400)
    assert merges == ref_merges
    assert vocab == ref_vocab
    # The incremental trainer rewrote exactly the chunks that held each pair, no others...
    assert stats.words_touched == ref_touched
    # ...which is a small fraction of what a full pass per merge would visit.
    assert sum(stats.words_touched) < 0.1 * len(merges) * stats.chunk_types


def test_vocabulary_entries_hold_distinct_bytes(bpe):
    seen = [bpe.token_bytes(i) for i in range(bpe.vocab_size) if not bpe.is_special(i)]
    assert len(seen) == len(set(seen)) == bpe.vocab_size - 1
    assert sorted(seen[:256]) == [bytes([b]) for b in range(256)]


def test_bpe_sizes_and_specials(docs):
    tok = train_tokenizer("bpe", docs, vocab_size=600, special_tokens=["<|user|>"])
    assert tok.vocab_size == 600
    assert tok.special_tokens == {EOT: 598, "<|user|>": 599}
    assert len(tok.merges) == 600 - 256 - 2
    text = f"Hello{EOT}<|user|> ev"
    ids = tok.encode(text, allowed_special=True)
    assert ids.count(598) == 1 and ids.count(599) == 1
    # Ordinary encoding never yields a special id, whatever the text holds.
    assert not {598, 599} & set(tok.encode(text))
    assert tok.decode(ids) == text == tok.decode(tok.encode(text))


def test_bpe_is_deterministic(docs):
    a = train_tokenizer("bpe", docs, vocab_size=500)
    b = train_tokenizer("bpe", list(docs), vocab_size=500)
    assert a.merges == b.merges


def test_bpe_merges_stop_at_chunk_boundaries():
    tok = train_tokenizer("bpe", ["ab ab ab ab"], vocab_size=270, pattern="gpt2")
    # " ab" is a chunk; "b " never forms because space starts the next chunk.
    assert all(tok.token_bytes(i)[-1:] != b" " for i in range(256, tok.vocab_size - 1))


@settings(deadline=None, max_examples=80)
@given(st.text(st.characters(exclude_categories=("Cs",)), max_size=120))
def test_bpe_round_trip_any_unicode(bpe, text):
    assert bpe.decode(bpe.encode(text)) == text
    assert bpe.decode(bpe.encode(text, allowed_special=True)) == text


def test_bpe_decode_of_a_split_character_is_replacement(bpe):
    assert "ş".encode() == b"\xc5\x9f"
    # In our layout token id b is the single byte b.
    assert bpe.decode([0xC5]) == "\ufffd"
    assert bpe.decode([0xC5, 0x9F]) == "ş"
    assert bpe.piece(0xC5) == repr(b"\xc5")
    assert bpe.piece(bpe.encode(" the")[0]) == repr(" the")
    assert bpe.piece(bpe.eot_id) == EOT


def test_bytes_to_unicode_is_gpt2s():
    m = bytes_to_unicode()
    assert len(set(m.values())) == 256
    assert (m[32], m[10], m[0], m[255]) == ("Ġ", "Ċ", "Ā", "ÿ")


def test_bpe_save_load_and_hash(bpe, tmp_path):
    path = bpe.save(tmp_path / "t.json")
    back = load_tokenizer(path)
    assert isinstance(back, BPETokenizer) and back.pattern_name == "gpt4"
    text = "İstanbul'da 3 kedi, 12345 köpek.\r\n<|endoftext|>"
    assert back.encode(text, allowed_special=True) == bpe.encode(text, allowed_special=True)
    h = file_hash(path)
    assert len(h) == 64 and h == file_hash(path)
    bpe.save(tmp_path / "u.json")
    assert file_hash(tmp_path / "u.json") == h  # saving is deterministic
    train_tokenizer("bpe", ["other text"], vocab_size=300).save(tmp_path / "v.json")
    assert file_hash(tmp_path / "v.json") != h


# --- special tokens added later (chat markers for fine-tuning) ----------------------------

CHAT = ["<|user|>", "<|assistant|>", "<|end|>"]


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_with_special_tokens_appends_ids_and_keeps_old_ones(kind, bpe, docs, tmp_path):
    base = bpe if kind == "bpe" else train_tokenizer("char", docs, unk=True)
    tok = base.with_special_tokens([*CHAT, EOT, CHAT[0]])  # known and repeated ones skipped
    assert type(tok) is type(base) and base.special_tokens == dict(base.special_tokens)
    n = base.vocab_size
    assert tok.vocab_size == n + 3
    assert tok.special_tokens == {**base.special_tokens, **{s: n + k for k, s in enumerate(CHAT)}}
    text = docs[0] + "".join(CHAT)
    assert tok.encode(text) == base.encode(text)  # specials off: the same ids as before
    ids = tok.encode(f"<|user|>{docs[1]}<|end|>", allowed_special=True)
    assert ids == [n, *base.encode(docs[1]), n + 2]
    assert tok.decode(ids) == f"<|user|>{docs[1]}<|end|>"
    assert tok.with_special_tokens(CHAT) is tok  # nothing missing: the same tokenizer
    back = load_tokenizer(tok.save(tmp_path / "tokenizer.json"))
    assert back.special_tokens == tok.special_tokens and back.vocab_size == tok.vocab_size
    assert back.encode(text, allowed_special=True) == tok.encode(text, allowed_special=True)
    assert back.to_json_dict() == tok.to_json_dict()
    # Added twice in two steps gives the same tokenizer as in one step.
    twice = base.with_special_tokens(CHAT[:1]).with_special_tokens(CHAT)
    assert twice.to_json_dict() == tok.to_json_dict()


def test_with_special_tokens_refuses_ordinary_tokens_and_empty_strings(bpe):
    char = train_tokenizer("char", ["ab<>"])
    with pytest.raises(TinyGPTError, match="'a' is already the ordinary token 2"):
        char.with_special_tokens(["a"])
    with pytest.raises(TinyGPTError, match=r"'x' is already the ordinary token \d+"):
        bpe.with_special_tokens(["x"])
    with pytest.raises(TinyGPTError, match="non-empty string"):
        bpe.with_special_tokens([""])
    with pytest.raises(TinyGPTError, match="<unk> is not an extra special token"):
        char.with_special_tokens([UNK])
    assert char.with_special_tokens(["<a>"]).special_tokens["<a>"] == char.vocab_size


def test_char_file_with_misplaced_special_is_refused(tmp_path):
    tok = train_tokenizer("char", ["ab"]).with_special_tokens(["<x>", "<y>"])
    data = tok.to_json_dict()
    for entry in data["added_tokens"]:
        if entry["content"] == "<y>":
            entry["id"] = 9
    data["model"]["vocab"]["<y>"] = 9
    (tmp_path / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(TinyGPTError, match="do not follow the character layout"):
        load_tokenizer(tmp_path)


@pytest.mark.parametrize("backend", ["native", "hf"])
def test_min_frequency_stops_merging_and_says_why(backend):
    # In "aaabdaaabac" (see the known answer above) only the first three merges join pairs
    # seen twice or more; after them every pair occurs once.
    tok = train_tokenizer(
        "bpe", ["aaabdaaabac"], vocab_size=300, pattern="gpt2", min_frequency=2, backend=backend
    )
    assert [tok.token_bytes(i) for i in range(256, 259)] == [b"aa", b"ab", b"aaab"]
    assert tok.vocab_size == 256 + 3 + 1
    assert tok.shortfall == (
        "the BPE vocabulary stopped at 260 of the 300 ids asked: no pair of adjacent tokens "
        "occurs 2 times or more (--min-frequency 2); give more text, lower --min-frequency, "
        "or ask for --vocab-size 260 or less to silence this"
    )


@pytest.mark.parametrize("backend", ["native", "hf"])
def test_vocabulary_that_runs_out_of_pairs_says_why(backend):
    tok = train_tokenizer("bpe", ["ab ab abc"], vocab_size=1000, pattern="gpt2", backend=backend)
    # Chunks "ab", " ab", " abc": once each is one token, nothing is left to merge.
    assert tok.encode("ab ab abc") == [tok.encode("ab")[0], *tok.encode(" ab abc")]
    assert len(tok.encode(" abc")) == 1
    assert tok.shortfall.startswith(
        f"the BPE vocabulary stopped at {tok.vocab_size} of the 1,000 ids asked: every word "
        "(pre-split chunk) of the training text is already a single token"
    )
    full = train_tokenizer("bpe", ["ab ab abc"], vocab_size=258, backend=backend)
    assert full.vocab_size == 258 and full.shortfall is None


def test_min_frequency_stop_reason_in_stats():
    stats = MergeStats()
    learn_merges({b"aaab": 1, b"ab": 2}, 300, min_frequency=2, stats=stats)
    assert stats.stop == "min_frequency"
    learn_merges({b"aaab": 1, b"ab": 2}, 300, stats=stats)
    assert stats.stop == "no_pairs"
    learn_merges({b"aaab": 1, b"ab": 2}, 257, stats=stats)
    assert stats.stop == "size"


# --- bad input --------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["native", "hf"])
def test_bpe_vocab_too_small(backend):
    with pytest.raises(TinyGPTError, match=r"vocabulary size 256 is too small.*257 or more"):
        train_tokenizer("bpe", ["hello"], vocab_size=256, backend=backend)
    with pytest.raises(TinyGPTError, match=r"258 or more"):
        train_tokenizer(
            "bpe", ["hello"], vocab_size=257, special_tokens=["<|user|>"], backend=backend
        )
    with pytest.raises(TinyGPTError, match=r"unknown pre-split pattern"):
        train_tokenizer("bpe", ["hello"], pattern="gpt5", backend=backend)


def test_unknown_pattern_kind_backend():
    with pytest.raises(TinyGPTError, match=r"unknown pre-split pattern 'gpt3'.*gpt2, gpt4"):
        train_tokenizer("bpe", ["hello"], vocab_size=300, pattern="gpt3")
    with pytest.raises(TinyGPTError, match=r"unknown tokenizer kind 'word'"):
        train_tokenizer("word", ["hello"])
    with pytest.raises(TinyGPTError, match=r"unknown backend 'rust'"):
        train_tokenizer("bpe", ["hello"], backend="rust")
    with pytest.raises(TinyGPTError, match=r"--min-frequency must be at least 1, got 0"):
        train_tokenizer("bpe", ["hello"], min_frequency=0)
    with pytest.raises(TinyGPTError, match=r"--min-frequency applies to the bpe tokenizer"):
        train_tokenizer("char", ["hello"], min_frequency=2)


@pytest.mark.parametrize("kind", ["char", "bpe"])
@pytest.mark.parametrize("texts", [[], ["", ""]])
def test_empty_training_text(kind, texts):
    with pytest.raises(TinyGPTError, match="training text is empty"):
        train_tokenizer(kind, texts)


def test_decode_out_of_range(bpe):
    with pytest.raises(TinyGPTError, match=r"token id 800 is out of range.*0\.\.799"):
        bpe.decode([1, 800])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("not json at all", "is not a tokenizer.json \\(not valid JSON"),
        ('{"hello": 1}', "is not a tokenizer.json \\(no 'model' section\\)"),
        ('{"model": {"type": "Unigram", "vocab": []}}', "model 'Unigram' is not supported"),
        ('{"model": {"type": "BPE", "vocab": {"a": 0}}}', "unsupported pre-tokenizer"),
    ],
)
def test_load_rejects_files_that_are_not_tokenizers(tmp_path, content, message):
    path = tmp_path / "tokenizer.json"
    path.write_text(content)
    with pytest.raises(TinyGPTError, match=message):
        load_tokenizer(path)


def test_load_missing_file(tmp_path):
    with pytest.raises(TinyGPTError, match="does not exist"):
        load_tokenizer(tmp_path / "nope.json")


def test_load_rejects_bpe_without_all_bytes(bpe, tmp_path):
    data = bpe.to_json_dict()
    del data["model"]["vocab"]["Ġ"]
    data["model"]["merges"] = []
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(data))
    with pytest.raises(TinyGPTError, match="lacks the single byte"):
        load_tokenizer(path)
