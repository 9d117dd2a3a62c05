"""Evaluation: the loss of a model on a token sequence, computed one way everywhere.

`evaluate()` scores a 1-D array of token ids with a model whose context is `block_size`:

- Default (`stride=None`): non-overlapping windows of `block_size` tokens cover the whole
  sequence, the last partial window included; inside a window, position t predicts token
  t+1. Every token after the very first is scored exactly once, each with the context that
  its window gives it (between 0 and block_size−1 earlier tokens).
- `stride=S` (< block_size): sliding windows advanced by S tokens; each window scores only
  its last S targets (the first window scores all of its own), so every token is still
  scored once but with at least block_size−S tokens of context — closer to the model's
  best, and slower.

Training uses it with `windows=` for a cheap fixed estimate (`val_loss_est`) and on the full
split at the end (`val_loss`). It knows nothing about optimisers or run folders.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from tinygpt.errors import TinyGPTError


@dataclass
class EvalResult:
    """Summed negative log-likelihood (nats) over `tokens` scored targets."""

    nll: float
    tokens: int
    first: int = 1  # index in the sequence of the first scored target
    last: int = 0  # one past the index of the last scored target

    @property
    def loss(self) -> float:
        return self.nll / self.tokens if self.tokens else float("nan")

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss) if self.tokens else float("nan")


def windows(n: int, block_size: int, stride: int | None = None) -> Iterator[tuple[int, int, int]]:
    """Yield `(start, end, score_from)` windows over a sequence of `n` tokens.

    The window's inputs are tokens[start:end], targets tokens[start+1:end+1]; targets at
    positions >= score_from (relative to start) are scored.

    >>> list(windows(10, 4))
    [(0, 4, 0), (4, 8, 0), (8, 9, 0)]
    >>> list(windows(10, 4, stride=2))
    [(0, 4, 0), (2, 6, 2), (4, 8, 2), (5, 9, 3)]
    """
    last_target = n - 1  # inputs may go up to n-2, the last target is n-1
    if last_target <= 0:
        return
    if stride is None or stride >= block_size:
        for start in range(0, last_target, block_size):
            yield start, min(start + block_size, last_target), 0
        return
    if stride < 1:
        raise ValueError("stride must be at least 1")
    yield 0, min(block_size, last_target), 0
    scored_to = min(block_size, last_target)  # targets up to this input index are scored
    while scored_to < last_target:
        end = min(scored_to + stride, last_target)
        start = max(0, end - block_size)
        yield start, end, scored_to - start
        scored_to = end


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    tokens: np.ndarray | torch.Tensor,
    block_size: int,
    *,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    stride: int | None = None,
    max_tokens: int | None = None,
    window_ids: list[int] | None = None,
    autocast: Callable[[], object] | None = None,
) -> EvalResult:
    """Sum the cross-entropy of `model` over `tokens` (see the module docstring).

    `max_tokens` caps the sequence length evaluated (its first `max_tokens` tokens);
    `window_ids` restricts the default windows to these indices (a fixed subset).
    """
    if batch_size < 1:
        raise TinyGPTError(f"the evaluation batch size must be at least 1, got {batch_size}")
    if stride is not None and stride < 1:
        raise TinyGPTError(f"--stride must be at least 1, got {stride}")
    seq = tokens[: max_tokens + 1] if max_tokens else tokens
    n = len(seq)
    spans = list(windows(n, block_size, stride))
    if window_ids is not None:
        spans = [spans[i] for i in window_ids if i < len(spans)]
    was_training = model.training
    model.eval()
    nll = 0.0
    count = 0
    ctx = autocast or nullcontext
    try:
        # Full windows are batched together; the final partial window runs on its own.
        full = [s for s in spans if s[1] - s[0] == block_size]
        partial = [s for s in spans if s[1] - s[0] != block_size]
        groups = [full[i : i + batch_size] for i in range(0, len(full), batch_size)]
        groups += [[s] for s in partial]
        for group in groups:
            x = torch.stack([_as_tensor(seq, s, e) for s, e, _ in group]).to(device)
            y = torch.stack([_as_tensor(seq, s + 1, e + 1) for s, e, _ in group]).to(device)
            for row, (_, _, frm) in enumerate(group):
                y[row, :frm] = -1  # context only, scored by an earlier window
            with ctx():
                logits, _ = model(x)
            loss = F.cross_entropy(
                logits.float().reshape(-1, logits.size(-1)),
                y.reshape(-1),
                ignore_index=-1,
                reduction="sum",
            )
            nll += loss.item()
            count += int((y != -1).sum())
    finally:
        model.train(was_training)
    first = 1
    last = max((e for _, e, _ in spans), default=0) + 1 if spans else 0
    return EvalResult(nll=nll, tokens=count, first=first, last=last)


def _as_tensor(seq: np.ndarray | torch.Tensor, start: int, end: int) -> torch.Tensor:
    chunk = seq[start:end]
    if isinstance(chunk, torch.Tensor):
        return chunk.long()
    return torch.from_numpy(np.asarray(chunk, dtype=np.int64))


def spread_windows(n_tokens: int, block_size: int, count: int) -> list[int]:
    """Indices of `count` default windows spread evenly over a sequence (a fixed subset)."""
    total = max(0, (n_tokens - 2) // block_size + 1) if n_tokens > 1 else 0
    if total <= count:
        return list(range(total))
    return (
        sorted({round(i * (total - 1) / (count - 1)) for i in range(count)}) if count > 1 else [0]
    )
