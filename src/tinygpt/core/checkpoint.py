"""What is inside one checkpoint folder, and checking it, without torch.

A checkpoint is a folder (its name and place in a run are `tinygpt.core.run`'s business) with

- `model.safetensors`  the weights; a tied head is stored once and re-tied on load,
- `optimizer.pt`       optimiser state (tensors and numbers only: loads with weights_only=True),
- `rng.pt`             torch RNG states (CPU, CUDA, the data sampler's generator), grad scaler,
- `state.json`         step, tokens, elapsed time, best losses, Python/NumPy RNG states, format.

This module owns the names, `state.json` (written last: it records the size and sha256 of
every other file, `verify` checks them), the one-line message for a failed write, and
`discard`, which deletes a folder so that no half-deleted one keeps a complete-looking name.
Writing and reading the tensors is `tinygpt.core.weights`' (it needs torch; this module does
not, so that finding and checking a run's checkpoints stays light). It knows nothing about
how training chooses what to save or when.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path
from typing import Any

from tinygpt.core.errors import TinyGPTError
from tinygpt.core.files import sha256_file, temp_sibling

FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
OPTIMIZER = "optimizer.pt"
RNG = "rng.pt"
STATE = "state.json"


# ------------------------------------------------------------------------------ a folder


def is_complete(folder: Path) -> bool:
    """A checkpoint folder counts once its `state.json`, written last, is there."""
    return (Path(folder) / STATE).is_file()


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
