"""Checkpoints for an exact resume: `save` writes everything the loop needs to continue
bit-identically (weights, optimiser, RNG states, the batch source's position, the loop's
state), `restore` reads it back into freshly built pieces, and `resume_point` picks the
checkpoint to continue from by the `--resume` policy.

The files themselves (layout, hashes, atomic writes) are `tinygpt.core.weights` and
`tinygpt.core.run`'s; this module knows nothing about the loop that calls it or how the
pieces were built.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from tinygpt.core.checkpoint import WEIGHTS
from tinygpt.core.config import TrainConfig
from tinygpt.core.errors import TinyGPTError
from tinygpt.core.run import RunDir
from tinygpt.core.runtime import Runtime, restore_rng, rng_state
from tinygpt.core.weights import load_optimizer_state, load_weights, read_tensors, save_checkpoint
from tinygpt.data.batches import BatchSource
from tinygpt.train.state import Hooks, TrainState


def save(
    run: RunDir,
    model: torch.nn.Module,
    optimizer: Any,
    batches: BatchSource,
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
    batches: BatchSource,
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
