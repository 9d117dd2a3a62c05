"""metrics: bits per byte and perplexity on hand-checkable cases, prompt sets, BLEU/chrF."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tinygpt import metrics
from tinygpt.errors import TinyGPTError
from tinygpt.tokenizer import CharTokenizer


class Uniform(torch.nn.Module):
    """Every next token equally likely: the loss of every target is exactly ln V."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.vocab = vocab

    def forward(self, idx, targets=None):
        return torch.zeros(*idx.shape, self.vocab), None


class Peaked(torch.nn.Module):
    """Gives token `favourite` probability p and spreads the rest evenly."""

    def __init__(self, vocab: int, favourite: int, p: float) -> None:
        super().__init__()
        self.vocab, self.favourite, self.p = vocab, favourite, p

    def forward(self, idx, targets=None):
        probs = torch.full((self.vocab,), (1 - self.p) / (self.vocab - 1))
        probs[self.favourite] = self.p
        return probs.log().expand(*idx.shape, self.vocab).clone(), None


@pytest.fixture
def tok():
    return CharTokenizer(["\n", " ", "a", "é", "ğ", "😀"])  # 1, 1, 1, 2, 2, 4 bytes; eot = 6


def test_byte_lengths(tok):
    assert metrics.token_byte_lengths(tok).tolist() == [1, 1, 1, 2, 2, 4, 0]


def test_uniform_model_bpb_is_hand_checkable(tok):
    docs = ["aé ğ", "😀a"]
    tokens = metrics.encode_documents(docs, tok)
    # a é ␣ ğ <eot> 😀 a <eot>: the targets are everything after the first token.
    assert tokens.tolist() == [2, 3, 1, 4, 6, 5, 2, 6]
    r = metrics.score_tokens(Uniform(tok.vocab_size), tokens, tok, block_size=3)
    V = tok.vocab_size
    assert r.tokens == 7
    assert r.bytes == 2 + 1 + 2 + 0 + 4 + 1 + 0  # é ␣ ğ eot 😀 a eot
    assert r.val_loss == pytest.approx(math.log(V))
    assert r.val_ppl == pytest.approx(V)
    assert r.val_bpb == pytest.approx(7 * math.log(V) / math.log(2) / 10)


def test_eot_target_loss_counts_but_has_no_bytes(tok):
    # Only targets are [eot]: all of the loss, none of the bytes.
    tokens = np.array([2, 6])
    r = metrics.score_tokens(Peaked(tok.vocab_size, 6, 0.5), tokens, tok, block_size=4)
    assert r.tokens == 1 and r.bytes == 0
    assert r.val_loss == pytest.approx(math.log(2))
    assert math.isnan(r.val_bpb)
    tokens = np.array([2, 6, 3])  # eot then é: 2 bytes carry both targets' loss
    r = metrics.score_tokens(Peaked(tok.vocab_size, 6, 0.5), tokens, tok, block_size=4)
    q = 0.5 / (tok.vocab_size - 1)
    assert r.bytes == 2
    assert r.val_bpb == pytest.approx((math.log(2) - math.log(q)) / math.log(2) / 2)


def test_stride_and_max_tokens_count_the_scored_bytes(tok):
    tokens = np.array([2, 3, 4, 5, 2, 3, 4, 5, 6, 2])
    full = metrics.score_tokens(Uniform(7), tokens, tok, block_size=4)
    strided = metrics.score_tokens(Uniform(7), tokens, tok, block_size=4, stride=2)
    assert full.bytes == strided.bytes == 2 + 2 + 4 + 1 + 2 + 2 + 4 + 0 + 1
    capped = metrics.score_tokens(Uniform(7), tokens, tok, block_size=4, max_tokens=3)
    assert capped.tokens == 3 and capped.bytes == 2 + 2 + 4


@settings(deadline=None, max_examples=25)
@given(st.lists(st.integers(0, 6), min_size=2, max_size=40), st.integers(1, 8))
def test_uniform_bpb_property(ids, block):
    tok = CharTokenizer(["\n", " ", "a", "é", "ğ", "😀"])
    tokens = np.array(ids)
    r = metrics.score_tokens(Uniform(7), tokens, tok, block_size=block)
    n_bytes = sum(len(tok.token_bytes(i)) for i in ids[1:])
    assert r.bytes == n_bytes and r.tokens == len(ids) - 1
    if n_bytes:
        assert r.val_bpb == pytest.approx((len(ids) - 1) * math.log(7) / math.log(2) / n_bytes)


def test_bad_inputs(tok):
    with pytest.raises(TinyGPTError, match="empty"):
        metrics.encode_documents(["", ""], tok)
    with pytest.raises(TinyGPTError, match="at least 2"):
        metrics.score_tokens(Uniform(7), np.array([2]), tok, block_size=4)
    with pytest.raises(TinyGPTError, match="--stride"):
        metrics.score_tokens(Uniform(7), np.array([2, 3, 4]), tok, block_size=4, stride=9)
    with pytest.raises(TinyGPTError, match="--max-tokens"):
        metrics.score_tokens(Uniform(7), np.array([2, 3, 4]), tok, block_size=4, max_tokens=0)


def test_text_scores_identical_is_100():
    refs = ["the cat sat on the mat", "to be or not to be"]
    s = metrics.text_scores(refs, refs)
    assert s["bleu"] == pytest.approx(100.0) and s["chrf"] == pytest.approx(100.0)
    low = metrics.text_scores(["zzz qqq", "xx yy"], refs)
    assert low["bleu"] < 10 and low["chrf"] < 30


def test_make_prompts_skips_document_boundaries(tok, tmp_path):
    tokens = metrics.encode_documents(["aé ğaé ğaé", "😀a 😀a 😀a 😀"], tok)
    recs = metrics.make_prompts(tokens, tok, 3, 2, count=4)
    assert recs
    for r in recs:
        assert len(tok.encode(r["prompt"])) == 3 and len(tok.encode(r["reference"])) == 2
        assert "<|endoftext|>" not in r["prompt"] + r["reference"]
    path = metrics.write_prompts(tmp_path / "p.jsonl", recs)
    assert metrics.read_prompts(path) == recs
    with pytest.raises(TinyGPTError, match="K,M"):
        metrics.make_prompts(tokens, tok, 0, 2)
    with pytest.raises(TinyGPTError, match="fewer than one prompt"):
        metrics.make_prompts(tokens, tok, 30, 30)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"prompt": "a", "reference": "b"}\n{not json\n', r"p\.jsonl:2: not valid JSON"),
        ('{"prompt": "a"}\n', r"p\.jsonl:1: each line must be"),
        ('{"prompt": 1, "reference": "b"}\n', r"p\.jsonl:1: each line must be"),
        ("\n\n", "holds no prompts"),
    ],
)
def test_read_prompts_errors(tmp_path, content, message):
    path = tmp_path / "p.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(TinyGPTError, match=message):
        metrics.read_prompts(path)
    with pytest.raises(TinyGPTError, match="does not exist"):
        metrics.read_prompts(tmp_path / "missing.jsonl")


class Echo:
    """A generator that returns the reference it is shown (via a lookup)."""

    def __init__(self, tok, answers):
        self.tokenizer, self.answers = tok, answers

    def generate(self, prompt, **kw):
        return self.answers[prompt]


def test_evaluate_generation_writes_files(tok, tmp_path):
    prompts = [
        {"prompt": "a", "reference": "é ğ a é a ğ"},
        {"prompt": "é", "reference": "a a é ğ ğ a"},
    ]
    gen = Echo(tok, {p["prompt"]: p["reference"] for p in prompts})
    scores = metrics.evaluate_generation(gen, prompts, tmp_path)
    assert scores["bleu"] == pytest.approx(100.0) and scores["prompts"] == 2
    rows = [json.loads(x) for x in (tmp_path / "generations.jsonl").read_text().splitlines()]
    assert [r["generation"] for r in rows] == [p["reference"] for p in prompts]
    assert json.loads((tmp_path / "scores.json").read_text())["chrf"] == pytest.approx(100.0)
