"""The set-up every run shares, pre-training and fine-tuning alike: the run folder opened
and checked (`open_run`), the budget and data checked (`check_budget`, `check_data`), the
micro-batches per step (`accumulation`), and what the folder holds before the first step
(`begin_run`: config, tokenizer, chat template, samples folder, log file and run.json with
its provenance).

It knows nothing about how the model, data or optimiser of a run are built (that is
`tinygpt.train.pretrain` and `tinygpt.train.finetune`'s), nor about the loop.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy
import torch

from tinygpt.core import __version__
from tinygpt.core.checkpoint import FORMAT_VERSION
from tinygpt.core.config import RunConfig, TrainConfig
from tinygpt.core.errors import TinyGPTError
from tinygpt.core.run import RunDir
from tinygpt.core.runtime import Runtime
from tinygpt.data.template import ChatTemplate, save_template
from tinygpt.train.state import TrainState

log = logging.getLogger("tinygpt.train.loop")  # the loop's logger: one train.log per run


def open_run(out_dir: str | Path, *, force: bool) -> RunDir:
    """The run folder to train into, checked (`force` accepts a folder that holds other
    files); rank 0 removes what an interrupted write left behind (the other ranks of a
    torchrun job share the folder)."""
    run = RunDir(out_dir)
    run.check_out(force=force)
    if int(os.environ.get("RANK", "0")) == 0:
        run.remove_leftovers()
    return run


def check_budget(tc: TrainConfig) -> None:
    """Refuse a run without a budget: the loop would never end."""
    if not tc.has_budget:
        raise TinyGPTError(
            "no training budget: give --max-steps, --max-tokens, --max-time or --max-epochs"
        )


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


def begin_run(
    run: RunDir,
    config: RunConfig,
    data: Any,
    *,
    rt: Runtime,
    state: TrainState | None,
    command: list[str] | None,
    details: dict[str, Any],
    template: ChatTemplate | None = None,
    kind: str | None = None,
) -> None:
    """Write what the run folder holds before the first step: config, the data's tokenizer,
    the chat template (when given), the samples folder, the log file and run.json.

    run.json holds the provenance, the dataset's record (with its `kind` when given), the
    runtime, then `details` in their order (parameters, resume point, a fine-tune's record,
    ...). `data` is an opened dataset or examples folder (`tokenizer_path`, `path`, `meta`).
    """
    run.write_config(config)
    run.write_tokenizer(data.tokenizer_path)
    if template is not None:
        save_template(run.path, template)
    run.samples_dir.mkdir(exist_ok=True)
    run.attach_log(log)
    record = {k: data.meta.get(k) for k in ("key", "tokenizer_hash", "source")}
    record = {"path": str(Path(data.path).resolve()), **record}
    if kind is not None:
        record["kind"] = kind
    info = {
        "device": rt.device,
        "precision": rt.precision,
        "threads": torch.get_num_threads(),
        "world_size": rt.dist.world_size,
        **details,
    }
    run.write_info(provenance(command, record, info), resumed=state is not None)
