"""What the loop carries and hands back: `TrainState` (where training stands, saved in every
checkpoint), `TrainResult` (how a run went) and `Hooks` (what the loop calls out to).

Plain records shared by the loop (`tinygpt.train.loop`), checkpointing
(`tinygpt.train.resume`) and the set-ups around them; they know nothing about how training
runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tinygpt.core.model import GPT


@dataclass
class StepResult:
    loss: float
    grad_norm: float
    tokens: int  # input tokens of the whole step (all micro-batches, all processes)
    skipped: bool = False


@dataclass
class TrainState:
    """Where training stands; saved in every checkpoint's state.json."""

    step: int = 0
    tokens: int = 0
    elapsed: float = 0.0  # seconds inside the loop
    best_est: float | None = None  # best val_loss_est so far
    stale: int = 0  # estimates since the best one
    resumed_from: str | None = None  # the checkpoint this process started from
    skipped: int = 0  # steps skipped in a row for a non-finite loss or gradient


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    tokens: int
    train_time_s: float
    val_loss: float | None = None
    best_val_loss_est: float | None = None
    stopped: str = "budget"  # budget | early_stop | interrupted
    sample: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    is_main: bool = True  # rank 0, the process that prints and writes
    signal: int | None = None  # the signal that interrupted training (SIGINT, SIGTERM)


@dataclass
class Hooks:
    """What the loop calls out to: `sample(model)` gives the text of a sample (rank 0, at
    `sample_interval` and at the end); `on_checkpoint(step, path)` runs once a checkpoint
    is safely on disk."""

    sample: Callable[[GPT], str] | None = None
    on_checkpoint: Callable[[int, Path], None] | None = None
