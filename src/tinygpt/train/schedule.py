"""The learning-rate schedule and the budgets that drive it: `lr_at` (warm-up, then cosine,
wsd or constant) and `budget_progress` (how much of the budget is spent).

The schedule follows *progress* in [0, 1], the largest fraction of any budget spent, so a
60-second run decays to the end of its 60 seconds. It knows nothing about the optimiser it
drives or the loop that asks.
"""

from __future__ import annotations

import math

from tinygpt.core.config import TrainConfig


def lr_at(step: int, progress: float, tc: TrainConfig) -> float:
    """Learning rate for `step` at budget `progress` in [0, 1].

    Linear warm-up over `warmup_steps` (or over the first `warmup_frac` of the budget), then
    by `schedule`:
    cosine from lr to lr·min_lr_ratio over the budget; wsd holds lr and decays linearly to
    lr·min_lr_ratio over the last `warmdown_frac` of the budget; constant holds lr.

    >>> tc = TrainConfig(lr=1.0, warmup_steps=10, min_lr_ratio=0.0, max_steps=100)
    >>> lr_at(4, 0.0, tc), lr_at(50, 0.5, tc), round(lr_at(99, 1.0, tc), 6)
    (0.5, 0.5, 0.0)
    >>> frac = TrainConfig(lr=1.0, warmup_steps=0, warmup_frac=0.1, schedule="constant")
    >>> lr_at(0, 0.05, frac), lr_at(0, 0.5, frac)
    (0.5, 1.0)
    """
    p = min(max(progress, 0.0), 1.0)
    if tc.warmup_frac:
        warm = min(1.0, p / tc.warmup_frac)
    else:
        warm = min(1.0, (step + 1) / tc.warmup_steps) if tc.warmup_steps else 1.0
    floor = tc.min_lr_ratio
    if tc.schedule == "cosine":
        factor = floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * p))
    elif tc.schedule == "wsd":
        start = 1.0 - tc.warmdown_frac
        factor = (
            1.0 if p <= start else 1.0 - (1 - floor) * (p - start) / max(tc.warmdown_frac, 1e-9)
        )
    else:
        factor = 1.0
    return tc.lr * warm * factor


def budget_progress(
    step: int, tokens: int, seconds: float, tc: TrainConfig, epochs: float = 0.0
) -> float:
    """How much of the budget is spent, in [0, 1] (the largest fraction of any budget set).

    >>> budget_progress(50, 0, 0.0, TrainConfig(max_steps=100, max_epochs=2.0), epochs=1.5)
    0.75
    """
    parts = []
    if tc.max_steps:
        parts.append(step / tc.max_steps)
    if tc.max_tokens:
        parts.append(tokens / tc.max_tokens)
    if tc.max_time:
        parts.append(seconds / tc.max_time)
    if tc.max_epochs:
        parts.append(epochs / tc.max_epochs)
    return max(parts) if parts else 0.0
