"""Where and how the numbers are computed: device, threads, precision, processes, seeds.

Owns the choices every command that runs a model makes before its work starts:

- **Device.** `resolve_device("auto")` picks CUDA, then MPS, then the CPU; an explicit device
  must exist.
- **Precision.** `choose_precision` turns `auto` into fp32, bf16 or fp16 for this device and
  model size; `autocast_for` gives the matching autocast context; fp16 on CUDA also needs a
  gradient scaler (`Runtime.scaler`).
- **Processes.** `start_distributed` joins the process group when launched by `torchrun`
  (NCCL on GPUs, Gloo on CPU); `Runtime.close` leaves it — with a barrier only when the run
  ended normally, since a barrier waits for ever for a rank that has already failed.
- **Random state.** `seed_all` seeds Python, NumPy and torch the way training always has;
  `rng_state` / `restore_rng` capture and restore all three for an exact resume.

It knows nothing about models, data or run folders.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.distributed as tdist

from tinygpt.core.config import GPTConfig, TrainConfig
from tinygpt.core.errors import TinyGPTError
from tinygpt.core.info import param_breakdown


def resolve_device(device: str = "auto") -> str:
    """'auto' picks cuda, then mps, then cpu; an explicit device must be available."""
    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise TinyGPTError("--device cuda was asked for but CUDA is not available; use cpu")
    if device == "mps" and not torch.backends.mps.is_available():
        raise TinyGPTError("--device mps was asked for but MPS is not available; use cpu")
    if device not in ("cpu", "mps") and not device.startswith("cuda"):
        raise TinyGPTError(f"unknown device {device!r}; use auto, cpu, cuda or mps")
    return device


def cpu_has_fast_bf16() -> bool:
    """True on CPUs with AMX or AVX-512 BF16 instructions, where bf16 matmuls beat fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f in flags for f in ("amx_bf16", "avx512_bf16"))


def choose_precision(requested: str, device: str, model: GPTConfig) -> str:
    """Resolve `auto` to fp32, bf16 or fp16 for this device and model size.

    CUDA: bf16 on Ampere and newer, else fp16 with a gradient scaler. CPU: bf16 only with
    AMX/AVX-512-BF16 hardware *and* matrices wide enough to profit — measured on such a CPU
    (DESIGN.md §7), a 128-wide model ran 0.78× as fast in bf16 and a 384-wide one 2.39× faster;
    we switch at 256. Elsewhere fp32.
    """
    if requested != "auto":
        if requested == "fp16" and not device.startswith("cuda"):
            raise TinyGPTError("train.precision = fp16 needs a CUDA GPU; use bf16 or fp32")
        return requested
    if device.startswith("cuda"):
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device == "cpu" and cpu_has_fast_bf16() and model.n_embd >= 256:
        return "bf16"
    return "fp32"


def autocast_for(precision: str, device: str) -> Callable[[], contextlib.AbstractContextManager]:
    """A zero-argument factory of the autocast context for this precision."""
    if precision == "fp32":
        return contextlib.nullcontext
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    device_type = "cuda" if device.startswith("cuda") else device
    return lambda: torch.autocast(device_type=device_type, dtype=dtype)


def memory_bytes(device: str) -> int | None:
    """The memory a model on `device` can use: the GPU's, or this machine's RAM (None when
    unknown)."""
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_properties(torch.device(device)).total_memory
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def check_model_fits(model: GPTConfig, device: str, *, training: bool) -> None:
    """Refuse a model whose fp32 weights (and, for training, gradients and AdamW's two
    moments: 16 bytes a parameter) exceed the device's memory, before allocating any of it."""
    params = param_breakdown(model)["total"]
    need = params * (16 if training else 4)
    have = memory_bytes(device)
    if have is not None and need > have:
        what = "training it needs about" if training else "its weights need"
        raise TinyGPTError(
            f"the model has {params:,} parameters: {what} {need / 2**30:,.1f} GiB in fp32, more"
            f" than the {have / 2**30:,.1f} GiB of memory {device} has; choose a smaller"
            " model.n_embd, model.n_layer or model.vocab_size"
        )


@dataclass
class Dist:
    """Where this process stands in a (possibly single-process) job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def start_distributed(device: str) -> Dist:
    """Join the process group when launched by `torchrun` (NCCL on GPUs, Gloo on CPU).

    A peer that never arrives fails the job after TINYGPT_DIST_TIMEOUT seconds (default 600)
    instead of hanging for ever.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    timeout_s = float(os.environ.get("TINYGPT_DIST_TIMEOUT", "600"))
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local)
    if not tdist.is_initialized():
        tdist.init_process_group(backend, timeout=dt.timedelta(seconds=timeout_s))
    return Dist(rank, world, local)


def close_distributed(dist: Dist, *, ok: bool) -> None:
    """Leave the process group. Only a run that ended normally waits at a barrier for the
    other ranks: after an error the others may never arrive, and the barrier would hang."""
    if not dist.enabled:
        return
    if not tdist.is_initialized():
        return
    if ok:
        tdist.barrier()
    tdist.destroy_process_group()


@dataclass
class Runtime:
    """The device, processes and numerics of one training job (see the module docstring)."""

    device: str = "cpu"
    dist: Dist = field(default_factory=Dist)
    precision: str = "fp32"
    scaler: torch.amp.GradScaler | None = None  # for fp16
    closed: bool = False

    @classmethod
    def start(cls, tc: TrainConfig) -> Runtime:
        """Resolve the device, join the process group, set the thread count."""
        device = resolve_device(tc.device)
        dist = start_distributed(device)
        if dist.enabled and device.startswith("cuda"):
            device = f"cuda:{dist.local_rank}"
        if tc.threads:
            torch.set_num_threads(tc.threads)
        return cls(device=device, dist=dist)

    def set_precision(self, requested: str, model: GPTConfig) -> None:
        self.precision = choose_precision(requested, self.device, model)
        self.scaler = torch.amp.GradScaler("cuda") if self.precision == "fp16" else None

    @property
    def autocast(self) -> Callable[[], contextlib.AbstractContextManager]:
        return autocast_for(self.precision, self.device)

    def close(self, *, ok: bool) -> None:
        """Leave the process group (once); see `close_distributed`."""
        if not self.closed:
            self.closed = True
            close_distributed(self.dist, ok=ok)


# ----------------------------------------------------------------------------- random state


def seed_all(seed: int) -> None:
    """Seed Python and NumPy with `seed` and torch's global generator (dropout, weight
    initialisation) with seed + 1; data samplers keep generators of their own."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed + 1)


def rng_state() -> tuple[dict[str, Any], dict[str, Any]]:
    """(JSON part, tensor part) of every global random generator training touches."""
    # The global generator is an MT19937, whose legacy state is this tuple.
    np_state = cast(tuple[str, np.ndarray, int, int, float], np.random.get_state())
    py_state = random.getstate()
    json_part = {
        "python_rng": [py_state[0], list(py_state[1]), py_state[2]],
        "numpy_rng": [
            np_state[0],
            np_state[1].tolist(),
            int(np_state[2]),
            int(np_state[3]),
            float(np_state[4]),
        ],
    }
    tensors: dict[str, Any] = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors["torch_cuda"] = torch.cuda.get_rng_state_all()
    return json_part, tensors


def restore_rng(state: dict[str, Any], tensors: dict[str, Any]) -> None:
    """Put back what `rng_state` captured."""
    py = state["python_rng"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npr = state["numpy_rng"]
    np.random.set_state((npr[0], np.array(npr[1], dtype=np.uint32), npr[2], npr[3], npr[4]))
    torch.set_rng_state(tensors["torch_cpu"])
    if "torch_cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(tensors["torch_cuda"])
