"""What the server generates with: the `Backend` surface, and the ONNX backend.

Owns: the few things the HTTP layer asks of a generator (`Backend`, `Handle`), the served
model's description (`ServedModel`: backend, name, chat template, which ids end an answer,
size), and serving an ONNX export folder (`is_onnx_source`, `open_onnx`, `OnnxBackend`).
Knows nothing about HTTP or JSON, and never imports torch: a run folder is opened by
`tinygpt.serve.engine` (the continuous-batching `tinygpt.infer.engine.Engine`), and
`tinygpt.serve.open_model` chooses between the two.

A backend is anything with the surface of `Engine` that the server uses: `submit(prompt_ids,
**sampling) -> Handle`, `tokenizer`, `context`, `max_batch`, `stats()` and `close()`. A
handle is iterated with `async for` for events (`text`, `token`, `finish_reason`, `usage`,
`error`), awaited whole with `aresult()`, and stopped with `cancel()`. Errors of a request
are recognised by attribute, so the server imports neither torch nor the engine:
an exception with `retry_after` means the queue is full (HTTP 503), one with
`prompt_tokens` and `context` that the prompt does not fit (HTTP 400). A backend that cannot
report log-probabilities says so with `supports_logprobs = False` (the server then answers
400 to a request that asks for them).

`OnnxBackend` serves an ONNX export folder with onnxruntime, without torch: a worker thread
takes one request at a time from a bounded queue and runs the generator's token loop for it
(batch 1: concurrent requests wait their turn instead of sharing a forward pass, so the
aggregate speed is that of one client). Its handles are the engine's (`tinygpt.infer.request`), so
streaming, stop strings, seeds, time limits, cancellation and usage behave as with a run
folder; log-probabilities are not reported.
"""

from __future__ import annotations

import collections
import itertools
import os
import threading
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tinygpt.core.errors import TinyGPTError
from tinygpt.core.run import RunDir
from tinygpt.data.template import ChatTemplate
from tinygpt.data.tokenizer import Tokenizer
from tinygpt.infer.onnx_runtime import OnnxGenerator, generate_tokens, is_onnx_folder, load_onnx
from tinygpt.infer.request import (
    Completion,
    EngineStats,
    Event,
    QueueFull,
    Request,
    SamplingParams,
    Usage,
    describe_token,
    new_request,
    params_of,
)
from tinygpt.infer.textgen import RowText


class Handle(Protocol):
    """One submitted request (`tinygpt.infer.engine.Request` is one)."""

    @property
    def prompt_tokens(self) -> int: ...

    def __aiter__(self) -> AsyncIterator[Event]: ...

    async def aresult(self) -> Completion: ...

    def cancel(self) -> None: ...


class Backend(Protocol):
    """A generator the server can drive (`tinygpt.infer.engine.Engine` is one)."""

    tokenizer: Tokenizer
    context: int  # the most tokens of prompt and completion together
    max_batch: int

    def submit(
        self, prompt: Sequence[int], params: SamplingParams | None = None, **settings: Any
    ) -> Handle: ...

    def stats(self) -> EngineStats: ...

    def close(self) -> None: ...


@dataclass
class ServedModel:
    """A backend and what the server says about it.

    - name: the model id clients send (`GET /v1/models` lists it).
    - template: the chat template (`tinygpt.data.template.ChatTemplate`) or None, in which case
      `/v1/chat/completions` answers 400.
    - owned: the server closes the backend when it shuts down (it opened it).
    - parameters: the model's parameter count (None: unknown; read from the backend's
      `model` when it has one).
    - runtime: what generates, for people ("pytorch", "onnxruntime").
    """

    backend: Backend
    name: str
    template: ChatTemplate | None = None
    owned: bool = False
    created: int = field(default_factory=lambda: int(time.time()))
    parameters: int | None = None
    runtime: str = ""

    def __post_init__(self) -> None:
        model = getattr(self.backend, "model", None)
        if self.parameters is None and model is not None and hasattr(model, "num_params"):
            self.parameters = int(model.num_params())
        if not self.runtime:
            self.runtime = getattr(self.backend, "runtime", "pytorch")
        tok = self.backend.tokenizer
        ids = [getattr(tok, "eot_id", None)]
        if self.template is not None:
            ids.append(tok.special_tokens.get(self.template.end_of_turn))
        # End-of-text ends every answer; a chat model's end-of-turn too, also in a plain
        # completion (after it the model would start the next turn's markers).
        self.stop_ids: tuple[int, ...] = tuple(i for i in ids if i is not None)


def check_threads(threads: int | None) -> None:
    """Refuse a thread count below one (None: the runtime's default)."""
    if threads is not None and threads < 1:
        raise TinyGPTError(f"threads must be at least 1, got {threads}")


def is_onnx_source(folder: Path) -> bool:
    """True for a folder to serve with onnxruntime: an ONNX export folder (or a folder of
    .onnx files, so that `open_onnx` names what is missing), never a run folder."""
    return (
        folder.is_dir()
        and not RunDir(folder).is_run()
        and (is_onnx_folder(folder) or any(folder.glob("*.onnx")))
    )


def open_onnx(
    path: str | os.PathLike[str],
    *,
    device: str = "cpu",
    max_queue: int = 64,
    timeout: float | None = 600.0,
    name: str | None = None,
    threads: int | None = None,
) -> ServedModel:
    """Open an ONNX export folder (`tinygpt export --format onnx`) for serving with
    onnxruntime, one request at a time (`OnnxBackend`); torch is not imported. `device`
    must be cpu or auto: onnxruntime serves on the CPU."""
    folder = Path(path)
    if device not in ("auto", "cpu"):
        raise TinyGPTError(
            f"{folder} is an ONNX folder, which is served on the CPU with onnxruntime; "
            f"leave out --device {device} (or give cpu)"
        )
    generator = load_onnx(folder, threads=threads)
    backend = OnnxBackend(generator, max_queue=max_queue, timeout=timeout)
    parameters = generator.info.get("parameters")
    return ServedModel(
        backend,
        name or folder.resolve().name,
        template=generator.template,
        owned=True,
        parameters=parameters if isinstance(parameters, int) else None,
        runtime="onnxruntime",
    )


# ----------------------------------------------------------------------------- ONNX


class OnnxBackend:
    """An ONNX export served one request at a time: a bounded queue and one worker thread.

    OnnxBackend(generator, max_queue=64, timeout=600.0): `generator` is an
    `tinygpt.infer.onnx_runtime.OnnxGenerator`; `max_queue` requests may wait while one generates
    (one more raises `QueueFull`); `timeout` is a request's default time limit, seconds from
    submission (None: none). `submit` takes the engine's arguments and returns the engine's
    handle (`tinygpt.infer.request.Request`); `start=False` leaves the worker unstarted and
    `step()` serves one request by hand (tests).

    A request generates as `tinygpt.infer.engine.Engine` would generate it alone: max_tokens
    ends it with "length" (past the context the window slides), end-of-text or end-of-turn
    ids and stop strings end it with "stop", and the worker looks for cancellation and the
    time limit before each token. Tokens are chosen by the engine's rules
    (`tinygpt.infer.sampler`), so a seeded answer equals the run's.
    """

    max_batch = 1
    runtime = "onnxruntime"
    supports_logprobs = False

    def __init__(
        self,
        generator: OnnxGenerator,
        *,
        max_queue: int = 64,
        timeout: float | None = 600.0,
        start: bool = True,
    ) -> None:
        if max_queue < 0:
            raise TinyGPTError(f"max_queue must be 0 or more, got {max_queue}")
        self.generator = generator
        self.tokenizer = generator.tokenizer
        self.context: int = generator.block_size
        self.vocab_size: int = generator.lm.vocab_size
        self.max_queue, self.timeout = max_queue, timeout
        self.eot_id: int | None = getattr(self.tokenizer, "eot_id", None)
        self._special = {i: s for s, i in getattr(self.tokenizer, "special_tokens", {}).items()}
        self._queue: collections.deque[Request] = collections.deque()
        self._running: Request | None = None
        self._cond = threading.Condition()
        self._ids = itertools.count()
        self._closed = False
        self._steps = self._tokens = 0
        self._finished: collections.Counter[str] = collections.Counter()
        self._thread: threading.Thread | None = None
        if start:
            self._thread = threading.Thread(target=self._run, name="tinygpt-onnx", daemon=True)
            self._thread.start()

    # --- the surface the server uses ----------------------------------------------------
    def submit(
        self, prompt: Sequence[int], params: SamplingParams | None = None, **settings: Any
    ) -> Request:
        """Queue a request (token ids, and SamplingParams or its fields); raises
        PromptTooLong, QueueFull or TinyGPTError as `Engine.submit` does."""
        params = params_of(params, settings)
        if params.logprobs or params.top_logprobs:
            raise TinyGPTError("an ONNX folder is served without logprobs; leave them out")
        req = new_request(
            next(self._ids), [int(i) for i in prompt], params, vocab_size=self.vocab_size,
            context=self.context, wake=self._wake, timeout=self.timeout,
        )  # fmt: skip
        with self._cond:
            if self._closed:
                raise TinyGPTError("the backend is closed; open the model again")
            free = 0 if self._running is not None else 1
            if len(self._queue) >= self.max_queue + free:
                raise QueueFull(
                    f"one request generates and {len(self._queue) - free} wait (at most "
                    f"{self.max_queue}); try again shortly"
                )
            self._queue.append(req)
            self._cond.notify_all()
        return req

    def stats(self) -> EngineStats:
        with self._cond:
            return EngineStats(
                active=int(self._running is not None),
                queued=len(self._queue),
                steps=self._steps,
                tokens=self._tokens,
                max_batch=1,
                finished=dict(self._finished),
            )

    def close(self) -> None:
        """Stop the worker; the running request and those queued end with "cancelled"."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        with self._cond:
            waiting, self._queue = list(self._queue), collections.deque()
        for req in waiting:
            self._end(req, Event("", finish_reason="cancelled"))

    def __enter__(self) -> OnnxBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the worker ----------------------------------------------------------------------
    def _wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed and not self._queue:
                    self._cond.wait()
                if self._closed:
                    return
            self.step()

    def _sweep(self) -> None:
        """End the waiting requests that were cancelled or ran out of time."""
        now = time.monotonic()
        with self._cond:
            gone = [r for r in self._queue if r._cancelled or now >= r.deadline]
            for req in gone:
                self._queue.remove(req)
        for req in gone:
            self._end(req, Event("", finish_reason="cancelled" if req._cancelled else "timeout"))

    def step(self) -> None:
        """Serve the next waiting request from start to end (the worker's loop body)."""
        self._sweep()
        with self._cond:
            if not self._queue:
                return
            req = self._running = self._queue.popleft()
        try:
            self._generate(req)
        except Exception as exc:  # only this request fails; the worker goes on
            if not req.done:
                message = f"{type(exc).__name__}: {exc}"
                self._end(req, Event("", finish_reason="error", error=message))
        finally:
            with self._cond:
                self._running = None

    def _generate(self, req: Request) -> None:
        p = req.params
        text = RowText(self.tokenizer, p.stop)
        stop_ids = p.stop_token_ids
        if stop_ids is None:
            stop_ids = () if self.eot_id is None else (self.eot_id,)
        budget = p.max_tokens  # past the context the window slides (as in the engine)
        # The token loop of the generator's graph, told of no end-of-text id: which ids end
        # a request is the request's business (stop_token_ids=() generates max_tokens).
        steps = generate_tokens(
            self.generator.lm,
            [req.prompt_ids],
            max_new_tokens=budget,
            temperature=p.temperature,
            top_k=p.top_k,
            top_p=p.top_p,
            repetition_penalty=p.repetition_penalty,
            seed=p.seed,
            eot_id=None,
            vocab=self.tokenizer.vocab_size,
        )
        try:
            for count in range(1, budget + 1):
                reason = self._interrupted(req)
                if reason is not None:
                    self._end(req, Event(text.finish(), finish_reason=reason))
                    return
                token = int(next(steps)[0])
                with self._cond:
                    self._steps += 1
                    self._tokens += 1
                info = describe_token(self.tokenizer, self._special, token)
                if token in stop_ids:
                    piece, reason = text.finish(), "stop"
                else:
                    piece = text.push(token)
                    if text.done:
                        reason = "stop"
                    elif count == budget:
                        piece, reason = piece + text.finish(), "length"
                if reason is not None:
                    self._end(req, Event(piece, info, reason))
                    return
                req._emit(Event(piece, info))
        finally:
            steps.close()

    def _interrupted(self, req: Request) -> str | None:
        """Why the running request must end now ("cancelled", "timeout"), or None; also
        ends the waiting requests that were cancelled meanwhile."""
        self._sweep()
        if req._cancelled or self._closed:
            return "cancelled"
        if time.monotonic() >= req.deadline:
            return "timeout"
        return None

    def _end(self, req: Request, event: Event) -> None:
        usage = Usage(req.prompt_tokens, req.completion_tokens + (event.token is not None))
        req._emit(Event(event.text, event.token, event.finish_reason, usage, event.error))
        with self._cond:
            self._finished[event.finish_reason or "error"] += 1
