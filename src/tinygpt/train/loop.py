"""Training: one loop for every kind of training.

`fit()` is the loop. It takes what it trains already built — a model, a batch source
(`tinygpt.data.batches`), an optimiser, the training settings, a run folder, an evaluator — and
knows nothing about how they were made, so pre-training and fine-tuning share it and differ
only in what they hand it: the data and its loss mask, the starting weights, the trainable
parameters (`build_optimizer` sees only those with `requires_grad`). The set-ups that build
those pieces are `tinygpt.train.pretrain.train` and `tinygpt.train.finetune.finetune`; this
module knows nothing about them, nor about datasets, tokenizers or the run folder's layout.

The loop is built from named pieces: `lr_at` and `budget_progress` (`tinygpt.train.schedule`),
`train_step` (here: one optimiser step over accumulated micro-batches), `save`
(`tinygpt.train.resume`: a checkpoint with everything an exact resume needs), `Watch`
(`tinygpt.train.tracking`: metrics.csv, TensorBoard, W&B, progress) and `Stop`
(`tinygpt.train.signals`: Ctrl-C and SIGTERM).

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
import logging
import math
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.distributed as tdist
from torch.nn.parallel import DistributedDataParallel as DDP

from tinygpt.core.config import TrainConfig
from tinygpt.core.errors import TinyGPTError
from tinygpt.core.model import GPT
from tinygpt.core.run import RunDir
from tinygpt.core.runtime import Dist, Runtime
from tinygpt.data.batches import BatchSource
from tinygpt.train.resume import save
from tinygpt.train.schedule import budget_progress, lr_at
from tinygpt.train.signals import Stop
from tinygpt.train.state import Hooks, StepResult, TrainResult, TrainState
from tinygpt.train.tracking import Watch, draw_curves

log = logging.getLogger("tinygpt.train.loop")
# The loop's vocabulary, importable from here although some of it lives in the modules above.
__all__ = [
    "Hooks", "NonFinite", "StepResult", "Stop", "TrainResult", "TrainState",
    "budget_progress", "fit", "lr_at", "train_step",
]  # fmt: skip


# --------------------------------------------------------------------------------- a step


class NonFinite(Exception):
    """A step's loss or gradient norm was nan or infinite (`what` says which)."""

    def __init__(self, what: str, value: float) -> None:
        super().__init__(what, value)
        self.what, self.value = what, value


def train_step(
    model: torch.nn.Module,
    batches: BatchSource,
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
        # Not syncing only under DDP, where `_wrap` made the model a DDP.
        ctx = contextlib.nullcontext() if sync else cast(DDP, model).no_sync()
        with ctx:
            with autocast():
                _, loss = model(x, y)
            total += loss.detach()
            scaled = loss / accum
            (scaler.scale(scaled) if scaler else scaled).backward()
    mean = total / accum
    if dist.enabled:
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


# ------------------------------------------------------------------------------ the loop


def fit(
    model: GPT,
    batches: BatchSource,
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
            job = _Job(model, net, batches, optimizer, tc, run, rt, evaluator, hooks, state,
                       stop, watch, accum, last_saved)  # fmt: skip
            stopped = _steps(job)
            watch.end_progress()
            result.step, result.tokens, result.train_time_s = (
                state.step,
                state.tokens,
                state.elapsed,
            )
            result.best_val_loss_est, result.stopped = state.best_est, stopped
            if stopped != "interrupted":
                stopped = _finish(job, result, started)
            if stopped == "interrupted":
                _save_interrupted(job, result)
            result.stopped = stopped
            if main:
                draw_curves(run)
            ok = True
            return result
    finally:
        watch.close(ok=ok)
        rt.close(ok=ok)


@dataclass
class _Job:
    """The pieces one call of `fit` works with, handed to its helpers as one."""

    model: GPT
    net: torch.nn.Module  # the model as the loop runs it (`_wrap`)
    batches: BatchSource
    optimizer: Any
    tc: TrainConfig
    run: RunDir
    rt: Runtime
    evaluator: Any
    hooks: Hooks
    state: TrainState
    stop: Stop
    watch: Watch
    accum: int
    last_saved: int  # the step of the last checkpoint (-1: none yet)

    def checkpoint(self, *, is_best: bool) -> None:
        """`save` (rank 0 writes), with signals waiting until it is on disk."""
        with self.stop.saving():
            save(
                self.run,
                self.model,
                self.optimizer,
                self.batches,
                self.state,
                self.rt,
                self.tc,
                is_best=is_best,
                hooks=self.hooks,
            )


def _steps(job: _Job) -> str:
    """Step until a budget runs out ("budget"), estimates stop improving ("early_stop") or a
    signal asks ("interrupted"); returns which."""
    state, tc, stop = job.state, job.tc, job.stop
    loop_start = time.perf_counter() - state.elapsed
    try:
        while (done := _progress(state, tc, job.batches)) < 1.0:
            lr = lr_at(state.step, done, tc)
            res = _step(job.net, job.batches, job.optimizer, tc, job.rt, lr, job.accum, state,
                        job.run)  # fmt: skip
            _count_skips(res, state, tc)
            state.step += 1
            state.tokens += res.tokens
            state.elapsed = time.perf_counter() - loop_start
            val_est = None
            if state.step % tc.eval_interval == 0:
                with stop.interruptible():
                    val_est = job.evaluator.estimate(job.model)
                _record_estimate(state, val_est)
            job.watch.step(state, res, lr, val_est, _progress(state, tc, job.batches))
            _sample_and_save(job, val_est)
            if tc.early_stop_patience and state.stale >= tc.early_stop_patience:
                log.info(
                    "early stop at step %d: %d estimates without improvement",
                    state.step,
                    state.stale,
                )
                return "early_stop"
            if stop.requested(job.rt.dist):
                return "interrupted"
    except KeyboardInterrupt:  # outside the handler's reach, or during an estimate
        return "interrupted"
    return "budget"


def _sample_and_save(job: _Job, val_est: float | None) -> None:
    """After a step: a sample every `sample_interval` steps (rank 0), a checkpoint after
    every estimate and every `checkpoint_interval` steps."""
    state, tc = job.state, job.tc
    sample_due = tc.sample_interval and not state.step % tc.sample_interval
    if job.rt.dist.is_main and job.hooks.sample and sample_due:
        job.run.write_sample(f"step-{state.step:06d}", job.hooks.sample(job.model))
    if val_est is not None or (tc.checkpoint_interval and state.step % tc.checkpoint_interval == 0):
        best = val_est is not None and state.stale == 0
        job.checkpoint(is_best=best)
        job.last_saved = state.step


def _save_interrupted(job: _Job, result: TrainResult) -> None:
    """A signal stopped training: save the step reached, unless it is already saved."""
    result.signal = job.stop.signum or signal.SIGINT
    log.info("interrupted at step %d; saving a checkpoint", job.state.step)
    if job.state.step != job.last_saved and job.state.step > 0:
        job.checkpoint(is_best=False)


def _record_estimate(state: TrainState, val_est: float) -> None:
    """Keep the best estimate and count estimates since it (for early stopping and `best`)."""
    improved = state.best_est is None or val_est < state.best_est
    state.best_est = val_est if improved else state.best_est
    state.stale = 0 if improved else state.stale + 1


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
    # torch.compile of a module is a module (an OptimizedModule); its stubs say a callable.
    net = cast(torch.nn.Module, torch.compile(model)) if tc.compile else model
    if rt.dist.enabled:
        net = DDP(net, device_ids=[rt.dist.local_rank] if rt.device.startswith("cuda") else None)
    return net


def _progress(state: TrainState, tc: TrainConfig, batches: BatchSource) -> float:
    return budget_progress(state.step, state.tokens, state.elapsed, tc, batches.epochs)


def _step(
    net: torch.nn.Module,
    batches: BatchSource,
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


def _finish(job: _Job, result: TrainResult, started: float | None) -> str:
    """After the loop: the full evaluation (timed apart), a last checkpoint, the sample and
    summary.json. Returns how training ended: the loop's reason, or "interrupted" when a
    signal stopped the evaluation (the caller then saves)."""
    state, rt, run, hooks = job.state, job.rt, job.run, job.hooks
    t_eval = time.perf_counter()
    try:
        with job.stop.interruptible():
            full = job.evaluator.final(job.model)
    except KeyboardInterrupt:
        return "interrupted"
    result.val_loss = full.loss
    eval_time = time.perf_counter() - t_eval
    if state.step != job.last_saved:
        is_best = state.best_est is None or full.loss <= state.best_est
        job.checkpoint(is_best=is_best)
    if not rt.dist.is_main:
        return result.stopped
    if hooks.sample:
        result.sample = hooks.sample(job.model)
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
    job.watch.final(full.loss)
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
