"""Signals while the loop runs: `Stop` turns SIGINT (Ctrl-C) and SIGTERM into a request to
stop after the current step, so that the loop can save a checkpoint and return.

It knows nothing about what the loop trains or saves; under torchrun it only makes every
process agree.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

import torch
import torch.distributed as tdist

from tinygpt.core.runtime import Dist


class Stop:
    """SIGINT (Ctrl-C) and SIGTERM (schedulers, `docker stop`) while the loop runs.

    A signal does not cut a step short — an optimiser update stopped half-way would leave
    weights that match no step — it asks the loop to stop after the step; the loop then saves
    a checkpoint and returns, and the command exits 130 (SIGINT) or 143 (SIGTERM). While an
    evaluation runs (nothing is written) it stops at once (`raising`; not under torchrun,
    where every process must stop at the same step); while a checkpoint is being saved a
    second signal only says that the save is finishing. Handlers are installed in the main
    thread only, and the earlier ones put back afterwards.
    """

    def __init__(self, *, raising: bool = True) -> None:
        self.signum: int | None = None
        self.can_raise = raising
        self._raising = False
        self._saving = False
        self._old: dict[int, Any] = {}

    def __enter__(self) -> Stop:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        first = self.signum is None
        self.signum = self.signum or signum
        name = signal.Signals(signum).name
        if self._saving:
            _say(f"{name}: a checkpoint is being saved; stopping as soon as it is on disk")
        elif self._raising:
            raise KeyboardInterrupt
        elif first:
            _say(f"{name}: stopping after this step and saving a checkpoint")

    @contextlib.contextmanager
    def interruptible(self) -> Iterator[None]:
        """A stretch of work that a signal may stop at once (it writes nothing)."""
        if self.signum is not None and self.can_raise:
            raise KeyboardInterrupt
        self._raising = self.can_raise
        try:
            yield
        finally:
            self._raising = False

    @contextlib.contextmanager
    def saving(self) -> Iterator[None]:
        """A checkpoint being written: signals wait for it."""
        self._saving = True
        try:
            yield
        finally:
            self._saving = False

    def requested(self, dist: Dist) -> bool:
        """Whether to stop now; under torchrun, every process agrees (any one asked)."""
        flag = self.signum is not None
        if dist.enabled:
            t = torch.tensor([1 if flag else 0])
            tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
            flag = bool(t.item())
            self.signum = self.signum or (signal.SIGTERM if flag else None)
        return flag


def _say(message: str) -> None:
    print(f"tinygpt: {message}", file=sys.stderr, flush=True)
