"""An OpenAI-compatible HTTP server for a trained run (`tinygpt serve RUN`).

Layers, each ignorant of the ones above it:

- `tinygpt.serve.protocol` and `tinygpt.serve.answer`: OpenAI's request fields and errors,
  and its answer shapes (pure Python).
- `tinygpt.serve.backend`: the `Backend` surface another kind of model would offer, the
  served model's description and the ONNX backend (no torch); `tinygpt.serve.engine`: a run
  folder in the continuous-batching `tinygpt.infer.engine.Engine` (torch).
- `tinygpt.serve.routes` and `tinygpt.serve.app`: what each route does, and the FastAPI
  application joining them; `tinygpt.serve.server` runs it under uvicorn.

This package's entry points choose between the two backends, so that serving an ONNX folder
never imports torch: `open_model` imports `tinygpt.serve.engine` only for a run folder, and
the web framework is imported only when an app is made.

From Python:

    from tinygpt.serve import create_app, start
    app = create_app("runs/chat", max_batch=16, api_key="secret")
    with start(app, port=8000) as server:      # a background thread; or run(app, ...)
        ...                                     # point OpenAI(base_url=server.url + "/v1")

Needs the `serve` extra (`pip install "tinygpt[serve]"`: FastAPI and uvicorn).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastapi import FastAPI

    from tinygpt.serve.backend import ServedModel
    from tinygpt.serve.protocol import Limits

__all__ = ["Limits", "ServedModel", "create_app", "open_model", "run", "start"]


def open_model(
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
    """Open a model folder for serving, its backend started.

    A run folder is loaded into a continuous-batching engine (`checkpoint`, `device`,
    `max_batch`; `threads` sets torch's CPU threads; `tinygpt.serve.engine.open_run`); an
    ONNX export folder into an `OnnxBackend` (one request at a time; `threads` sets
    onnxruntime's, `device` must be cpu or auto, `checkpoint` and `max_batch` do not apply;
    `tinygpt.serve.backend.open_onnx`), without importing torch. The model's name is the
    folder's name unless `name` is given; the chat template is the one the run saved
    (`tinygpt.infer.loader.load_run` gives it) or the one the export carries, if any.
    """
    from tinygpt.serve import backend

    folder = Path(path)
    backend.check_threads(threads)
    if backend.is_onnx_source(folder):
        return backend.open_onnx(
            folder, device=device, max_queue=max_queue, timeout=timeout, name=name, threads=threads
        )
    from tinygpt.serve import engine  # torch: only for a run folder

    return engine.open_run(
        folder,
        checkpoint=checkpoint,
        device=device,
        max_batch=max_batch,
        max_queue=max_queue,
        timeout=timeout,
        name=name,
        threads=threads,
    )


def create_app(
    source: Any,
    *,
    name: str | None = None,
    template: Any = None,
    api_key: str | None = None,
    limits: Limits | None = None,
    timeout: float | None = 600.0,
    page: bool = True,
    **open_options: Any,
) -> FastAPI:
    """The FastAPI application serving one model.

    `source` is a run or ONNX folder (opened with `open_model`, which takes `checkpoint`,
    `device`, `max_batch`, `max_queue` and `threads` as `open_options`; the app closes the
    backend when it shuts down), a `ServedModel`, or a started backend such as a
    `tinygpt.infer.engine.Engine` (then `name`, default "tinygpt", and `template`, a
    `tinygpt.data.template.ChatTemplate` or None, describe it; the caller closes it).
    The other arguments are `tinygpt.serve.app.create_app`'s.
    """
    from tinygpt.serve import app

    if isinstance(source, (str, os.PathLike)):
        served = open_model(source, name=name, timeout=timeout, **open_options)
        return app.create_app(served, api_key=api_key, limits=limits, timeout=timeout, page=page)
    return app.create_app(
        source,
        name=name,
        template=template,
        api_key=api_key,
        limits=limits,
        timeout=timeout,
        page=page,
        **open_options,
    )


def __getattr__(name: str) -> Any:
    # Imported on use: the protocol and backend need no web framework, the server does.
    if name in ("run", "start"):
        from tinygpt.serve import server

        return getattr(server, name)
    if name == "Limits":
        from tinygpt.serve.protocol import Limits

        return Limits
    if name == "ServedModel":
        from tinygpt.serve.backend import ServedModel

        return ServedModel
    raise AttributeError(f"module 'tinygpt.serve' has no attribute {name!r}")
