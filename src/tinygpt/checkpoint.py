"""Run folders and checkpoints: atomic save, exact resume state, rotation, loading.

A run folder (DESIGN.md §5) holds `config.toml`, `tokenizer.json` and `checkpoints/`. Each
checkpoint is a folder `checkpoints/step-NNNNNN/` with

- `model.safetensors`  the weights; a tied head is stored once and re-tied on load,
- `optimizer.pt`       optimiser state (tensors and numbers only: loads with weights_only=True),
- `rng.pt`             torch RNG states (CPU, CUDA, the data sampler's generator), grad scaler,
- `state.json`         step, tokens, elapsed time, best losses, Python/NumPy RNG states, format.

A checkpoint is written into a temporary folder, every file fsync'ed, then renamed into place;
only then do the `latest` / `best` pointer files (one line: the folder name) change, each
also written atomically. A process killed at any instant leaves the previous checkpoint
loadable and never a partial folder under a final name.

This module knows nothing about how training chooses what to save or when.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from tinygpt.config import RunConfig
from tinygpt.errors import TinyGPTError

FORMAT_VERSION = 1
_STEP_DIR = re.compile(r"^step-(\d{6,})$")
_PREFIXES = ("_orig_mod.", "module.")  # torch.compile and DDP wrappers


# ----------------------------------------------------------------------------- atomic I/O


def fsync_dir(path: Path) -> None:
    """Make a rename inside `path` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to `path` via a temporary file and a rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def _disk_error(exc: OSError, where: Path, keep: str) -> TinyGPTError:
    if exc.errno == errno.ENOSPC:
        return TinyGPTError(
            f"the disk is full while saving {where}; {keep} Free some space (or point --out"
            " at another disk) and resume with --resume"
        )
    return TinyGPTError(f"cannot write {where}: {exc.strerror or exc}; {keep}")


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


# ------------------------------------------------------------------------------ checkpoints


def step_name(step: int) -> str:
    return f"step-{step:06d}"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoint folders of a run, oldest first."""
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    found = [
        p
        for p in folder.iterdir()
        if p.is_dir() and _STEP_DIR.match(p.name) and (p / "state.json").is_file()
    ]
    return sorted(found, key=lambda p: int(_STEP_DIR.match(p.name).group(1)))


def _pointer(run_dir: Path, name: str) -> Path | None:
    file = Path(run_dir) / "checkpoints" / name
    if not file.is_file():
        return None
    target = file.parent / file.read_text(encoding="utf-8").strip()
    return target if (target / "state.json").is_file() else None


def resolve_checkpoint(run_dir: str | Path, which: str = "best") -> Path:
    """`best`, `latest` or `step-N` (N with or without zero padding) → checkpoint folder."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.toml").is_file():
        raise TinyGPTError(
            f"{run_dir} is not a run folder (no config.toml); give the folder that"
            " `tinygpt train --out` wrote"
        )
    available = list_checkpoints(run_dir)
    if not available:
        raise TinyGPTError(f"{run_dir} has no complete checkpoint yet; train it first")
    if which in ("best", "latest"):
        found = _pointer(run_dir, which) or (available[-1] if which == "latest" else None)
        if found is None:  # no best yet (no evaluation ran): fall back to the newest
            found = _pointer(run_dir, "latest") or available[-1]
        return found
    m = re.fullmatch(r"step-?(\d+)", which)
    if m:
        path = run_dir / "checkpoints" / step_name(int(m.group(1)))
        if path in available:
            return path
    names = ", ".join(p.name for p in available)
    raise TinyGPTError(f"no checkpoint {which!r} in {run_dir}; use best, latest or one of: {names}")


def save_checkpoint(
    run_dir: Path,
    step: int,
    model: torch.nn.Module,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    state: dict[str, Any] | None = None,
    tensors: dict[str, Any] | None = None,
    is_best: bool = False,
    keep_last: int = 0,
) -> Path:
    """Write `checkpoints/step-NNNNNN/` atomically, move the pointers, rotate old ones.

    `state` must be JSON-serialisable; `tensors` (RNG states, grad scaler) go to `rng.pt`.
    `keep_last` > 0 deletes older step folders beyond the newest `keep_last`, never `best`.
    """
    folder = Path(run_dir) / "checkpoints"
    final = folder / step_name(step)
    tmp = folder / f".{final.name}.tmp-{os.getpid()}"
    keep_msg = "the previous checkpoint is intact."
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        save_weights(model, tmp / "model.safetensors")
        if optimizer is not None:
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        if tensors:
            torch.save(tensors, tmp / "rng.pt")
        body = {"format_version": FORMAT_VERSION, "step": step, **(state or {})}
        (tmp / "state.json").write_text(json.dumps(body, indent=1), encoding="utf-8")
        for file in tmp.iterdir():
            _fsync_file(file)
        fsync_dir(tmp)
        if final.exists():  # re-saving the same step: move the old one aside, then delete
            _discard(final)
        os.replace(tmp, final)
        fsync_dir(folder)
        atomic_write_text(folder / "latest", final.name + "\n")
        if is_best:
            atomic_write_text(folder / "best", final.name + "\n")
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _disk_error(exc, final, keep_msg) from None
    if keep_last:
        _rotate(run_dir, keep_last)
    return final


def _rotate(run_dir: Path, keep_last: int) -> None:
    protected = {p for p in (_pointer(run_dir, "best"), _pointer(run_dir, "latest")) if p}
    steps = list_checkpoints(run_dir)
    for old in steps[: max(0, len(steps) - keep_last)]:
        if old not in protected:
            _discard(old)


def _discard(folder: Path) -> None:
    """Delete a checkpoint folder so that no half-deleted folder keeps a complete-looking
    name: rename it to a hidden name first (atomic), then remove it."""
    hidden = folder.with_name(f".{folder.name}.old-{os.getpid()}")
    os.replace(folder, hidden)
    shutil.rmtree(hidden, ignore_errors=True)


def read_state(checkpoint_dir: Path) -> dict[str, Any]:
    return json.loads((Path(checkpoint_dir) / "state.json").read_text(encoding="utf-8"))


def read_tensors(checkpoint_dir: Path) -> dict[str, Any]:
    path = Path(checkpoint_dir) / "rng.pt"
    return torch.load(path, weights_only=True) if path.is_file() else {}


def load_optimizer_state(checkpoint_dir: Path) -> dict[str, Any] | None:
    path = Path(checkpoint_dir) / "optimizer.pt"
    return torch.load(path, weights_only=True, map_location="cpu") if path.is_file() else None


# --------------------------------------------------------------------------------- runs


@dataclass
class LoadedRun:
    """A trained model ready for sampling or evaluation."""

    config: RunConfig
    model: torch.nn.Module
    tokenizer: Any
    run_dir: Path
    checkpoint_dir: Path

    @property
    def step(self) -> int:
        return int(read_state(self.checkpoint_dir).get("step", 0))


def load_run(run_dir: str | Path, checkpoint: str = "best", device: str = "cpu") -> LoadedRun:
    """Rebuild the model of a run folder from its config, tokenizer and a checkpoint."""
    from tinygpt.model import GPT
    from tinygpt.tokenizer import load_tokenizer

    run_dir = Path(run_dir)
    ckpt = resolve_checkpoint(run_dir, checkpoint)
    config = RunConfig.from_toml(run_dir / "config.toml")
    tokenizer = load_tokenizer(run_dir / "tokenizer.json")
    model = GPT(config.model)
    load_weights(model, ckpt / "model.safetensors")
    model.to(device).eval()
    return LoadedRun(config, model, tokenizer, run_dir, ckpt)


def write_run_files(run_dir: Path, config: RunConfig, tokenizer: Any) -> None:
    """config.toml and tokenizer.json: what every later command needs besides weights."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.toml", config.to_toml())
    tokenizer.save(run_dir / "tokenizer.json")  # atomic itself


def save_model_run(
    run_dir: str | Path, config: RunConfig, model: torch.nn.Module, tokenizer: Any, step: int = 0
) -> Path:
    """The minimal run folder (config, tokenizer, one checkpoint marked best and latest)."""
    run_dir = Path(run_dir)
    write_run_files(run_dir, config, tokenizer)
    return save_checkpoint(run_dir, step, model, state={"tokens": 0}, is_best=True)
