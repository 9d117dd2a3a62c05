"""What the server generates with: the `Backend` surface, and opening a model to serve.

Owns: the few things the HTTP layer asks of a generator (`Backend`, `Handle`), the served
model's description (`ServedModel`: backend, name, chat template, which ids end an answer),
and `open_model(path, ...)`, which turns a run folder into a `ServedModel` backed by the
continuous-batching engine (`tinygpt.engine.Engine`). Knows nothing about HTTP or JSON.

A backend is anything with the surface of `Engine` that the server uses: `submit(prompt_ids,
**sampling) -> Handle`, `tokenizer`, `context`, `max_batch`, `stats()` and `close()`. A
handle is iterated with `async for` for events (`text`, `token`, `finish_reason`, `usage`,
`error`), awaited whole with `aresult()`, and stopped with `cancel()`. Errors of a request
are recognised by attribute, so the server imports neither torch nor the engine:
an exception with `retry_after` means the queue is full (HTTP 503), one with
`prompt_tokens` and `context` that the prompt does not fit (HTTP 400).

Serving another kind of model means writing another backend. An ONNX folder, generated
with onnxruntime and without torch, fits as a small adapter: a worker thread that takes
one request at a time from a bounded queue (batch 1: requests wait their turn instead of
sharing a forward pass) and delivers the same events. `open_model` is where it would be
chosen; until then it says that an ONNX folder cannot be served.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tinygpt.errors import TinyGPTError


class Handle(Protocol):
    """One submitted request (`tinygpt.engine.Request` is one)."""

    prompt_tokens: int

    def __aiter__(self) -> AsyncIterator[Any]: ...

    async def aresult(self) -> Any: ...

    def cancel(self) -> None: ...


class Backend(Protocol):
    """A generator the server can drive (`tinygpt.engine.Engine` is one)."""

    tokenizer: Any
    context: int  # the most tokens of prompt and completion together
    max_batch: int

    def submit(self, prompt: list[int], **sampling: Any) -> Handle: ...

    def stats(self) -> Any: ...

    def close(self) -> None: ...


@dataclass
class ServedModel:
    """A backend and what the server says about it.

    - name: the model id clients send (`GET /v1/models` lists it).
    - template: the chat template (`tinygpt.chat.ChatTemplate`) or None, in which case
      `/v1/chat/completions` answers 400.
    - owned: the server closes the backend when it shuts down (it opened it).
    """

    backend: Backend
    name: str
    template: Any = None
    owned: bool = False
    created: int = field(default_factory=lambda: int(time.time()))

    def __post_init__(self) -> None:
        tok = self.backend.tokenizer
        ids = [getattr(tok, "eot_id", None)]
        if self.template is not None:
            ids.append(tok.special_tokens.get(self.template.end_of_turn))
        # End-of-text ends every answer; a chat model's end-of-turn too, also in a plain
        # completion (after it the model would start the next turn's markers).
        self.stop_ids: tuple[int, ...] = tuple(i for i in ids if i is not None)


def open_model(
    path: str | os.PathLike[str],
    *,
    checkpoint: str = "best",
    device: str = "cpu",
    max_batch: int = 16,
    max_queue: int = 64,
    timeout: float | None = 600.0,
    name: str | None = None,
) -> ServedModel:
    """Load a run folder into a continuous-batching engine (started) for serving.

    The model's name is the folder's name unless `name` is given; the chat template is the
    one the run saved (`tinygpt.chat.load_template`), if any.
    """
    from tinygpt.chat import load_template
    from tinygpt.run import RunDir

    folder = Path(path)
    run = RunDir(folder)
    if folder.is_dir() and not run.is_run() and any(folder.glob("*.onnx")):
        raise TinyGPTError(
            f"{folder} is an ONNX folder; this version serves run folders only: serve the run "
            "it was exported from"
        )
    run.require()
    from tinygpt.engine import Engine
    from tinygpt.run import load_run
    from tinygpt.runtime import resolve_device

    loaded = load_run(folder, checkpoint=checkpoint, device=resolve_device(device))
    template = load_template(folder)
    if template is not None:
        missing = [s for s in template.special_tokens if s not in loaded.tokenizer.special_tokens]
        if missing:
            raise TinyGPTError(
                f"{folder} has chat template {template.name!r} but its tokenizer lacks "
                f"{', '.join(missing)}; the run's files do not belong together"
            )
    engine = Engine(
        loaded.model,
        loaded.tokenizer,
        max_batch=max_batch,
        max_queue=max_queue,
        timeout=timeout,
    )
    return ServedModel(engine, name or folder.resolve().name, template=template, owned=True)
