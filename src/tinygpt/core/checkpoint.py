"""What is inside one checkpoint folder, and writing it so that it is never half there.

A checkpoint is a folder (its name and place in a run are `tinygpt.core.run`'s business) with

- `model.safetensors`  the weights; a tied head is stored once and re-tied on load,
- `optimizer.pt`       optimiser state (tensors and numbers only: loads with weights_only=True),
- `rng.pt`             torch RNG states (CPU, CUDA, the data sampler's generator), grad scaler,
- `state.json`         step, tokens, elapsed time, best losses, Python/NumPy RNG states, format.

`write_checkpoint` writes into a hidden temporary folder, fsyncs every file, then renames it
into place, so a process killed at any instant leaves the previous checkpoint loadable and
never a partial folder under a final name. `discard` deletes one the same way round.

This module knows nothing about how training chooses what to save or when, nor about the
run folder around a checkpoint.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from tinygpt.core.errors import TinyGPTError
from tinygpt.core.files import fsync_dir, fsync_file, sha256_file, temp_sibling

FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
OPTIMIZER = "optimizer.pt"
RNG = "rng.pt"
STATE = "state.json"
_PREFIXES = ("_orig_mod.", "module.")  # torch.compile and DDP wrappers


# --------------------------------------------------------------------------------- weights


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
        if hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def save_weights(model: torch.nn.Module, path: Path) -> None:
    """Save weights with safetensors, storing each shared tensor once.

    `safetensors` refuses tensors that share memory (a tied LM head and token embedding), so
    aliases are dropped and recorded in the metadata as `alias -> kept name`.
    """
    state = clean_state_dict(unwrap(model).state_dict())
    kept: dict[tuple[int, int, tuple[int, ...]], str] = {}
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
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        aliases = json.loads((f.metadata() or {}).get("aliases", "{}"))
    missing = [m for m in missing if m not in aliases]
    if missing or unexpected:
        raise TinyGPTError(
            f"weights in {path} do not fit the model: missing {missing[:3]}, unexpected"
            f" {unexpected[:3]}; was the run's config.toml edited after training?"
        )


# ------------------------------------------------------------------------------ a folder


def is_complete(folder: Path) -> bool:
    """A checkpoint folder counts once its `state.json`, written last, is there."""
    return (Path(folder) / STATE).is_file()


def write_checkpoint(
    final: Path,
    model: torch.nn.Module,
    *,
    optimizer: Any = None,
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


def file_record(path: Path) -> dict[str, Any]:
    """What state.json remembers of a checkpoint file: its size and sha256."""
    return {"size": path.stat().st_size, "sha256": sha256_file(path)}


def write_error(exc: BaseException, where: Path, keep: str) -> TinyGPTError:
    """One line for a failed write: what, why, the space left, and what is still safe."""
    try:
        free = shutil.disk_usage(next(p for p in [where, *where.parents] if p.exists())).free
        space = f"{free / 2**20:,.1f} MiB free on that disk"
    except (OSError, StopIteration):
        space = "free space unknown"
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return TinyGPTError(
            f"the disk is full while saving {where} ({space}); {keep} Free some space (or"
            " point --out at another disk) and resume with --resume"
        )
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    reason = (reason.strip().splitlines() or [type(exc).__name__])[0][:200]
    return TinyGPTError(f"cannot write {where}: {reason} ({space}); {keep}")


def verify(folder: Path, names: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Read state.json and check the recorded size and sha256 of the files `names` (all
    recorded files when None); return the state. Checkpoints written before files were
    recorded are taken as they are. Raises `DamagedCheckpoint` naming the file."""
    folder = Path(folder)
    try:
        state = json.loads((folder / STATE).read_text(encoding="utf-8"))
        if not isinstance(state, dict) or not isinstance(state.get("step"), int):
            raise ValueError("no step")
    except (OSError, UnicodeDecodeError, ValueError):
        raise DamagedCheckpoint(folder, STATE, "is not a valid state file") from None
    recorded = state.get("files")
    if not isinstance(recorded, dict):
        return state  # written before checkpoints recorded their files
    for name, record in recorded.items():
        if names is not None and name not in names:
            continue
        path = folder / name
        if not path.is_file():
            raise DamagedCheckpoint(folder, name, "is missing")
        if path.stat().st_size != record.get("size"):
            raise DamagedCheckpoint(folder, name, "has another size than when it was saved")
        if sha256_file(path) != record.get("sha256"):
            raise DamagedCheckpoint(folder, name, "does not match its recorded sha256")
    return state


class DamagedCheckpoint(TinyGPTError):
    """A checkpoint file that is not what was saved. `tinygpt.core.run` adds which checkpoint to
    use instead."""

    def __init__(self, folder: Path, name: str, problem: str) -> None:
        super().__init__(f"checkpoint {folder.name} is damaged: {name} {problem}")
        self.folder, self.name, self.problem = Path(folder), name, problem


def discard(folder: Path) -> None:
    """Delete a checkpoint folder so that no half-deleted folder keeps a complete-looking
    name: rename it to a hidden name first (atomic), then remove it."""
    hidden = temp_sibling(Path(folder), "old")
    os.replace(folder, hidden)
    shutil.rmtree(hidden, ignore_errors=True)


def read_state(folder: Path) -> dict[str, Any]:
    return json.loads((Path(folder) / STATE).read_text(encoding="utf-8"))


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
