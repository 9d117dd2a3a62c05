"""Training: one loop for every kind of training, and the pre-training set-up around it.

`fit()` is the loop. It takes what it trains already built — a model, a batch source
(`tinygpt.data.batches`), an optimiser, the training settings, a run folder, an evaluator — and
knows nothing about how they were made, so pre-training and fine-tuning share it and differ
only in what they hand it: the data and its loss mask, the starting weights, the trainable
parameters (`build_optimizer` sees only those with `requires_grad`). `train()` builds those
pieces for pre-training from a prepared dataset and calls `fit()`.

The loop is built from named helpers: `lr_at` and `budget_progress` (the schedule),
`train_step` (one optimiser step over accumulated micro-batches), `save` (a checkpoint with
everything an exact resume needs), `Watch` (metrics.csv, TensorBoard, W&B, progress).

Policies worth knowing:

- **Budgets.** `max_steps`, `max_tokens`, `max_time` and `max_epochs` bound the loop; the
  first to run out ends it. The learning rate follows *progress* in [0, 1] — the largest
  fraction of any budget spent — so a 60-second run decays to the end of its 60 seconds.
  Preparation and the final full evaluation are timed separately.
- **Determinism.** One seed. The batch source draws from its own generator (seed), dropout
  from torch's global one (seed + 1), samples from the generator's private one. With the
  same seed and thread count on CPU two runs give bit-identical losses, and a run resumed
  from a checkpoint continues bit-identically (the source's position is in the checkpoint).
- **DDP.** Every rank draws the same global batch and keeps its own rows, so N processes see
  what one process with the same global batch sees. Accumulation skips the all-reduce
  (`no_sync`) until the last micro-step; only rank 0 writes files and prints.
- **Endings.** Whatever ends the loop — its budget, early stopping, Ctrl-C, a non-finite loss,
  running out of memory — one `finally` closes TensorBoard and W&B, closes the metrics file
  and leaves the process group (with a barrier only after a normal end: a barrier after one
  rank failed would wait for ever). Ctrl-C saves a checkpoint first.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime as dt
import functools
import logging
import math
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tinygpt.core import __version__
from tinygpt.core.checkpoint import FORMAT_VERSION, WEIGHTS
from tinygpt.core.config import SAMPLE_TOP_K, RunConfig, TrainConfig
from tinygpt.core.errors import TinyGPTError
from tinygpt.core.run import RunDir
from tinygpt.core.runtime import Dist, Runtime, check_model_fits, restore_rng, rng_state, seed_all
from tinygpt.core.weights import load_optimizer_state, load_weights, read_tensors, save_checkpoint

log = logging.getLogger("tinygpt.train.loop")
PROGRESS_EVERY_S = 10.0  # without a terminal, a progress line this often


# ----------------------------------------------------------------------------- optimiser


def build_optimizer(model: torch.nn.Module, tc: TrainConfig, device: str) -> Any:
    """The optimiser `tc.optimizer` names, over the parameters with `requires_grad`, with
    weight decay on matrices only.

    adamw: AdamW on everything; decay on matrices (embeddings and linear weights), not on
    biases and norm gains — decaying those hurts and buys no regularisation. On CUDA this is
    torch's fused kernel; elsewhere `tinygpt.train.optim.AdamW`, the same arithmetic in foreach
    kernels without torch.optim's start-up cost.
    muon: Muon (`tinygpt.train.optim`) on the 2-D weights inside the blocks, at `muon_lr`; AdamW
    on the embeddings, the output head and the vectors, at `lr`. Each group carries
    `lr_scale`, its learning rate over `lr`, so one schedule drives both.
    """
    from tinygpt.train import optim

    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    betas = (tc.beta1, tc.beta2)
    if tc.optimizer == "muon":
        hidden = [p for n, p in named if n.startswith("blocks.") and p.dim() == 2]
        seen = {id(p) for p in hidden}
        rest = [p for _, p in named if id(p) not in seen]
        muon = {
            "params": hidden,
            "algorithm": "muon",
            "lr": tc.muon_lr,
            "lr_scale": tc.muon_lr / tc.lr,
            "weight_decay": tc.weight_decay,
        }
        groups = [muon, *_decay_groups(rest, tc.weight_decay, algorithm="adamw")]
        groups = [g for g in groups if g["params"]]
        return optim.Muon(groups, lr=tc.lr, momentum=tc.muon_momentum, betas=betas, eps=tc.eps)
    groups = _decay_groups([p for _, p in named], tc.weight_decay)
    if device.startswith("cuda"):
        return torch.optim.AdamW(groups, lr=tc.lr, betas=betas, eps=tc.eps, fused=True)
    return optim.AdamW(groups, lr=tc.lr, betas=betas, eps=tc.eps)


def _decay_groups(params: list[torch.Tensor], weight_decay: float, **extra: Any) -> list[dict]:
    """Two parameter groups: matrices with weight decay, vectors without."""
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay, **extra},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0, **extra},
    ]


# ------------------------------------------------------------------------------ schedule


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


# --------------------------------------------------------------------------------- a step


@dataclass
class StepResult:
    loss: float
    grad_norm: float
    tokens: int  # input tokens of the whole step (all micro-batches, all processes)
    skipped: bool = False


class NonFinite(Exception):
    """A step's loss or gradient norm was nan or infinite (`what` says which)."""

    def __init__(self, what: str, value: float) -> None:
        super().__init__(what, value)
        self.what, self.value = what, value


def train_step(
    model: torch.nn.Module,
    batches: Any,
    optimizer: Any,
    *,
    accum: int,
    lr: float,
    grad_clip: float,
    autocast: Callable[[], contextlib.AbstractContextManager],
    scaler: torch.amp.GradScaler | None,
    dist: Dist,
    skip_nonfinite: bool,
) -> StepResult:
    """One optimiser step over `accum` micro-batches of `batches.next()`.

    The loss of each micro-batch is the mean over its scored targets (targets of -1 are
    not scored); the step's loss is the mean of those means, averaged over processes.
    """
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
    device = next(model.parameters()).device
    total = torch.zeros((), device=device)
    tokens = 0
    for micro in range(accum):
        x, y = batches.next()
        tokens += x.numel() * dist.world_size
        sync = micro == accum - 1 or not dist.enabled
        ctx = contextlib.nullcontext() if sync else model.no_sync()
        with ctx:
            with autocast():
                _, loss = model(x, y)
            total += loss.detach()
            scaled = loss / accum
            (scaler.scale(scaled) if scaler else scaled).backward()
    mean = total / accum
    if dist.enabled:
        import torch.distributed as tdist

        cuda = device.type == "cuda"
        tdist.all_reduce(mean, op=tdist.ReduceOp.AVG if cuda else tdist.ReduceOp.SUM)
        if not cuda:
            mean /= dist.world_size  # Gloo has no AVG
    loss_value = mean.item()
    if not math.isfinite(loss_value):
        optimizer.zero_grad(set_to_none=True)
        if skip_nonfinite:
            return StepResult(loss_value, float("nan"), tokens, skipped=True)
        raise NonFinite("loss", loss_value)
    if scaler:
        scaler.unscale_(optimizer)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    if grad_clip > 0:
        norm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
    else:
        norm = torch.linalg.vector_norm(
            torch.stack([p.grad.detach().norm() for p in params if p.grad is not None])
        )
    norm_value = float(norm)
    # A finite loss can still come with an infinite or nan gradient; stop before the update
    # writes it into the weights. (With fp16's gradient scaler an overflow is expected now
    # and then: the scaler skips that step and lowers its scale itself.)
    if not math.isfinite(norm_value) and scaler is None:
        optimizer.zero_grad(set_to_none=True)
        if skip_nonfinite:
            return StepResult(loss_value, norm_value, tokens, skipped=True)
        raise NonFinite("gradient norm", norm_value)
    if scaler:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return StepResult(loss_value, norm_value, tokens)


# --------------------------------------------------------------------------- loop state


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

    sample: Callable[[torch.nn.Module], str] | None = None
    on_checkpoint: Callable[[int, Path], None] | None = None


def save(
    run: RunDir,
    model: torch.nn.Module,
    optimizer: Any,
    batches: Any,
    state: TrainState,
    rt: Runtime,
    tc: TrainConfig,
    *,
    is_best: bool,
    hooks: Hooks,
) -> Path | None:
    """A checkpoint of everything an exact resume needs (rank 0 writes it). Weights that are
    not all finite are never saved."""
    if not rt.dist.is_main:
        return None
    if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
        good = run.checkpoints()
        raise TinyGPTError(
            f"the weights hold nan or inf at step {state.step}, so no checkpoint was saved;"
            f" last good checkpoint: {good[-1] if good else 'none'}; lower --train.lr"
        )
    json_part, tensors = rng_state()
    batch_json, batch_tensors = batches.state()
    tensors.update(batch_tensors)
    if rt.scaler:
        tensors["grad_scaler"] = rt.scaler.state_dict()
    path = save_checkpoint(
        run,
        state.step,
        model,
        optimizer=optimizer,
        is_best=is_best,
        keep_last=tc.keep_last,
        state={
            "tokens": state.tokens,
            "elapsed_s": state.elapsed,
            "best_val_loss_est": state.best_est,
            "stale_evals": state.stale,
            "precision": rt.precision,
            "batches": batch_json,
            **json_part,
        },
        tensors=tensors,
    )
    if hooks.on_checkpoint:
        hooks.on_checkpoint(state.step, path)
    return path


def restore(
    run: RunDir,
    checkpoint: Path,
    model: torch.nn.Module,
    optimizer: Any,
    batches: Any,
    rt: Runtime,
) -> TrainState:
    """Load a checkpoint written by `save` into the pieces, once every file of it is
    verified; return the loop's state."""
    saved = run.verified(checkpoint)
    tensors = read_tensors(checkpoint)
    load_weights(model, checkpoint / WEIGHTS)
    opt_state = load_optimizer_state(checkpoint)
    try:
        if opt_state:
            optimizer.load_state_dict(opt_state)
        restore_rng(saved, tensors)
        batches.restore(saved.get("batches") or {}, tensors)
        if rt.scaler and "grad_scaler" in tensors:
            rt.scaler.load_state_dict(tensors["grad_scaler"])
        return TrainState(
            step=int(saved["step"]),
            tokens=int(saved["tokens"]),
            elapsed=float(saved.get("elapsed_s", 0.0)),
            best_est=saved.get("best_val_loss_est"),
            stale=int(saved.get("stale_evals", 0)),
            resumed_from=checkpoint.name,
        )
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise TinyGPTError(
            f"checkpoint {checkpoint.name} cannot be resumed: its state does not fit this"
            f" run ({type(exc).__name__}: {str(exc)[:120]}); resume from an earlier checkpoint"
            " by moving this folder out of the run"
        ) from None


# ------------------------------------------------------------------------------ the loop


def fit(
    model: torch.nn.Module,
    batches: Any,
    optimizer: Any,
    tc: TrainConfig,
    run: RunDir,
    *,
    evaluator: Any,
    rt: Runtime,
    state: TrainState | None = None,
    accum: int = 1,
    hooks: Hooks | None = None,
    progress: bool = True,
    config: dict[str, Any] | None = None,
    started: float | None = None,
) -> TrainResult:
    """Train `model` on `batches` until a budget runs out (module docstring).

    `evaluator.estimate(model) -> float` gives `val_loss_est` every `eval_interval` steps;
    `evaluator.final(model)` the full validation loss at the end. `state` continues a
    resumed run. `config` (the full configuration) is what W&B records; `started` (a
    `time.perf_counter()` reading) when the whole job began, for summary.json's total_s.
    """
    state = state or TrainState()
    hooks = hooks or Hooks()
    main = rt.dist.is_main
    result = TrainResult(run.path, state.step, state.tokens, state.elapsed, is_main=main)
    last_saved = state.step if state.resumed_from else -1
    watch, ok, stop = Watch(), False, Stop(raising=not rt.dist.enabled)
    try:
        with stop:
            net = _wrap(model, tc, rt)
            if main:
                watch = Watch.open(run, tc, config, state, progress)
            stopped = "budget"
            loop_start = time.perf_counter() - state.elapsed
            try:
                while (done := _progress(state, tc, batches)) < 1.0:
                    lr = lr_at(state.step, done, tc)
                    res = _step(net, batches, optimizer, tc, rt, lr, accum, state, run)
                    _count_skips(res, state, tc)
                    state.step += 1
                    state.tokens += res.tokens
                    state.elapsed = time.perf_counter() - loop_start
                    val_est = None
                    if state.step % tc.eval_interval == 0:
                        with stop.interruptible():
                            val_est = evaluator.estimate(model)
                        _record_estimate(state, val_est)
                    watch.step(state, res, lr, val_est, _progress(state, tc, batches))
                    sample_due = tc.sample_interval and not state.step % tc.sample_interval
                    if main and hooks.sample and sample_due:
                        run.write_sample(f"step-{state.step:06d}", hooks.sample(model))
                    if val_est is not None or (
                        tc.checkpoint_interval and state.step % tc.checkpoint_interval == 0
                    ):
                        best = val_est is not None and state.stale == 0
                        with stop.saving():
                            save(
                                run,
                                model,
                                optimizer,
                                batches,
                                state,
                                rt,
                                tc,
                                is_best=best,
                                hooks=hooks,
                            )
                        last_saved = state.step
                    if tc.early_stop_patience and state.stale >= tc.early_stop_patience:
                        stopped = "early_stop"
                        log.info(
                            "early stop at step %d: %d estimates without improvement",
                            state.step,
                            state.stale,
                        )
                        break
                    if stop.requested(rt.dist):
                        stopped = "interrupted"
                        break
            except KeyboardInterrupt:  # outside the handler's reach, or during an estimate
                stopped = "interrupted"
            watch.end_progress()
            result.step, result.tokens, result.train_time_s = (
                state.step,
                state.tokens,
                state.elapsed,
            )
            result.best_val_loss_est, result.stopped = state.best_est, stopped
            if stopped != "interrupted":
                stopped = _finish(
                    result,
                    model,
                    optimizer,
                    batches,
                    state,
                    rt,
                    tc,
                    run,
                    evaluator,
                    hooks,
                    watch,
                    last_saved,
                    started,
                    stop,
                )
            if stopped == "interrupted":
                result.signal = stop.signum or signal.SIGINT
                log.info("interrupted at step %d; saving a checkpoint", state.step)
                if state.step != last_saved and state.step > 0:
                    with stop.saving():
                        save(
                            run,
                            model,
                            optimizer,
                            batches,
                            state,
                            rt,
                            tc,
                            is_best=False,
                            hooks=hooks,
                        )
            result.stopped = stopped
            if main:
                _plots(run)
            ok = True
            return result
    finally:
        watch.close(ok=ok)
        rt.close(ok=ok)


def _record_estimate(state: TrainState, val_est: float) -> None:
    """Keep the best estimate and count estimates since it (for early stopping and `best`)."""
    improved = state.best_est is None or val_est < state.best_est
    state.best_est = val_est if improved else state.best_est
    state.stale = 0 if improved else state.stale + 1


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

    def _handle(self, signum: int, frame: Any) -> None:
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
    def interruptible(self) -> Any:
        """A stretch of work that a signal may stop at once (it writes nothing)."""
        if self.signum is not None and self.can_raise:
            raise KeyboardInterrupt
        self._raising = self.can_raise
        try:
            yield
        finally:
            self._raising = False

    @contextlib.contextmanager
    def saving(self) -> Any:
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
            import torch.distributed as tdist

            t = torch.tensor([1 if flag else 0])
            tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
            flag = bool(t.item())
            self.signum = self.signum or (signal.SIGTERM if flag else None)
        return flag


def _say(message: str) -> None:
    print(f"tinygpt: {message}", file=sys.stderr, flush=True)


def _count_skips(res: StepResult, state: TrainState, tc: TrainConfig) -> None:
    """With skip_nonfinite, a skipped step is tolerated, but not `skip_nonfinite_limit` in a
    row: by then the run has diverged and skipping only hides it."""
    state.skipped = state.skipped + 1 if res.skipped else 0
    if res.skipped:
        log.warning("step %d skipped: non-finite loss or gradient", state.step + 1)
    if state.skipped >= tc.skip_nonfinite_limit:
        raise TinyGPTError(
            f"{state.skipped} steps in a row had a non-finite loss or gradient (up to step"
            f" {state.step + 1}); the run has diverged: lower --train.lr, or resume from an"
            " earlier checkpoint"
        )


def _wrap(model: torch.nn.Module, tc: TrainConfig, rt: Runtime) -> torch.nn.Module:
    """The model as the loop runs it: compiled and/or wrapped in DDP, as asked."""
    net = torch.compile(model) if tc.compile else model
    if rt.dist.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        net = DDP(net, device_ids=[rt.dist.local_rank] if rt.device.startswith("cuda") else None)
    return net


def _progress(state: TrainState, tc: TrainConfig, batches: Any) -> float:
    return budget_progress(state.step, state.tokens, state.elapsed, tc, batches.epochs)


def _step(
    net: torch.nn.Module,
    batches: Any,
    optimizer: Any,
    tc: TrainConfig,
    rt: Runtime,
    lr: float,
    accum: int,
    state: TrainState,
    run: RunDir,
) -> StepResult:
    """`train_step`, with non-finite losses and out-of-memory turned into clear errors."""
    try:
        return train_step(
            net,
            batches,
            optimizer,
            accum=accum,
            lr=lr,
            grad_clip=tc.grad_clip,
            autocast=rt.autocast,
            scaler=rt.scaler,
            dist=rt.dist,
            skip_nonfinite=tc.skip_nonfinite,
        )
    except NonFinite as exc:
        good = run.checkpoints()
        raise TinyGPTError(
            f"the {exc.what} became {exc.value} at step {state.step + 1}, so the step was not"
            f" applied; last good checkpoint: {good[-1] if good else 'none'}. Likely causes: a"
            " learning rate too high (lower --train.lr), fp16 overflow (use"
            " --train.precision bf16 or fp32), or no gradient clipping;"
            " --train.skip_nonfinite true skips such steps"
        ) from None
    except torch.OutOfMemoryError:
        raise TinyGPTError(_oom_message(tc, getattr(batches, "block_size", 0), accum)) from None


def _finish(
    result: TrainResult,
    model: torch.nn.Module,
    optimizer: Any,
    batches: Any,
    state: TrainState,
    rt: Runtime,
    tc: TrainConfig,
    run: RunDir,
    evaluator: Any,
    hooks: Hooks,
    watch: Watch,
    last_saved: int,
    started: float | None,
    stop: Stop,
) -> str:
    """After the loop: the full evaluation (timed apart), a last checkpoint, the sample and
    summary.json. Returns how training ended: the loop's reason, or "interrupted" when a
    signal stopped the evaluation (the caller then saves)."""
    t_eval = time.perf_counter()
    try:
        with stop.interruptible():
            full = evaluator.final(model)
    except KeyboardInterrupt:
        return "interrupted"
    result.val_loss = full.loss
    eval_time = time.perf_counter() - t_eval
    if state.step != last_saved:
        is_best = state.best_est is None or full.loss <= state.best_est
        with stop.saving():
            save(run, model, optimizer, batches, state, rt, tc, is_best=is_best, hooks=hooks)
    if not rt.dist.is_main:
        return result.stopped
    if hooks.sample:
        result.sample = hooks.sample(model)
        run.write_sample(f"step-{state.step:06d}", result.sample)
    result.timings = {"train_s": round(state.elapsed, 3), "final_eval_s": round(eval_time, 3)}
    if started is not None:
        result.timings["total_s"] = round(time.perf_counter() - started, 3)
    run.write_summary(
        {
            "step": state.step,
            "tokens": state.tokens,
            "train_time_s": round(state.elapsed, 3),
            "val_loss": full.loss,
            "val_tokens": full.tokens,
            "best_val_loss_est": state.best_est,
            "stopped": result.stopped,
            "tokens_per_s": round(state.tokens / max(state.elapsed, 1e-9), 1),
            "precision": rt.precision,
            "device": rt.device,
            **result.timings,
        }
    )
    watch.final(full.loss)
    log.info(
        "done: step %d, val_loss %.4f (%d tokens), %.1f s training",
        state.step,
        full.loss,
        full.tokens,
        state.elapsed,
    )
    return result.stopped


def _oom_message(tc: TrainConfig, block: int, accum: int) -> str:
    smaller = max(1, tc.batch_size // 2)
    return (
        f"out of GPU memory with micro-batch {tc.batch_size} × context {block}; try"
        f" --train.batch_size {smaller} and --train.tokens_per_step"
        f" {tc.batch_size * block * accum} (gradient accumulation keeps the step size),"
        " or a smaller --model.block_size"
    )


# ------------------------------------------------------------------------------ watching


@dataclass
class Watch:
    """Where the loop reports (rank 0 only): metrics.csv, TensorBoard, W&B, progress.

    A `Watch()` with nothing attached (other ranks) ignores every call.
    """

    metrics: Any = None  # tinygpt.core.run.MetricsWriter
    tb: Any = None
    wandb: Any = None
    bar: Any = None  # a tqdm bar on a terminal
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
                from tqdm import tqdm

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


def _plots(run: RunDir) -> None:
    """Loss curves at the end of every run, when the plotting extra is installed."""
    try:
        from tinygpt.train.plots import plot_run

        plot_run(run.path)
    except ImportError:  # matplotlib missing
        return


# ---------------------------------------------------------------------- pre-training set-up


def check_data(train_tokens: int, val_tokens: int, block_size: int, global_batch: int) -> None:
    """Refuse datasets too small to train on, with numbers and a way out."""
    if train_tokens < block_size + 2:
        raise TinyGPTError(
            f"the training split has {train_tokens} tokens, fewer than one window of"
            f" model.block_size + 1 = {block_size + 1}; add text or lower --model.block_size"
        )
    if val_tokens < 2:
        raise TinyGPTError(
            f"the validation split has {val_tokens} tokens; prepare with a larger"
            " --val-fraction or more text"
        )
    if train_tokens < block_size * global_batch + 1:
        raise TinyGPTError(
            f"the training split ({train_tokens} tokens) is smaller than one batch"
            f" ({global_batch} × {block_size}); add text or lower --train.batch_size"
        )


def accumulation(tc: TrainConfig, micro_tokens: int) -> int:
    """Micro-batches per step to reach `tokens_per_step` (1 when it is 0)."""
    if not tc.tokens_per_step:
        return 1
    if tc.tokens_per_step % micro_tokens:
        raise TinyGPTError(
            f"train.tokens_per_step = {tc.tokens_per_step} is not a multiple of one micro-step"
            f" (batch_size × block_size × processes = {micro_tokens}); use"
            f" {max(1, round(tc.tokens_per_step / micro_tokens)) * micro_tokens}"
        )
    return tc.tokens_per_step // micro_tokens


def resume_point(run: RunDir, resume: str | None) -> Path | None:
    """The checkpoint to continue from, by the `--resume` policy: None (a fresh run; refuses
    a folder that already holds checkpoints), "yes" (the latest; it must exist) or "auto"
    (the latest if there is one)."""
    existing = run.checkpoints()
    if resume in ("yes", "auto") and existing:
        return run.resolve_checkpoint("latest")
    if resume == "yes":
        raise TinyGPTError(
            f"--resume: {run.path} has no checkpoint to resume from; train without --resume,"
            " or use --resume auto"
        )
    if existing:
        raise TinyGPTError(
            f"{run.path} already holds a run; continue it with --resume, or choose another --out"
        )
    return None


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).parent,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def provenance(command: list[str] | None, dataset: dict[str, Any], extra: dict[str, Any]) -> dict:
    """What produced a run: versions, code, command line, the dataset's record."""
    import numpy

    return {
        "tinygpt": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "platform": platform.platform(),
        "git_commit": _git_commit(),
        "command": command if command is not None else sys.argv,
        "checkpoint_format": FORMAT_VERSION,
        "dataset": dataset,
        "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        **extra,
    }


class TextSampler:
    """The samples written during and after training: `sample_tokens` tokens after
    `sample_prompt` (or a document start when the vocabulary cannot encode it), at
    `sample_temperature`."""

    def __init__(self, tokenizer: Any, tc: TrainConfig) -> None:
        from tinygpt.infer.generate import usable_prompts

        self.tokenizer = tokenizer
        self.prompt = usable_prompts(tokenizer, [tc.sample_prompt])[0]
        self.tokens = tc.sample_tokens
        self.temperature = tc.sample_temperature
        self.seed = tc.seed

    def __call__(self, model: torch.nn.Module) -> str:
        from tinygpt.infer.generate import TextGenerator

        try:
            text = TextGenerator(model, self.tokenizer).generate(
                self.prompt,
                max_new_tokens=self.tokens,
                temperature=self.temperature,
                top_k=SAMPLE_TOP_K,
                seed=self.seed,
            )
        finally:
            model.train()
        return self.prompt + text


def find_dataset(
    config: RunConfig, run: RunDir, data_dir: str | Path | None, resuming: bool
) -> Path:
    """The dataset folder to train on: `data_dir` when given; when resuming, the one the
    run recorded; `config.data.dir`; else `config.data.source` prepared on the fly (cached)."""
    if data_dir is not None:
        return Path(data_dir)
    recorded = run.dataset_dir() if resuming else None
    if recorded is not None:
        if not recorded.is_dir():
            raise TinyGPTError(
                f"the dataset the run was trained on ({recorded}) is gone; give its new place"
                " with --data DIR"
            )
        return recorded
    if config.data.dir:
        return Path(config.data.dir)
    from tinygpt.data.prepare import prepare_dataset

    d = config.data
    return prepare_dataset(
        d.source,  # reused from the cache when prepared before with the same settings
        None,
        tokenizer=d.tokenizer,
        vocab_size=d.vocab_size or config.model.vocab_size,
        backend=d.backend,
        min_frequency=d.min_frequency,
        lowercase=d.lowercase or None,
        normalize_whitespace=d.normalize_whitespace,
        val_fraction=d.val_fraction,
        text_field=d.text_field,
        errors=d.errors,
        block_size=config.model.block_size,
    ).path


def train(
    config: RunConfig,
    *,
    out_dir: str | Path,
    data_dir: str | Path | None = None,
    resume: str | None = None,
    command: list[str] | None = None,
    progress: bool = True,
    on_checkpoint: Callable[[int, Path], None] | None = None,
    force: bool = False,
) -> TrainResult:
    """Pre-train `config` into the run folder `out_dir` and return how it went.

    The data: `data_dir` (a folder made by `tinygpt prepare`), else what `find_dataset`
    finds. `resume`: None, "yes" or "auto" (`resume_point`). `on_checkpoint(step, path)` is
    called after each checkpoint is safely on disk. `force` trains into a folder that holds
    other files. `config` itself is not changed.
    """
    from tinygpt.core.model import GPT
    from tinygpt.data.batches import RandomWindows
    from tinygpt.data.prepare import check_fits, open_dataset
    from tinygpt.data.tokenizer import file_hash
    from tinygpt.infer.scoring import SplitEvaluator

    t_start = time.perf_counter()
    config = copy.deepcopy(config)
    tc = config.train
    if not tc.has_budget:
        raise TinyGPTError(
            "no training budget: give --max-steps, --max-tokens, --max-time or --max-epochs"
        )
    run = RunDir(out_dir)
    run.check_out(force=force)
    if int(os.environ.get("RANK", "0")) == 0:
        run.remove_leftovers()
    start = resume_point(run, resume)
    dataset = open_dataset(find_dataset(config, run, data_dir, start is not None))
    resumed_tokenizer = run.tokenizer_path if start is not None else None
    if resumed_tokenizer and file_hash(resumed_tokenizer) != file_hash(dataset.tokenizer_path):
        raise TinyGPTError(
            f"the dataset {dataset.path} was made with another tokenizer than the run"
            f" {run.path}; resume with the dataset the run was trained on"
        )
    tokenizer = dataset.load_tokenizer()
    config.model = dataclasses.replace(config.model, vocab_size=tokenizer.vocab_size)
    check_fits(dataset, config.model.vocab_size)
    rt = Runtime.start(tc)
    try:
        block = config.model.block_size
        global_batch = tc.batch_size * rt.dist.world_size
        check_data(len(dataset.train), len(dataset.val), block, global_batch)
        accum = accumulation(tc, global_batch * block)
        check_model_fits(config.model, rt.device, training=True)
        seed_all(tc.seed)
        model = GPT(config.model).to(rt.device)
        rt.set_precision(tc.precision, config.model)
        optimizer = build_optimizer(model, tc, rt.device)
        batches = RandomWindows(dataset.train, block, global_batch, tc.seed, rt.dist, rt.device)
        state = restore(run, start, model, optimizer, batches, rt) if start else None
        if rt.dist.is_main:
            _begin_run(run, config, dataset, model, rt, accum, command, state)
        evaluator = SplitEvaluator(
            dataset.val,
            block,
            batch_size=tc.eval_batch_size,
            windows=tc.eval_windows,
            device=rt.device,
            autocast=rt.autocast,
        )
    except BaseException:
        rt.close(ok=False)
        raise
    return fit(
        model,
        batches,
        optimizer,
        tc,
        run,
        evaluator=evaluator,
        rt=rt,
        state=state,
        accum=accum,
        hooks=Hooks(sample=TextSampler(tokenizer, tc), on_checkpoint=on_checkpoint),
        progress=progress,
        config=config.to_dict(),
        started=t_start,
    )


def _begin_run(
    run: RunDir,
    config: RunConfig,
    dataset: Any,
    model: torch.nn.Module,
    rt: Runtime,
    accum: int,
    command: list[str] | None,
    state: TrainState | None,
) -> None:
    """Write what the run folder holds before the first step: config, tokenizer, run.json,
    the samples folder and the log file."""
    run.write_config(config)
    run.write_tokenizer(dataset.tokenizer_path)
    run.samples_dir.mkdir(exist_ok=True)
    run.attach_log(log)
    record = {k: dataset.meta.get(k) for k in ("key", "tokenizer_hash", "source")}
    record = {"path": str(Path(dataset.path).resolve()), **record}
    tokens_per_step = config.train.batch_size * rt.dist.world_size * config.model.block_size * accum
    info = {
        "device": rt.device,
        "precision": rt.precision,
        "threads": torch.get_num_threads(),
        "world_size": rt.dist.world_size,
        "tokens_per_step": tokens_per_step,
        "grad_accum": accum,
        "parameters": model.num_params(),
        "resumed_from": state.resumed_from if state else None,
    }
    run.write_info(provenance(command, record, info), resumed=state is not None)
    log.info(
        "run %s: %s parameters, %s, %d process(es), %d tokens/step, device %s",
        run.path,
        f"{model.num_params():,}",
        rt.precision,
        rt.dist.world_size,
        tokens_per_step,
        rt.device,
    )
