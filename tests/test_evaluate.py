"""evaluate(): every token after the first scored once, equal to a direct computation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tinygpt.evaluate import evaluate, spread_windows, windows
from tinygpt.model import GPT, GPTConfig


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
