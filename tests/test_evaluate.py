"""evaluate: every token after the first scored once, equal to a direct computation; bits per
byte and perplexity on hand-checkable cases, prompt sets, BLEU/chrF."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from tinygpt.core.errors import TinyGPTError
from tinygpt.core.model import GPT, GPTConfig
from tinygpt.data.tokenizer import CharTokenizer
from tinygpt.infer import evaluate as ev
from tinygpt.infer import scoring
from tinygpt.infer.scoring import evaluate, spread_windows, windows


def _scored_targets(n, block, stride=None):
    out = []
    for start, end, frm in windows(n, block, stride):
        out += list(range(start + 1 + frm, end + 1))
    return out


@pytest.mark.parametrize("n", [2, 3, 9, 10, 17, 64, 65])
@pytest.mark.parametrize("stride", [None, 1, 3, 4, 8])
def test_windows_score_each_target_exactly_once(n, stride):
    block = 4 if stride is None or stride < 4 else 8
    assert _scored_targets(n, block, stride) == list(range(1, n))
    for start, end, _ in windows(n, block, stride):
        assert 0 < end - start <= block


def test_windows_with_stride_keep_context():
    for start, end, frm in list(windows(40, 8, stride=2))[1:]:
        assert end - start == 8 and frm >= 6  # each scored token sees >= 6 earlier tokens


def _model(block=8, vocab=11):
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=vocab, block_size=block, n_layer=1, n_head=2, n_embd=16))


def test_evaluate_equals_direct_sum_over_windows():
    model = _model()
    tokens = np.random.default_rng(0).integers(0, 11, size=37).astype(np.uint16)
    res = evaluate(model, tokens, 8, batch_size=3)
    expected = 0.0
    with torch.no_grad():
        for start in range(0, 36, 8):
            end = min(start + 8, 36)
            x = torch.tensor(tokens[start:end], dtype=torch.long)[None]
            y = torch.tensor(tokens[start + 1 : end + 1], dtype=torch.long)
            logits, _ = model(x)
            expected += F.cross_entropy(logits[0], y, reduction="sum").item()
    assert res.tokens == 36
    assert res.nll == pytest.approx(expected, rel=1e-5)
    assert res.loss == pytest.approx(expected / 36, rel=1e-5)
    assert res.perplexity == pytest.approx(math.exp(expected / 36), rel=1e-5)


def test_stride_and_caps():
    model = _model()
    tokens = np.random.default_rng(1).integers(0, 11, size=50)
    full = evaluate(model, tokens, 8)
    slid = evaluate(model, tokens, 8, stride=2)
    assert full.tokens == slid.tokens == 49
    assert slid.loss != full.loss  # more context, another number
    capped = evaluate(model, tokens, 8, max_tokens=20)
    assert capped.tokens == 20
    subset = evaluate(model, tokens, 8, window_ids=[0, 2])
    assert subset.tokens == 16


def test_spread_windows():
    assert spread_windows(10, 4, 10) == [0, 1, 2]
    ids = spread_windows(1001, 10, 5)
    assert ids[0] == 0 and ids[-1] == 99 and len(ids) == 5


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
    assert scoring.token_byte_lengths(tok).tolist() == [1, 1, 1, 2, 2, 4, 0]


def test_uniform_model_bpb_is_hand_checkable(tok):
    docs = ["aé ğ", "😀a"]
    tokens = ev.encode_documents(docs, tok)
    # a é ␣ ğ <eot> 😀 a <eot>: the targets are everything after the first token.
    assert tokens.tolist() == [2, 3, 1, 4, 6, 5, 2, 6]
    r = scoring.score_tokens(Uniform(tok.vocab_size), tokens, tok, block_size=3)
    V = tok.vocab_size
    assert r.tokens == 7
    assert r.bytes == 2 + 1 + 2 + 0 + 4 + 1 + 0  # é ␣ ğ eot 😀 a eot
    assert r.val_loss == pytest.approx(math.log(V))
    assert r.val_ppl == pytest.approx(V)
    assert r.val_bpb == pytest.approx(7 * math.log(V) / math.log(2) / 10)


def test_eot_target_loss_counts_but_has_no_bytes(tok):
    # Only targets are [eot]: all of the loss, none of the bytes.
    tokens = np.array([2, 6])
    r = scoring.score_tokens(Peaked(tok.vocab_size, 6, 0.5), tokens, tok, block_size=4)
    assert r.tokens == 1 and r.bytes == 0
    assert r.val_loss == pytest.approx(math.log(2))
    assert math.isnan(r.val_bpb)
    tokens = np.array([2, 6, 3])  # eot then é: 2 bytes carry both targets' loss
    r = scoring.score_tokens(Peaked(tok.vocab_size, 6, 0.5), tokens, tok, block_size=4)
    q = 0.5 / (tok.vocab_size - 1)
    assert r.bytes == 2
    assert r.val_bpb == pytest.approx((math.log(2) - math.log(q)) / math.log(2) / 2)


def test_stride_and_max_tokens_count_the_scored_bytes(tok):
    tokens = np.array([2, 3, 4, 5, 2, 3, 4, 5, 6, 2])
    full = scoring.score_tokens(Uniform(7), tokens, tok, block_size=4)
    strided = scoring.score_tokens(Uniform(7), tokens, tok, block_size=4, stride=2)
    assert full.bytes == strided.bytes == 2 + 2 + 4 + 1 + 2 + 2 + 4 + 0 + 1
    capped = scoring.score_tokens(Uniform(7), tokens, tok, block_size=4, max_tokens=3)
    assert capped.tokens == 3 and capped.bytes == 2 + 2 + 4


@settings(deadline=None, max_examples=25)
@given(st.lists(st.integers(0, 6), min_size=2, max_size=40), st.integers(1, 8))
def test_uniform_bpb_property(ids, block):
    tok = CharTokenizer(["\n", " ", "a", "é", "ğ", "😀"])
    tokens = np.array(ids)
    r = scoring.score_tokens(Uniform(7), tokens, tok, block_size=block)
    n_bytes = sum(len(tok.token_bytes(i)) for i in ids[1:])
    assert r.bytes == n_bytes and r.tokens == len(ids) - 1
    if n_bytes:
        assert r.val_bpb == pytest.approx((len(ids) - 1) * math.log(7) / math.log(2) / n_bytes)


def test_bad_inputs(tok):
    with pytest.raises(TinyGPTError, match="empty"):
        ev.encode_documents(["", ""], tok)
    with pytest.raises(TinyGPTError, match="at least 2"):
        scoring.score_tokens(Uniform(7), np.array([2]), tok, block_size=4)
    with pytest.raises(TinyGPTError, match="--stride"):
        scoring.score_tokens(Uniform(7), np.array([2, 3, 4]), tok, block_size=4, stride=9)
    with pytest.raises(TinyGPTError, match="--max-tokens"):
        scoring.score_tokens(Uniform(7), np.array([2, 3, 4]), tok, block_size=4, max_tokens=0)


def test_text_scores_identical_is_100():
    refs = ["the cat sat on the mat", "to be or not to be"]
    s = ev.text_scores(refs, refs)
    assert s["bleu"] == pytest.approx(100.0) and s["chrf"] == pytest.approx(100.0)
    low = ev.text_scores(["zzz qqq", "xx yy"], refs)
    assert low["bleu"] < 10 and low["chrf"] < 30


def test_make_prompts_skips_document_boundaries(tok, tmp_path):
    tokens = ev.encode_documents(["aé ğaé ğaé", "😀a 😀a 😀a 😀"], tok)
    recs = ev.make_prompts(tokens, tok, 3, 2, count=4)
    assert recs
    for r in recs:
        assert len(tok.encode(r["prompt"])) == 3 and len(tok.encode(r["reference"])) == 2
        assert "<|endoftext|>" not in r["prompt"] + r["reference"]
    path = ev.write_prompts(tmp_path / "p.jsonl", recs)
    assert ev.read_prompts(path) == recs
    with pytest.raises(TinyGPTError, match="K,M"):
        ev.make_prompts(tokens, tok, 0, 2)
    with pytest.raises(TinyGPTError, match="fewer than one prompt"):
        ev.make_prompts(tokens, tok, 30, 30)


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
        ev.read_prompts(path)
    with pytest.raises(TinyGPTError, match="does not exist"):
        ev.read_prompts(tmp_path / "missing.jsonl")


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
    scores = ev.evaluate_generation(gen, prompts, tmp_path)
    assert scores["bleu"] == pytest.approx(100.0) and scores["prompts"] == 2
    rows = [json.loads(x) for x in (tmp_path / "generations.jsonl").read_text().splitlines()]
    assert [r["generation"] for r in rows] == [p["reference"] for p in prompts]
    assert json.loads((tmp_path / "scores.json").read_text())["chrf"] == pytest.approx(100.0)


def test_per_line_scores_each_line_and_its_closing_end_of_text(tok):
    """Uniform over 7 ids: every scored target costs ln 7. Line "aé" is [eot, a, é, eot]:
    3 targets (a, é, the closing eot), 1 + 2 + 0 bytes."""
    lines = ["aé", " ğ😀 a", "a" * 30]  # the last is longer than the context: windows
    result = scoring.score_lines(Uniform(7), lines, tok, block_size=8, batch_size=2)
    targets = sum(len(line) + 1 for line in lines)
    assert result.tokens == targets and result.lines == 3
    assert result.val_loss == pytest.approx(math.log(7))
    assert result.bytes == 3 + (1 + 2 + 4 + 1 + 1) + 30
    assert result.val_bpb == pytest.approx(targets * math.log(7) / math.log(2) / result.bytes)
    # a line's context is only its own: the same line scores the same wherever it is
    peaked = Peaked(7, favourite=2, p=0.5)
    a = scoring.score_lines(peaked, ["a a", "ğ"], tok, block_size=8)
    b = scoring.score_lines(peaked, ["ğ", "a a"], tok, block_size=8)
    assert a.nll == pytest.approx(b.nll)
    with pytest.raises(TinyGPTError, match="no lines of text"):
        scoring.score_lines(Uniform(7), [], tok, block_size=8)


def test_per_line_from_the_command_line(tmp_path, capsys):
    from tinygpt.cli import main
    from tinygpt.core.config import RunConfig
    from tinygpt.infer.loader import save_model_run

    torch.manual_seed(0)
    config = RunConfig(model=GPTConfig(vocab_size=7, block_size=8, n_layer=1, n_head=1, n_embd=8))
    save_model_run(
        tmp_path / "run", config, GPT(config.model), CharTokenizer(["\n", " ", "a", "é", "ğ", "😀"])
    )
    lines = tmp_path / "lines.txt"
    lines.write_text("aé\n\n ğ a\n", encoding="utf-8")
    assert main(["eval", str(tmp_path / "run"), "--input", str(lines), "--per-line", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["lines"] == 2 and out["tokens"] == 3 + 5  # the blank line is not a line
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n", encoding="utf-8")
    for argv, message in [
        (["--input", str(empty), "--per-line"], "no lines of text"),
        (["--per-line"], "give --input FILE"),
        (["--input", str(lines), "--per-line", "--stride", "2"], "drop --stride"),
    ]:
        assert main(["eval", str(tmp_path / "run"), *argv]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1
