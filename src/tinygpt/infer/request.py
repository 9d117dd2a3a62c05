"""A generation request as a server sees it: its settings, its events and its handle.

Owns: `SamplingParams` (how one request is generated, checked), what generation gives back
(`Token`, `Usage`, `Event`, `Completion`), the handle of a submitted request (`Request`:
iterated for events in a thread or an event loop, awaited whole, cancelled), the errors a
submission raises (`QueueFull`, `PromptTooLong`) and a generator's counters (`EngineStats`).

It knows nothing about models, tensors or HTTP, and imports neither torch nor NumPy: the
continuous-batching engine (`tinygpt.infer.engine`, PyTorch) and the ONNX serving backend
(`tinygpt.serve.backend`, onnxruntime) both deliver their tokens through these types, so a
server drives either one the same way. `tinygpt.infer.engine` re-exports every name here.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from tinygpt.core.errors import TinyGPTError
from tinygpt.data.tokenizer import Tokenizer
from tinygpt.infer.textgen import check_sampling

FINISH_REASONS = ("stop", "length", "timeout", "cancelled", "error")


class QueueFull(TinyGPTError):
    """Every row is busy and the queue is full; try again in `retry_after` seconds."""

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PromptTooLong(TinyGPTError):
    """The prompt leaves no room for a completion in the model's context."""

    def __init__(self, prompt_tokens: int, context: int) -> None:
        super().__init__(
            f"the prompt is {prompt_tokens} tokens long, but the model's context is {context} "
            f"tokens for prompt and completion together; shorten the prompt to at most "
            f"{context - 1} tokens"
        )
        self.prompt_tokens, self.context = prompt_tokens, context


class EngineError(RuntimeError):
    """Generation failed inside the engine (not the request's fault)."""


# ---------------------------------------------------------------------------- the data


@dataclass(frozen=True)
class SamplingParams:
    """How one request is generated.

    - max_tokens: the most new tokens (>= 1): then it ends with "length". A completion may
      pass the context: the window slides (`tinygpt.infer.sampler.window_start`).
    - temperature: 0 for greedy decoding; top_k / top_p (None = off) and repetition_penalty
      (1 = off) as in `tinygpt.infer.sampler.sample_token`.
    - seed: seeds the request's own random generator (None: a random seed), by the rule of
      `tinygpt.infer.sampler.row_generators`: the same seed gives the text that
      `tinygpt.load(run).generate(prompt, seed=seed)` gives.
    - stop: strings that end the completion, not included in it (found across tokens).
    - stop_token_ids: ids that end it (end-of-text, end-of-turn); None = the tokenizer's
      end-of-text; () = none (generate exactly max_tokens tokens).
    - logprobs: report the log-probability of each chosen token; top_logprobs: and of the
      that many most likely tokens at each step. They are those of the model's distribution
      (log-softmax of the logits, before temperature and filtering).
    - timeout: seconds from submission after which the request ends with "timeout";
      None = the engine's default.
    """

    max_tokens: int = 16
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] | None = None
    logprobs: bool = False
    top_logprobs: int = 0
    timeout: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        object.__setattr__(self, "stop", tuple(self.stop))
        if self.stop_token_ids is not None:
            object.__setattr__(self, "stop_token_ids", tuple(self.stop_token_ids))
        if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int):
            raise TinyGPTError(f"max_tokens must be an integer, got {self.max_tokens!r}")
        if self.max_tokens < 1:
            raise TinyGPTError(f"max_tokens must be at least 1, got {self.max_tokens}")
        check_sampling(
            max_new_tokens=self.max_tokens,
            temperature=self.temperature,
            top_k=self.top_k,
            top_p=self.top_p,
            repetition_penalty=self.repetition_penalty,
            seed=self.seed,
        )
        if not 0 <= self.top_logprobs <= 20:
            raise TinyGPTError(f"top_logprobs must be in [0, 20], got {self.top_logprobs}")
        if self.timeout is not None and not self.timeout > 0:
            raise TinyGPTError(f"timeout must be positive seconds, got {self.timeout}")


@dataclass(frozen=True)
class Token:
    """One generated token: its id, text (U+FFFD for an incomplete UTF-8 character; the name
    of a special token), bytes, log-probability (None unless asked for) and, with
    top_logprobs, the most likely tokens of its step (most likely first)."""

    id: int
    text: str
    bytes: bytes
    logprob: float | None = None
    top: tuple[Token, ...] = ()


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int  # every token generated, including one that ended the request

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class Event:
    """What one step brought a request: the text it released ("" when a stop string might be
    starting or a character is incomplete) and the token it generated (none in a final event
    of a timeout, a cancellation or an error). The last event, and only it, has a
    finish_reason (one of FINISH_REASONS) and the usage; an error event carries `error`."""

    text: str
    token: Token | None = None
    finish_reason: str | None = None
    usage: Usage | None = None
    error: str | None = None


@dataclass(frozen=True)
class Completion:
    text: str
    token_ids: tuple[int, ...]
    finish_reason: str
    usage: Usage
    logprobs: tuple[Token, ...] = ()  # per generated token, when logprobs were asked for


# ---------------------------------------------------------------------------- a request


# What `Request._emit` notes for `wake_all`: the event loop awaiting a request, its wake-up
# event, and the request.
Wake = tuple[asyncio.AbstractEventLoop, asyncio.Event, "Request"]


def wake_all(wakes: list[Wake]) -> None:
    """Wake the event loops noted by `Request._emit` during one engine step: one thread-safe
    call per loop, setting every waiting request's asyncio.Event in it."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Event, Request]]] = {}
    for loop, wakeup, req in wakes:
        by_loop.setdefault(loop, []).append((wakeup, req))
    for loop, items in by_loop.items():
        try:
            loop.call_soon_threadsafe(_set_all, [w for w, _ in items])
        except RuntimeError:  # the event loop is closed: nobody listens any more
            for _, req in items:
                req._cancelled = True


def _set_all(events: list[asyncio.Event]) -> None:
    for event in events:
        event.set()


class Request:
    """The handle of a submitted request: iterate it for events (`for` or `async for`),
    or wait for the whole `result()` / `await aresult()`; `cancel()` ends it.

    Events are delivered once: iterate a request in one place. Leaving an iteration before
    the last event (break, a cancelled task, a closed generator) cancels the request, which
    frees its row: a server whose client disconnects needs to do nothing more.
    """

    def __init__(
        self,
        rid: int,
        prompt_ids: list[int],
        params: SamplingParams,
        wake: Callable[[], None] | None = None,
    ) -> None:
        self.id = rid
        self.prompt_ids = prompt_ids
        self.params = params
        self.submitted_at = time.monotonic()
        self.first_token_at: float | None = None
        self.finished_at: float | None = None
        self.deadline = float("inf")
        self.text = ""
        self.token_ids: list[int] = []
        self.logprobs: list[Token] = []
        self.finish_reason: str | None = None
        self.error: str | None = None
        self._cancelled = False
        self._wake_engine = wake
        self._events: collections.deque[Event] = collections.deque()
        self._cond = threading.Condition()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wakeup: asyncio.Event | None = None
        self._streaming = False  # an async iterator wants every event, not only the last

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt_ids)

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def cancel(self) -> None:
        """Ask the engine to end this request ("cancelled") and free its row, between two
        steps. Does nothing once the request has finished."""
        self._cancelled = True
        if self._wake_engine is not None and not self.done:
            self._wake_engine()

    # --- delivery (called by the engine thread) --------------------------------------
    def _emit(self, event: Event, wakes: list[Wake] | None = None) -> None:
        """Deliver `event`. An event loop awaiting this request is woken at once, or, when
        `wakes` is given, noted there for the engine to wake once for a whole step
        (`wake_all`): one call into each event loop per step instead of one per request."""
        with self._cond:
            if event.token is not None:
                self.token_ids.append(event.token.id)
                if event.token.logprob is not None:
                    self.logprobs.append(event.token)
                if self.first_token_at is None:
                    self.first_token_at = time.monotonic()
            self.text += event.text
            if event.finish_reason is not None:
                self.finish_reason, self.error = event.finish_reason, event.error
                self.finished_at = time.monotonic()
            self._events.append(event)
            self._cond.notify_all()
            loop, wakeup = self._loop, self._wakeup
            # Waking the event loop costs its thread a turn on the GIL: only when awaited.
            wanted = self._streaming or event.finish_reason is not None
        if loop is not None and wakeup is not None and wanted:
            if wakes is not None:
                wakes.append((loop, wakeup, self))
                return
            try:
                loop.call_soon_threadsafe(wakeup.set)
            except RuntimeError:  # the event loop is closed: nobody listens any more
                self._cancelled = True

    # --- consumption --------------------------------------------------------------------
    def __iter__(self) -> Iterator[Event]:
        finished = False
        try:
            while not finished:
                with self._cond:
                    self._cond.wait_for(lambda: self._events or self.done)
                    if not self._events:
                        return  # the last event was taken by another consumer
                    event = self._events.popleft()
                finished = event.finish_reason is not None
                yield event
        finally:
            if not finished:
                self.cancel()

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._aiter()

    def _attach(self) -> asyncio.Event:
        """The asyncio.Event that the engine thread sets, through the running loop, at every
        event of this request (a request is consumed from one event loop)."""
        with self._cond:
            if self._loop is None:
                self._loop, self._wakeup = asyncio.get_running_loop(), asyncio.Event()
            assert self._wakeup is not None
            return self._wakeup

    async def _aiter(self) -> AsyncIterator[Event]:
        self._streaming = True
        wakeup = self._attach()
        finished = False
        try:
            while not finished:
                wakeup.clear()  # cleared before looking: a later event sets it again
                with self._cond:
                    event = self._events.popleft() if self._events else None
                    if event is None and self.done:
                        return  # the last event was taken by another consumer
                if event is None:
                    await wakeup.wait()
                    continue
                finished = event.finish_reason is not None
                yield event
        finally:
            if not finished:
                self.cancel()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the request has finished (or timeout seconds); True if it has."""
        with self._cond:
            return self._cond.wait_for(lambda: self.done, timeout)

    def result(self, timeout: float | None = None) -> Completion:
        """The whole completion, once finished; raises EngineError if generation failed."""
        if not self.wait(timeout):
            raise TimeoutError(f"request {self.id} has not finished after {timeout} s")
        return self._completion()

    async def aresult(self) -> Completion:
        """The whole completion, awaited without blocking the event loop (the events stay
        for an iterator). Cancelling the awaiting task cancels the request."""
        wakeup = self._attach()
        try:
            while True:
                wakeup.clear()
                if self.done:
                    return self._completion()
                await wakeup.wait()
        except asyncio.CancelledError:
            self.cancel()
            raise

    def _completion(self) -> Completion:
        if self.finish_reason == "error":
            raise EngineError(f"generation failed: {self.error}")
        assert self.finish_reason is not None
        return Completion(
            text=self.text,
            token_ids=tuple(self.token_ids),
            finish_reason=self.finish_reason,
            usage=Usage(self.prompt_tokens, self.completion_tokens),
            logprobs=tuple(self.logprobs),
        )


def params_of(params: SamplingParams | None, settings: dict[str, Any]) -> SamplingParams:
    """The request's SamplingParams: given whole, or built from its fields, not both."""
    if params is not None and settings:
        raise TinyGPTError("give either params or sampling keyword arguments, not both")
    return params if params is not None else SamplingParams(**settings)


def new_request(
    rid: int,
    ids: list[int],
    params: SamplingParams,
    *,
    vocab_size: int,
    context: int,
    wake: Callable[[], None] | None,
    timeout: float | None,
) -> Request:
    """A Request for prompt `ids`, checked (not empty, inside the vocabulary, shorter than the
    context: PromptTooLong) and given its deadline (the request's timeout, else `timeout`)."""
    if not ids:
        raise TinyGPTError("the prompt holds no tokens; give at least one")
    bad = [i for i in ids if not 0 <= i < vocab_size]
    if bad:
        raise TinyGPTError(f"token id {bad[0]} is outside the vocabulary of {vocab_size} tokens")
    if len(ids) >= context:
        raise PromptTooLong(len(ids), context)
    req = Request(rid, ids, params, wake=wake)
    limit = params.timeout if params.timeout is not None else timeout
    if limit is not None:
        req.deadline = req.submitted_at + limit
    return req


@dataclass
class EngineStats:
    active: int  # running rows
    queued: int  # waiting requests
    steps: int  # decoding steps run so far (one forward pass each)
    tokens: int  # tokens generated so far (first tokens after prefill included)
    max_batch: int
    finished: dict[str, int] = field(default_factory=dict)  # requests per finish_reason


def describe_token(
    tokenizer: Tokenizer,
    special: dict[int, str],
    token: int,
    logprob: float | None = None,
    top: tuple[Token, ...] = (),
) -> Token:
    """The `Token` of id `token`: a special token (`special`: id -> name) has its name as text
    and no bytes; any other its bytes, and as text those bytes decoded (U+FFFD where a UTF-8
    character is incomplete)."""
    raw = b"" if token in special else tokenizer.token_bytes(token)
    text = special.get(token) or raw.decode("utf-8", errors="replace")
    return Token(token, text, raw, logprob, top)
