"""The training loop: one process, or many under `torchrun` with PyTorch DDP.

`train()` is a plain function built from named helpers — `choose_precision`,
`build_optimizer`, `lr_at`, `BatchSampler`, `train_step`, `evaluate` (from
`tinygpt.evaluate`) and `save_checkpoint` (from `tinygpt.checkpoint`). Fine-tuning reuses it
by varying data, loss mask and trainable parameters.

Policies worth knowing:

- **Budgets.** `max_steps`, `max_tokens` and `max_time` bound the optimisation loop; the first
  to run out ends it. The learning rate follows *progress* in [0, 1] — the largest of
  step/max_steps, tokens/max_tokens and seconds/max_time — so a 60-second run decays to the
  end of its 60 seconds. Preparation and the final full evaluation are timed separately.
- **Windows and documents.** Training windows are drawn uniformly at random from the token
  stream, in which every document ends with an end-of-text token. A window may cross that
  boundary: the model then learns that a new, unrelated document starts after end-of-text
  (the GPT-2 convention). Nothing is masked, no text is thrown away.
- **Determinism.** One seed. The data sampler draws from its own `torch.Generator`
  (seed), dropout from torch's global generator (seeded with seed + 1), samples from the
  generator's private one. With the same seed and thread count on CPU, two runs give
  bit-identical losses, and a run resumed from a checkpoint continues bit-identically.
- **DDP.** Every rank draws the same global batch and keeps its own rows
  (`rank::world_size`), so N processes see exactly what one process with the same global
  batch sees. Gradient accumulation skips the all-reduce (`no_sync`) until the last
  micro-step; only rank 0 writes files.

It knows nothing about how datasets are made (`tinygpt.data`) or how tokens are sampled.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import io
import json
import logging
import math
import os
import platform
import random
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tinygpt import __version__
from tinygpt.checkpoint import (
    FORMAT_VERSION,
    atomic_write_text,
    list_checkpoints,
    load_optimizer_state,
    load_weights,
    read_state,
    read_tensors,
    resolve_checkpoint,
    save_checkpoint,
    write_run_files,
)
from tinygpt.config import RunConfig, TrainConfig
from tinygpt.errors import TinyGPTError
from tinygpt.evaluate import evaluate, spread_windows
from tinygpt.model import GPT, GPTConfig

METRICS_FIELDS = [
    "step",
    "tokens",
    "time_s",
    "train_loss",
    "val_loss_est",
    "lr",
    "grad_norm",
    "tokens_per_s",
]
log = logging.getLogger("tinygpt.train")


# ------------------------------------------------------------------------- device & numerics


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


def setup_distributed(device: str) -> Dist:
    """Join the process group when launched by `torchrun` (NCCL on GPUs, Gloo on CPU).

    A peer that never arrives fails the job after TINYGPT_DIST_TIMEOUT seconds (default 600)
    instead of hanging for ever.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    timeout_s = float(os.environ.get("TINYGPT_DIST_TIMEOUT", "600"))
    import torch.distributed as tdist

    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local)
    if not tdist.is_initialized():
        tdist.init_process_group(backend, timeout=dt.timedelta(seconds=timeout_s))
    return Dist(rank, world, local)


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


# ----------------------------------------------------------------------------- optimiser


def build_optimizer(model: torch.nn.Module, tc: TrainConfig, device: str) -> Any:
    """The optimiser `tc.optimizer` names, with weight decay on matrices only.

    adamw: AdamW on everything; decay on matrices (embeddings and linear weights), not on
    biases and norm gains — decaying those hurts and buys no regularisation. On CUDA this is
    torch's fused kernel; elsewhere `tinygpt.optim.AdamW`, the same arithmetic in foreach
    kernels without torch.optim's start-up cost.
    muon: Muon (`tinygpt.optim`) on the 2-D weights inside the blocks, at `muon_lr`; AdamW
    on the embeddings, the output head and the vectors, at `lr`. Each group carries
    `lr_scale`, its learning rate over `lr`, so one schedule drives both.
    """
    from tinygpt import optim

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
        return optim.Muon(groups, lr=tc.lr, momentum=tc.muon_momentum, betas=betas)
    groups = _decay_groups([p for _, p in named], tc.weight_decay)
    if device.startswith("cuda"):
        return torch.optim.AdamW(groups, lr=tc.lr, betas=betas, fused=True)
    return optim.AdamW(groups, lr=tc.lr, betas=betas)


def _decay_groups(params: list[torch.Tensor], weight_decay: float, **extra: Any) -> list[dict]:
    """Two parameter groups: matrices with weight decay, vectors without."""
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay, **extra},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0, **extra},
    ]


def lr_at(step: int, progress: float, tc: TrainConfig) -> float:
    """Learning rate for `step` at budget `progress` in [0, 1].

    Linear warm-up over `warmup_steps`, then by `schedule`:
    cosine from lr to lr·min_lr_ratio over the budget; wsd holds lr and decays linearly to
    lr·min_lr_ratio over the last `warmdown_frac` of the budget; constant holds lr.

    >>> tc = TrainConfig(lr=1.0, warmup_steps=10, min_lr_ratio=0.0, max_steps=100)
    >>> lr_at(4, 0.0, tc), lr_at(50, 0.5, tc), round(lr_at(99, 1.0, tc), 6)
    (0.5, 0.5, 0.0)
    """
    warm = min(1.0, (step + 1) / tc.warmup_steps) if tc.warmup_steps else 1.0
    p = min(max(progress, 0.0), 1.0)
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


def budget_progress(step: int, tokens: int, seconds: float, tc: TrainConfig) -> float:
    """How much of the budget is spent, in [0, 1] (the largest fraction of any budget set)."""
    parts = []
    if tc.max_steps:
        parts.append(step / tc.max_steps)
    if tc.max_tokens:
        parts.append(tokens / tc.max_tokens)
    if tc.max_time:
        parts.append(seconds / tc.max_time)
    return max(parts) if parts else 0.0


# ---------------------------------------------------------------------------------- data


class BatchSampler:
    """Random training windows from a token array, reproducible from a generator state.

    Every rank draws the same `global_batch` offsets and keeps rows rank::world_size.
    """

    def __init__(
        self,
        tokens: np.ndarray,
        block_size: int,
        global_batch: int,
        seed: int,
        dist: Dist,
        device: str,
    ) -> None:
        self.tokens = tokens
        self.block_size = block_size
        self.global_batch = global_batch
        self.dist = dist
        self.device = device
        self.generator = torch.Generator().manual_seed(seed)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        T = self.block_size
        starts = torch.randint(len(self.tokens) - T, (self.global_batch,), generator=self.generator)
        mine = starts[self.dist.rank :: self.dist.world_size].tolist()
        rows = np.stack([self.tokens[s : s + T + 1] for s in mine]).astype(np.int64)
        xy = torch.from_numpy(rows)  # (B, T+1)
        x, y = xy[:, :-1], xy[:, 1:]
        if self.device.startswith("cuda"):
            return (
                x.pin_memory().to(self.device, non_blocking=True),
                y.pin_memory().to(self.device, non_blocking=True),
            )
        return x.to(self.device), y.to(self.device)


# --------------------------------------------------------------------------------- a step


@dataclass
class StepResult:
    loss: float
    grad_norm: float
    skipped: bool = False


def train_step(
    model: torch.nn.Module,
    sampler: BatchSampler,
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
    """One optimiser step over `accum` micro-batches; returns the mean loss (all ranks)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
    total = torch.zeros((), device=sampler.device)
    for micro in range(accum):
        x, y = sampler.next()
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

        tdist.all_reduce(
            mean, op=tdist.ReduceOp.AVG if sampler.device.startswith("cuda") else tdist.ReduceOp.SUM
        )
        if not sampler.device.startswith("cuda"):
            mean /= dist.world_size  # Gloo has no AVG
    loss_value = mean.item()
    if not math.isfinite(loss_value):
        optimizer.zero_grad(set_to_none=True)
        if skip_nonfinite:
            return StepResult(loss_value, float("nan"), skipped=True)
        raise NonFiniteLoss(loss_value)
    if scaler:
        scaler.unscale_(optimizer)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    if grad_clip > 0:
        norm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
    else:
        norm = torch.linalg.vector_norm(
            torch.stack([p.grad.detach().norm() for p in params if p.grad is not None])
        )
    if scaler:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return StepResult(loss_value, float(norm))


class NonFiniteLoss(Exception):
    def __init__(self, value: float) -> None:
        super().__init__(value)
        self.value = value


# ------------------------------------------------------------------------------ the loop


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


@dataclass
class _Watch:
    """Loggers the loop writes to (rank 0 only)."""

    metrics: Path
    tb: Any = None
    wandb: Any = None
    bar: Any = None

    def row(self, row: dict[str, Any]) -> None:
        new = not self.metrics.exists()
        with open(self.metrics, "a", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=METRICS_FIELDS, lineterminator="\n")
            if new:
                writer.writeheader()
            writer.writerow({k: _fmt(row.get(k)) for k in METRICS_FIELDS})
        numbers = {k: v for k, v in row.items() if isinstance(v, (int, float)) and k != "step"}
        if self.tb:
            for key, value in numbers.items():
                self.tb.add_scalar(key, value, row["step"])
        if self.wandb:
            self.wandb.log(numbers, step=row["step"])


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)  # shortest text that reads back to the same float: exact
    return str(value)


def _truncate_metrics(path: Path, after_step: int) -> None:
    """On resume, drop rows logged after the checkpoint (they will be logged again)."""
    if not path.is_file():
        return
    with open(path, newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if int(r["step"]) <= after_step]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=METRICS_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


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


def provenance(command: list[str] | None, data_meta: dict[str, Any], extra: dict[str, Any]) -> dict:
    """What produced a run: versions, code, command line, data identity."""
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
        "dataset": {k: data_meta.get(k) for k in ("path", "key", "tokenizer_hash", "source")},
        "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        **extra,
    }


def _rng_state() -> tuple[dict[str, Any], dict[str, Any]]:
    """(JSON part, tensor part) of every RNG the loop touches."""
    np_state = np.random.get_state()
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


def _restore_rng(state: dict[str, Any], tensors: dict[str, Any]) -> None:
    py = state["python_rng"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npr = state["numpy_rng"]
    np.random.set_state((npr[0], np.array(npr[1], dtype=np.uint32), npr[2], npr[3], npr[4]))
    torch.set_rng_state(tensors["torch_cpu"])
    if "torch_cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(tensors["torch_cuda"])


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


def _accumulation(tc: TrainConfig, block_size: int, world: int) -> int:
    micro_tokens = tc.batch_size * block_size * world
    if not tc.tokens_per_step:
        return 1
    if tc.tokens_per_step % micro_tokens:
        raise TinyGPTError(
            f"train.tokens_per_step = {tc.tokens_per_step} is not a multiple of one micro-step"
            f" (batch_size {tc.batch_size} × block_size {block_size} × {world} processes ="
            f" {micro_tokens}); use {max(1, round(tc.tokens_per_step / micro_tokens)) * micro_tokens}"
        )
    return tc.tokens_per_step // micro_tokens


def train(
    config: RunConfig,
    *,
    data_dir: str | Path,
    out_dir: str | Path,
    resume: str | None = None,
    command: list[str] | None = None,
    progress: bool = True,
    on_checkpoint: Callable[[int, Path], None] | None = None,
) -> TrainResult:
    """Train `config` on the prepared dataset `data_dir`, writing the run into `out_dir`.

    `resume`: None (a fresh run; refuses a folder that already holds checkpoints), "yes"
    (continue from the latest checkpoint; it must exist) or "auto" (continue if one exists).
    `on_checkpoint(step, path)` is called after each checkpoint is safely on disk.
    """
    from tinygpt.data import open_dataset
    from tinygpt.generate import resolve_device

    t_start = time.perf_counter()
    out = Path(out_dir)
    tc = config.train
    device = resolve_device(tc.device)
    dist = setup_distributed(device)
    if dist.enabled and device.startswith("cuda"):
        device = f"cuda:{dist.local_rank}"
    if tc.threads:
        torch.set_num_threads(tc.threads)

    dataset = open_dataset(data_dir)
    tokenizer = dataset.load_tokenizer()
    # Record the dataset in the run's config, so that `--resume` finds it again.
    config.data.dir = str(Path(dataset.path).resolve())
    if config.model.vocab_size != tokenizer.vocab_size:
        config.model.vocab_size = tokenizer.vocab_size
        config.model.__post_init__()

    existing = list_checkpoints(out)
    start_ckpt = None
    if resume in ("yes", "auto") and existing:
        start_ckpt = resolve_checkpoint(out, "latest")
    elif resume == "yes":
        raise TinyGPTError(
            f"--resume: {out} has no checkpoint to resume from; train without --resume,"
            " or use --resume auto"
        )
    elif existing and resume is None:
        raise TinyGPTError(
            f"{out} already holds a run; continue it with --resume, or choose another --out"
        )
    if start_ckpt is not None:
        run_tok = out / "tokenizer.json"
        from tinygpt.tokenizer import file_hash

        if run_tok.is_file() and file_hash(run_tok) != file_hash(dataset.tokenizer_path):
            raise TinyGPTError(
                f"the dataset {dataset.path} was made with another tokenizer than the run"
                f" {out}; resume with the dataset the run was trained on"
            )

    block = config.model.block_size
    global_batch = tc.batch_size * dist.world_size
    check_data(len(dataset.train), len(dataset.val), block, global_batch)
    accum = _accumulation(tc, block, dist.world_size)
    tokens_per_step = global_batch * block * accum
    if not tc.has_budget:
        raise TinyGPTError("no training budget: give --max-steps, --max-tokens or --max-time")

    # Seeds: the data sampler has its own generator; dropout uses the global one.
    random.seed(tc.seed)
    np.random.seed(tc.seed % 2**32)
    torch.manual_seed(tc.seed + 1)
    model = GPT(config.model).to(device)
    precision = choose_precision(tc.precision, device, config.model)
    autocast = autocast_for(precision, device)
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
    optimizer = build_optimizer(model, tc, device)
    sampler = BatchSampler(dataset.train, block, global_batch, tc.seed, dist, device)

    step, tokens, elapsed = 0, 0, 0.0
    best_est: float | None = None
    stale = 0
    if start_ckpt is not None:
        state = read_state(start_ckpt)
        tensors = read_tensors(start_ckpt)
        load_weights(model, start_ckpt / "model.safetensors")
        opt_state = load_optimizer_state(start_ckpt)
        if opt_state:
            optimizer.load_state_dict(opt_state)
        step, tokens, elapsed = state["step"], state["tokens"], state.get("elapsed_s", 0.0)
        best_est, stale = state.get("best_val_loss_est"), state.get("stale_evals", 0)
        _restore_rng(state, tensors)
        sampler.generator.set_state(tensors["data_generator"])
        if scaler and "grad_scaler" in tensors:
            scaler.load_state_dict(tensors["grad_scaler"])

    net: torch.nn.Module = model
    if tc.compile:
        net = torch.compile(net)
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        net = DDP(net, device_ids=[dist.local_rank] if device.startswith("cuda") else None)

    watch = None
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "samples").mkdir(exist_ok=True)
        write_run_files(out, config, tokenizer)
        _setup_log_file(out / "train.log")
        meta = {**dataset.meta, "path": str(Path(dataset.path).resolve())}
        info = {
            "device": device,
            "precision": precision,
            "threads": torch.get_num_threads(),
            "world_size": dist.world_size,
            "tokens_per_step": tokens_per_step,
            "grad_accum": accum,
            "parameters": model.num_params(),
            "resumed_from": start_ckpt.name if start_ckpt else None,
        }
        prov = provenance(command, meta, info)
        if start_ckpt is not None and (out / "run.json").is_file():
            # keep how the run started; note each resumption
            first = json.loads((out / "run.json").read_text(encoding="utf-8"))
            first.setdefault("resumed", []).append(
                {k: prov[k] for k in ("started", "command", "git_commit", "resumed_from")}
            )
            prov = first
        atomic_write_text(out / "run.json", json.dumps(prov, indent=1))
        if start_ckpt is not None:
            _truncate_metrics(out / "metrics.csv", step)
        else:  # rows left by an earlier attempt that never reached a checkpoint
            (out / "metrics.csv").unlink(missing_ok=True)
        watch = _Watch(out / "metrics.csv", tb=_tensorboard(out, tc), wandb=_wandb(out, config))
        log.info(
            "run %s: %s parameters, %s, %s, %d tokens/step, device %s",
            out,
            f"{model.num_params():,}",
            precision,
            f"{dist.world_size} process(es)",
            tokens_per_step,
            device,
        )

    est_windows = spread_windows(len(dataset.val), block, tc.eval_windows)

    def estimate() -> float:
        r = evaluate(
            model,
            dataset.val,
            block,
            batch_size=tc.eval_batch_size,
            device=device,
            window_ids=est_windows,
            autocast=autocast,
        )
        return r.loss

    def checkpoint(is_best: bool) -> Path | None:
        if not dist.is_main:
            return None
        json_part, tensor_part = _rng_state()
        tensor_part["data_generator"] = sampler.generator.get_state()
        if scaler:
            tensor_part["grad_scaler"] = scaler.state_dict()
        path = save_checkpoint(
            out,
            step,
            model,
            optimizer=optimizer,
            is_best=is_best,
            keep_last=tc.keep_last,
            state={
                "tokens": tokens,
                "elapsed_s": elapsed,
                "best_val_loss_est": best_est,
                "stale_evals": stale,
                "precision": precision,
                **json_part,
            },
            tensors=tensor_part,
        )
        if on_checkpoint:
            on_checkpoint(step, path)
        return path

    result = TrainResult(out, step, tokens, elapsed)
    bar = _progress_bar(progress and dist.is_main, tc)
    stopped = "budget"
    last_saved = step if start_ckpt is not None else -1
    loop_start = time.perf_counter() - elapsed
    window_tokens, window_start = 0, time.perf_counter()
    try:
        while budget_progress(step, tokens, elapsed, tc) < 1.0:
            lr = lr_at(step, budget_progress(step, tokens, elapsed, tc), tc)
            try:
                res = train_step(
                    net,
                    sampler,
                    optimizer,
                    accum=accum,
                    lr=lr,
                    grad_clip=tc.grad_clip,
                    autocast=autocast,
                    scaler=scaler,
                    dist=dist,
                    skip_nonfinite=tc.skip_nonfinite,
                )
            except NonFiniteLoss as exc:
                good = list_checkpoints(out)
                raise TinyGPTError(
                    f"the loss became {exc.value} at step {step + 1}; last good checkpoint:"
                    f" {good[-1] if good else 'none'}. Likely causes: a learning rate too high"
                    " (lower --train.lr), fp16 overflow (use --train.precision bf16 or fp32),"
                    " or no gradient clipping; --train.skip_nonfinite true skips such steps"
                ) from None
            except torch.OutOfMemoryError:
                raise TinyGPTError(_oom_message(tc, block, accum)) from None
            step += 1
            tokens += tokens_per_step
            window_tokens += tokens_per_step
            elapsed = time.perf_counter() - loop_start
            evaluating = step % tc.eval_interval == 0
            val_est = None
            if evaluating:
                val_est = estimate()
                improved = best_est is None or val_est < best_est
                best_est = val_est if improved else best_est
                stale = 0 if improved else stale + 1
            if dist.is_main and (step % tc.log_interval == 0 or evaluating or step == 1):
                now = time.perf_counter()
                tps = window_tokens / max(now - window_start, 1e-9)
                window_tokens, window_start = 0, now
                watch.row(
                    {
                        "step": step,
                        "tokens": tokens,
                        "time_s": round(elapsed, 3),
                        "train_loss": res.loss,
                        "val_loss_est": val_est,
                        "lr": lr,
                        "grad_norm": res.grad_norm,
                        "tokens_per_s": round(tps, 1),
                    }
                )
                if bar is not None:
                    bar.set_postfix_str(
                        f"loss {res.loss:.4f} lr {lr:.2e} {tps:,.0f} tok/s"
                        + (f" val {val_est:.4f}" if val_est else "")
                    )
                if evaluating:
                    log.info("step %d: train loss %.4f, val_loss_est %.4f", step, res.loss, val_est)
            if bar is not None:
                bar.n = round(100 * min(1.0, budget_progress(step, tokens, elapsed, tc)), 1)
                bar.refresh()
            if tc.sample_interval and step % tc.sample_interval == 0 and dist.is_main:
                _write_sample(model, tokenizer, tc, out, step)
            due = evaluating or (tc.checkpoint_interval and step % tc.checkpoint_interval == 0)
            if due:
                checkpoint(is_best=evaluating and stale == 0)
                last_saved = step
            if tc.early_stop_patience and stale >= tc.early_stop_patience:
                stopped = "early_stop"
                log.info("early stop at step %d: no val improvement in %d evaluations", step, stale)
                break
    except KeyboardInterrupt:
        stopped = "interrupted"
        log.info("interrupted at step %d; saving a checkpoint", step)
    finally:
        if bar is not None:
            bar.close()

    train_time = elapsed
    result.step, result.tokens, result.train_time_s, result.stopped = (
        step,
        tokens,
        train_time,
        stopped,
    )
    result.best_val_loss_est = best_est
    if stopped == "interrupted":
        if step != last_saved and step > 0:
            checkpoint(is_best=False)
        if dist.is_main:
            _plots(out)
        _finish(dist)
        return result

    # The final full evaluation (timed apart from the loop).
    t_eval = time.perf_counter()
    full = evaluate(
        model, dataset.val, block, batch_size=tc.eval_batch_size, device=device, autocast=autocast
    )
    result.val_loss = full.loss
    eval_time = time.perf_counter() - t_eval
    if step != last_saved:
        is_best = best_est is None or full.loss <= best_est
        checkpoint(is_best=is_best)
    if dist.is_main:
        result.sample = _write_sample(model, tokenizer, tc, out, step)
        result.timings = {
            "train_s": round(train_time, 3),
            "final_eval_s": round(eval_time, 3),
            "total_s": round(time.perf_counter() - t_start, 3),
        }
        summary = {
            "step": step,
            "tokens": tokens,
            "train_time_s": round(train_time, 3),
            "val_loss": full.loss,
            "val_tokens": full.tokens,
            "best_val_loss_est": best_est,
            "stopped": stopped,
            "tokens_per_s": round(tokens / max(train_time, 1e-9), 1),
            "precision": precision,
            "device": device,
            **result.timings,
        }
        atomic_write_text(out / "summary.json", json.dumps(summary, indent=1))
        log.info(
            "done: step %d, val_loss %.4f (%d tokens), %.1f s training",
            step,
            full.loss,
            full.tokens,
            train_time,
        )
        _plots(out)
        if watch and watch.tb:
            watch.tb.close()
        if watch and watch.wandb:
            watch.wandb.summary.update({"val_loss": full.loss})
            watch.wandb.finish()
    _finish(dist)
    return result


def _finish(dist: Dist) -> None:
    if dist.enabled:
        import torch.distributed as tdist

        tdist.barrier()
        tdist.destroy_process_group()


def _oom_message(tc: TrainConfig, block: int, accum: int) -> str:
    smaller = max(1, tc.batch_size // 2)
    return (
        f"out of GPU memory with micro-batch {tc.batch_size} × context {block}; try"
        f" --train.batch_size {smaller} and --train.tokens_per_step"
        f" {tc.batch_size * block * accum} (gradient accumulation keeps the step size),"
        " or a smaller --model.block_size"
    )


def _write_sample(model: GPT, tokenizer: Any, tc: TrainConfig, out: Path, step: int) -> str:
    from tinygpt.generate import TextGenerator

    gen = TextGenerator(model, tokenizer)
    prompt = tc.sample_prompt
    try:
        tokenizer.encode(prompt)
    except TinyGPTError:  # e.g. a char vocabulary without "\n": start at a document boundary
        prompt = ""
    try:
        text = gen.generate(
            prompt,
            max_new_tokens=tc.sample_tokens,
            temperature=0.8,
            top_k=200,
            seed=tc.seed,
        )
    finally:
        model.train()
    (out / "samples" / f"step-{step:06d}.txt").write_text(prompt + text, encoding="utf-8")
    return prompt + text


def _setup_log_file(path: Path) -> None:
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    for old in [h for h in log.handlers if isinstance(h, logging.FileHandler)]:
        log.removeHandler(old)
        old.close()
    log.addHandler(handler)
    log.setLevel(logging.INFO)


def _progress_bar(enabled: bool, tc: TrainConfig) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(
        total=100.0,
        unit="%",
        bar_format="{l_bar}{bar}| {n:.0f}% [{elapsed}<{remaining}] {postfix}",
        file=sys.stderr,
        dynamic_ncols=True,
    )


def _tensorboard(out: Path, tc: TrainConfig) -> Any:
    if not tc.tensorboard:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # the `tensorboard` package is an optional extra
        return None
    return SummaryWriter(log_dir=str(out / "tensorboard"))


def _wandb(out: Path, config: RunConfig) -> Any:
    if not config.train.wandb:
        return None
    try:
        import wandb
    except ImportError:
        raise TinyGPTError(
            "train.wandb = true but the wandb package is not installed; pip install"
            " 'tinygpt[wandb]' (WANDB_MODE=offline works without an account)"
        ) from None
    return wandb.init(
        project=config.train.wandb_project, dir=str(out), name=out.name, config=config.to_dict()
    )


def _plots(out: Path) -> None:
    """Loss curves at the end of every run, when the plotting extra is installed."""
    try:
        from tinygpt.plots import plot_run
    except ImportError:
        return
    try:
        plot_run(out)
    except ImportError:  # matplotlib missing
        return
