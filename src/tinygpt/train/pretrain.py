"""Pre-training: `train()` builds what the loop (`tinygpt.train.loop.fit`) trains from a
prepared dataset — a fresh model, random windows of the training split, the optimiser, the
validation evaluator, the samples — and hands them over; `find_dataset` finds or prepares the
dataset it trains on.

The run set-up it shares with fine-tuning (the run folder, run.json) is
`tinygpt.train.session`'s; the loop and its checkpoints are `tinygpt.train.loop` and
`tinygpt.train.resume`'s. It knows nothing about fine-tuning.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tinygpt.core.config import RunConfig
from tinygpt.core.errors import TinyGPTError
from tinygpt.core.model import GPT
from tinygpt.core.run import RunDir
from tinygpt.core.runtime import Runtime, check_model_fits, seed_all
from tinygpt.data.batches import RandomWindows
from tinygpt.data.prepare import check_fits, open_dataset, prepare_dataset
from tinygpt.data.tokenizer import file_hash
from tinygpt.infer.scoring import SplitEvaluator
from tinygpt.train.loop import fit
from tinygpt.train.optim import build_optimizer
from tinygpt.train.resume import restore, resume_point
from tinygpt.train.samples import TextSampler
from tinygpt.train.session import (
    accumulation,
    begin_run,
    check_budget,
    check_data,
    open_run,
)
from tinygpt.train.state import Hooks, TrainResult, TrainState

log = logging.getLogger("tinygpt.train.loop")  # the loop's logger: one train.log per run


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
    t_start = time.perf_counter()
    config = copy.deepcopy(config)
    tc = config.train
    check_budget(tc)
    run = open_run(out_dir, force=force)
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
            _begin(run, config, dataset, model, rt, accum, command, state)
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


def _begin(
    run: RunDir,
    config: RunConfig,
    dataset: Any,
    model: GPT,
    rt: Runtime,
    accum: int,
    command: list[str] | None,
    state: TrainState | None,
) -> None:
    """The run folder before the first step (`begin_run`), with the step's size in run.json,
    and the run's first log line."""
    tokens_per_step = config.train.batch_size * rt.dist.world_size * config.model.block_size * accum
    details = {
        "tokens_per_step": tokens_per_step,
        "grad_accum": accum,
        "parameters": model.num_params(),
        "resumed_from": state.resumed_from if state else None,
    }
    begin_run(run, config, dataset, rt=rt, state=state, command=command, details=details)
    log.info(
        "run %s: %s parameters, %s, %d process(es), %d tokens/step, device %s",
        run.path,
        f"{model.num_params():,}",
        rt.precision,
        rt.dist.world_size,
        tokens_per_step,
        rt.device,
    )
