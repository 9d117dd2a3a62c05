"""Where the loop reports, rank 0 only: metrics.csv, TensorBoard, W&B and the progress
(a bar on a terminal, else a line every `PROGRESS_EVERY_S` seconds), and the loss curves
drawn at the end of a run.

`Watch` is handed each step's figures by the loop; it knows nothing about how they were
computed, and the loop knows nothing about where they go. TensorBoard and W&B are optional
extras: without TensorBoard one note is printed, a W&B run that cannot start is one clear
error.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from tqdm import tqdm

from tinygpt.core.config import TrainConfig
from tinygpt.core.errors import TinyGPTError
from tinygpt.core.run import MetricsWriter, RunDir
from tinygpt.train.plots import plot_run
from tinygpt.train.state import StepResult, TrainState

log = logging.getLogger("tinygpt.train.loop")  # the loop's logger: one train.log per run
PROGRESS_EVERY_S = 10.0  # without a terminal, a progress line this often


@dataclass
class Watch:
    """Where the loop reports (rank 0 only): metrics.csv, TensorBoard, W&B, progress.

    A `Watch()` with nothing attached (other ranks) ignores every call.
    """

    metrics: MetricsWriter | None = None
    tb: Any = None
    wandb: Any = None
    bar: tqdm | None = None  # on a terminal
    log_interval: int = 10
    eval_interval: int = 0
    window_tokens: int = 0
    window_start: float = field(default_factory=time.perf_counter)
    last_line: float = field(default_factory=time.perf_counter)
    lines: bool = False  # progress as log lines (no terminal)
    text: str = ""  # the last progress figures

    @classmethod
    def open(
        cls,
        run: RunDir,
        tc: TrainConfig,
        config: dict[str, Any] | None,
        state: TrainState,
        progress: bool,
    ) -> Watch:
        watch = cls(log_interval=tc.log_interval, eval_interval=tc.eval_interval)
        try:
            watch.metrics = run.open_metrics(after_step=state.step if state.resumed_from else None)
            watch.tb = _tensorboard(run, tc)
            watch.wandb = _wandb(run, tc, config)
            if progress and sys.stderr.isatty():
                watch.bar = tqdm(
                    total=100.0,
                    unit="%",
                    bar_format="{l_bar}{bar}| {n:.0f}% [{elapsed}<{remaining}] {postfix}",
                    file=sys.stderr,
                    dynamic_ncols=True,
                )
            watch.lines = progress and watch.bar is None
        except BaseException:
            watch.close(ok=False)
            raise
        return watch

    def step(
        self, state: TrainState, res: StepResult, lr: float, val_est: float | None, done: float
    ) -> None:
        if self.metrics is None:
            return
        self.window_tokens += res.tokens
        if state.step % self.log_interval == 0 or val_est is not None or state.step == 1:
            now = time.perf_counter()
            tps = self.window_tokens / max(now - self.window_start, 1e-9)
            self.window_tokens, self.window_start = 0, now
            row = {
                "step": state.step,
                "tokens": state.tokens,
                "time_s": round(state.elapsed, 3),
                "train_loss": res.loss,
                "val_loss_est": val_est,
                "lr": lr,
                "grad_norm": res.grad_norm,
                "tokens_per_s": round(tps, 1),
            }
            self.metrics.row(row)
            numbers = {k: v for k, v in row.items() if isinstance(v, (int, float)) and k != "step"}
            if self.tb:
                for key, value in numbers.items():
                    self.tb.add_scalar(key, value, state.step)
            if self.wandb:
                self.wandb.log(numbers, step=state.step)
            text = f"loss {res.loss:.4f} lr {lr:.2e} {tps:,.0f} tok/s" + (
                f" val {val_est:.4f}" if val_est is not None else ""
            )
            if self.bar is not None:
                self.bar.set_postfix_str(text)
            if val_est is not None:
                log.info(
                    "step %d: train loss %.4f, val_loss_est %.4f", state.step, res.loss, val_est
                )
            self.text = text
        if self.bar is not None:
            self.bar.n = round(100 * min(1.0, done), 1)
            self.bar.refresh()
        elif self.lines and time.perf_counter() - self.last_line >= PROGRESS_EVERY_S:
            self.last_line = time.perf_counter()
            print(
                f"step {state.step} ({100 * min(1.0, done):.0f}%): {self.text}",
                file=sys.stderr,
                flush=True,
            )

    def end_progress(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def final(self, val_loss: float) -> None:
        if self.wandb:
            self.wandb.summary.update({"val_loss": val_loss})

    def close(self, *, ok: bool) -> None:
        """Close everything opened, whatever happened (called from the loop's `finally`)."""
        self.end_progress()
        if self.metrics is not None:
            self.metrics.close()
        if self.tb:
            self.tb.close()
            self.tb = None
        if self.wandb:
            import wandb

            self.wandb.finish(exit_code=0 if ok else 1)
            # Stop W&B's service process too: it writes the run's log file, and the command
            # line ends with os._exit, which would not wait for it.
            wandb.teardown()
            self.wandb = None


@functools.cache
def _say_once(message: str) -> None:
    log.warning(message)
    print(f"tinygpt: note: {message}", file=sys.stderr)


def _tensorboard(run: RunDir, tc: TrainConfig) -> Any:
    if not tc.tensorboard:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # the `tensorboard` package is an optional extra
        _say_once(
            "train.tensorboard is on but the tensorboard package is not installed, so no"
            " TensorBoard log is written; pip install 'tinygpt[tensorboard]', or set"
            " --train.tensorboard false to silence this"
        )
        return None
    return SummaryWriter(log_dir=str(run.tensorboard_dir))


WANDB_INIT_TIMEOUT_S = 30.0  # WANDB_INIT_TIMEOUT overrides


def _wandb(run: RunDir, tc: TrainConfig, config: dict[str, Any] | None) -> Any:
    """A W&B run, or one clear line: not installed, no API key, or no connection (bounded
    by WANDB_INIT_TIMEOUT seconds). WANDB_MODE=offline needs neither key nor network."""
    if not tc.wandb:
        return None
    try:
        import wandb
        from wandb.errors import UsageError
    except ImportError:
        raise TinyGPTError(
            "train.wandb = true but the wandb package is not installed; pip install"
            " 'tinygpt[wandb]' (WANDB_MODE=offline works without an account)"
        ) from None
    timeout = float(os.environ.get("WANDB_INIT_TIMEOUT", WANDB_INIT_TIMEOUT_S))
    os.environ.setdefault("WANDB_SILENT", "true")  # its banner lines; WANDB_SILENT=false shows them
    offline = " or log offline with WANDB_MODE=offline (upload later with `wandb sync`)"
    try:
        return wandb.init(
            project=tc.wandb_project,
            dir=str(run.path),
            name=run.name,
            config=config,
            settings=wandb.Settings(init_timeout=timeout, silent=True),
        )
    except UsageError as exc:
        first = (str(exc).strip().splitlines() or ["usage error"])[0]
        raise TinyGPTError(
            f"W&B cannot start: {first} Set WANDB_API_KEY or run `wandb login`,{offline}"
        ) from None
    except Exception as exc:  # CommError and friends: no network, a wrong host
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise TinyGPTError(
            f"W&B could not reach its server within {timeout:g} s ({first}); check the"
            f" network,{offline}"
        ) from None


def draw_curves(run: RunDir) -> None:
    """Loss curves at the end of every run, when the plotting extra is installed."""
    try:
        plot_run(run.path)
    except ImportError:  # matplotlib missing
        return
