"""Weights and checkpoints in and out of torch: safetensors, the optimiser and RNG files.

`save_weights` stores a tied head once (safetensors refuses shared tensors) and
`load_weights` re-creates the alias. `write_checkpoint` writes a checkpoint folder into a
hidden temporary folder, fsyncs every file, records each file's size and sha256 in
`state.json` (written last), then renames it into place, so a process killed at any instant
leaves the previous checkpoint loadable and never a partial folder under a final name.
`save_checkpoint` puts one into a run folder and moves its pointers. What the files are
called and how they are checked is `tinygpt.core.checkpoint`'s; where a run keeps them is
`tinygpt.core.run`'s.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, cast

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from tinygpt.core.checkpoint import (
    FORMAT_VERSION,
    OPTIMIZER,
    RNG,
    STATE,
    WEIGHTS,
    DamagedCheckpoint,
    discard,
    file_record,
    write_error,
)
from tinygpt.core.errors import TinyGPTError
from tinygpt.core.files import as_umask_allows, fsync_dir, fsync_file, temp_sibling
from tinygpt.core.run import RunDir, step_name

_PREFIXES = ("_orig_mod.", "module.")  # torch.compile and DDP wrappers


def clean_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip `_orig_mod.` (torch.compile) and `module.` (DDP) prefixes from parameter names."""
    out = {}
    for key, value in state.items():
        while key.startswith(_PREFIXES):
            key = key.split(".", 1)[1]
        out[key.replace("._orig_mod.", ".")] = value
    return out


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain model under DDP and torch.compile wrappers."""
    while True:
        inner = getattr(model, "module", None)
        if isinstance(inner, torch.nn.Module):
            model = inner
        elif hasattr(model, "_orig_mod"):
            model = cast(torch.nn.Module, model._orig_mod)  # torch.compile's wrapper
        else:
            return model


def save_weights(model: torch.nn.Module, path: Path) -> None:
    """Save weights with safetensors, storing each shared tensor once.

    `safetensors` refuses tensors that share memory (a tied LM head and token embedding), so
    aliases are dropped and recorded in the metadata as `alias -> kept name`.
    """
    state = clean_state_dict(unwrap(model).state_dict())
    kept: dict[tuple[int, int | torch.SymInt, tuple[int, ...]], str] = {}
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    for name, tensor in state.items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if key in kept:
            aliases[name] = kept[key]
            continue
        kept[key] = name
        tensors[name] = tensor.detach().to("cpu").contiguous()
    save_file(tensors, str(path), metadata={"aliases": json.dumps(aliases), "format": "pt"})
    as_umask_allows(path)  # safetensors creates it for its owner only


def load_weights(model: torch.nn.Module, path: Path) -> None:
    """Load `model.safetensors` into `model`, re-creating tied aliases."""
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise TinyGPTError(f"cannot read weights {path}: {exc}") from None
    target = unwrap(model)
    try:
        missing, unexpected = target.load_state_dict(clean_state_dict(state), strict=False)
    except RuntimeError as exc:  # a tensor of another shape
        first = str(exc).strip().splitlines()[-1].strip()
        raise TinyGPTError(
            f"weights in {path} do not fit the model ({first}); was the run's config.toml"
            " edited after training, or a model setting overridden on --resume?"
        ) from None
    with safe_open(str(path), framework="pt") as f:
        aliases = json.loads((f.metadata() or {}).get("aliases", "{}"))
    missing = [m for m in missing if m not in aliases]
    if missing or unexpected:
        raise TinyGPTError(
            f"weights in {path} do not fit the model: missing {missing[:3]}, unexpected"
            f" {unexpected[:3]}; was the run's config.toml edited after training?"
        )


# ------------------------------------------------------------------------------ a folder


def write_checkpoint(
    final: Path,
    model: torch.nn.Module,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    state: dict[str, Any] | None = None,
    tensors: dict[str, Any] | None = None,
) -> Path:
    """Write the checkpoint folder `final` atomically (module docstring) and return it.

    `state` must be JSON-serialisable; `tensors` (RNG states, grad scaler) go to `rng.pt`.
    state.json, written last, records the size and sha256 of every other file, so that a
    damaged checkpoint is noticed on load (`verify`). An existing folder of the same name is
    replaced only once the new one is complete. Any failure to write — the disk full, a
    quota, an I/O error, raised by the OS, torch or safetensors — becomes one TinyGPTError
    saying what was being written and how much space is left, and leaves no temporary files.
    """
    final = Path(final)
    tmp = temp_sibling(final)
    writing = final
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        writing = tmp / WEIGHTS
        save_weights(model, writing)
        if optimizer is not None:
            writing = tmp / OPTIMIZER
            torch.save(optimizer.state_dict(), writing)
        if tensors:
            writing = tmp / RNG
            torch.save(tensors, writing)
        body = {"format_version": FORMAT_VERSION, "step": (state or {}).get("step", 0)}
        body.update(state or {})
        body["files"] = {f.name: file_record(f) for f in sorted(tmp.iterdir())}
        writing = tmp / STATE
        writing.write_text(json.dumps(body, indent=1), encoding="utf-8")
        for file in tmp.iterdir():
            fsync_file(file)
        fsync_dir(tmp)
        writing = final
        if final.exists():  # re-saving the same step: move the old one aside, then delete
            discard(final)
        os.replace(tmp, final)
        fsync_dir(final.parent)
    except (OSError, RuntimeError, SafetensorError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        name = final / writing.name if writing.parent == tmp else writing
        raise write_error(exc, name, "the previous checkpoint is intact.") from None
    return final


def save_checkpoint(
    run: RunDir,
    step: int,
    model: torch.nn.Module,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    state: dict[str, Any] | None = None,
    tensors: dict[str, Any] | None = None,
    is_best: bool = False,
    keep_last: int = 0,
) -> Path:
    """Write run `run`'s `checkpoints/step-NNNNNN/`, then move the pointers, then rotate.

    `keep_last` > 0 deletes older step folders beyond the newest `keep_last`, never the
    ones `best` or `latest` point at.
    """
    final = write_checkpoint(
        run.checkpoints_dir / step_name(step),
        model,
        optimizer=optimizer,
        state={"step": step, **(state or {})},
        tensors=tensors,
    )
    run.point_at(final, is_best=is_best)
    if keep_last:
        run.rotate(keep_last)
    return final


def read_tensors(folder: Path) -> dict[str, Any]:
    return _load_pt(Path(folder) / RNG) or {}


def load_optimizer_state(folder: Path) -> dict[str, Any] | None:
    return _load_pt(Path(folder) / OPTIMIZER)


def _load_pt(path: Path) -> Any:
    """A torch file of a checkpoint (weights_only: tensors, numbers and containers only)."""
    if not path.is_file():
        return None
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:  # torch raises many kinds for a damaged archive
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise DamagedCheckpoint(path.parent, path.name, f"cannot be read ({first})") from None
