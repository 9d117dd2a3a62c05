"""Batch sources: random windows as nanoGPT draws them, their epoch count, and a position
that survives a round trip through a checkpoint's state."""

from __future__ import annotations

import json

import numpy as np
import torch

from tinygpt.core.runtime import Dist
from tinygpt.data.batches import RandomWindows


def _windows(seed=3, world=Dist()):
    tokens = np.arange(1000, dtype=np.uint16)
    return RandomWindows(tokens, block_size=8, global_batch=4, seed=seed, dist=world, device="cpu")


def test_windows_are_inputs_and_next_tokens():
    x, y = _windows().next()
    assert x.shape == y.shape == (4, 8) and x.dtype == torch.long
    assert torch.equal(y, x + 1)  # the token array counts up, so targets are inputs + 1


def test_epochs_count_tokens_drawn_over_the_split():
    source = _windows()
    for _ in range(25):
        source.next()
    assert source.epochs == 25 * 4 * 8 / 1000


def test_position_round_trip_continues_the_same_batches():
    a = _windows()
    for _ in range(3):
        a.next()
    state, tensors = a.state()
    state = json.loads(json.dumps(state))  # it goes through state.json
    ahead = [a.next() for _ in range(3)]
    b = _windows(seed=99)  # another seed: everything must come from the saved state
    b.restore(state, tensors)
    assert b.epochs == 3 * 4 * 8 / 1000
    for (xa, ya), (xb, yb) in zip(ahead, [b.next() for _ in range(3)]):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_ranks_split_one_global_batch():
    whole = _windows().next()[0]
    parts = [_windows(world=Dist(rank=r, world_size=2)).next()[0] for r in (0, 1)]
    assert torch.equal(whole[0::2], parts[0]) and torch.equal(whole[1::2], parts[1])
