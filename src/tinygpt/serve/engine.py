"""A run folder served by the continuous-batching engine: the torch side of serving.

Owns `open_run`, which loads one checkpoint of a run (`tinygpt.infer.loader.load_run`: model,
tokenizer, chat template, LoRA) into a started `tinygpt.infer.engine.Engine` and describes it
as a `ServedModel`. It knows nothing about HTTP, nor about ONNX folders
(`tinygpt.serve.backend`, which must stay free of torch); `tinygpt.serve.open_model` imports
this module only for a run folder.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from tinygpt.core.run import RunDir
from tinygpt.core.runtime import resolve_device
from tinygpt.infer.engine import Engine
from tinygpt.infer.loader import load_run
from tinygpt.serve.backend import ServedModel


def open_run(
    path: str | os.PathLike[str],
    *,
    checkpoint: str = "best",
    device: str = "cpu",
    max_batch: int = 16,
    max_queue: int = 64,
    timeout: float | None = 600.0,
    name: str | None = None,
    threads: int | None = None,
) -> ServedModel:
    """Open a run folder for serving: its checkpoint in a started engine of `max_batch`
    rows on `device`; `threads` sets torch's CPU threads. The model's name is the folder's
    name unless `name` is given; the chat template is the one the run saved."""
    folder = Path(path)
    RunDir(folder).require()
    if threads is not None:
        torch.set_num_threads(threads)
    loaded = load_run(folder, checkpoint=checkpoint, device=resolve_device(device))
    engine = Engine(
        loaded.model,
        loaded.tokenizer,
        max_batch=max_batch,
        max_queue=max_queue,
        timeout=timeout,
    )
    return ServedModel(
        engine,
        name or folder.resolve().name,
        template=loaded.template,
        owned=True,
        parameters=loaded.model.num_params(),
        runtime="pytorch",
    )
