"""Continuous batching: many generation requests share one forward pass per decoding step.

Owns: the bounded queue of requests, the running batch (one row of a preallocated KV cache
per request), the decoding loop in one background thread, per-request sampling settings
and random generator, streaming of text pieces, finishing (stop strings, end-of-text ids,
max_tokens, a time limit, cancellation), usage counts and logprobs. It knows nothing about
HTTP, JSON or chat templates: a server turns its requests into `Engine.submit` calls and the
events back into its own shapes. How a token is chosen and where a full row's window slides
are `tinygpt.infer.sampler`'s rules, the same as for `tinygpt.infer.generate` and the ONNX
backend: a request gets the text that `tinygpt.load(run).generate` gives its prompt with the
same settings and seed.

How a step goes. Requests wait in a queue; between two decoding steps, as many as there are
free rows join: their prompts are prefilled together (left-padded, `attention_mask`) into
their rows of the cache, and each samples its first token. Then one forward pass feeds the
last token of every running row, each at its own position (`KVCache.lens`), and every row
samples its next token. Rows that finish leave at once: the last row moves into the freed
slot, so the running rows are always rows [0, n) of the cache and a step costs n rows, not
max_batch.

Why answers do not depend on the batch. Every request samples with its own NumPy generator
(`tinygpt.infer.sampler.row_generators(seed, 1)`), drawing one uniform number per sampled
token (`sample_token`, one row's logits at a time), and a row's logits depend
only on its own tokens (padding and other rows are masked out). So a request's tokens are the
same alone or under load, up to the last bits that a different batch shape changes in a CPU
matmul (about 1e-6 in a logit): greedy decoding can only differ where the two best logits are
closer than that, sampling only where the uniform draw falls that close to a boundary.

Context. A prompt must leave room for one new token: one of `block_size` tokens or more is
refused (`PromptTooLong`, giving both numbers). A completion may run past the context: when
a row's next token would pass it, its window slides to its last block_size tokens
(`tinygpt.infer.sampler.window_start`): its cache row is emptied and refilled from them
before the step, as `tinygpt.infer.generate` does.

Example:

    from tinygpt.infer.engine import Engine
    gen = tinygpt.load("runs/shakespeare")
    with Engine(gen.model, gen.tokenizer, max_batch=16) as engine:
        req = engine.submit("ROMEO:", max_tokens=50, temperature=0.8, seed=1)
        for event in req:                      # or: async for event in req
            print(event.text, end="", flush=True)
        print(req.result().usage)
"""

from __future__ import annotations

import collections
import itertools
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from tinygpt.core.errors import TinyGPTError
from tinygpt.core.model import GPT
from tinygpt.data.tokenizer import Tokenizer

# The request's side (settings, events, the handle) is torch-free and shared with the ONNX
# serving backend; it is importable from here as well.
from tinygpt.infer.request import (  # noqa: F401
    FINISH_REASONS,
    Completion,
    EngineError,
    EngineStats,
    Event,
    PromptTooLong,
    QueueFull,
    Request,
    SamplingParams,
    Token,
    Usage,
    Wake,
    describe_token,
    new_request,
    params_of,
    wake_all,
)
from tinygpt.infer.sampler import row_generators, sample_rows, window_start
from tinygpt.infer.textgen import RowText

# ---------------------------------------------------------------------------- the engine

_Logprob = tuple[float, list[tuple[int, float]]]  # chosen token's, [(id, logprob) of the top]


@dataclass
class _Row:
    """A running request: its handle, text state, random generator and per-row settings."""

    req: Request
    text: RowText
    generator: np.random.Generator | None
    stop_ids: frozenset[int]
    ids: list[int] = field(default_factory=list)  # the row's tokens: prompt + generated
    window: int = 0  # index in `ids` of the first token in the row's cache

    @property
    def length(self) -> int:
        return len(self.ids)


class Engine:
    """Runs generation requests in continuous batches in one background thread.

    Engine(model, tokenizer, max_batch=16, max_queue=64, timeout=600.0):
    - max_batch: rows of the batch, i.e. requests generated at once. The KV cache for all of
      them is allocated up front: 2 * n_layer * max_batch * block_size * K * D numbers.
    - max_queue: requests that may wait while every row is busy; one more raises QueueFull.
    - timeout: the default time limit of a request, seconds from submission (None: none).
    - prefill_chunk: feed prompts in pieces of this many tokens (None: whole), which bounds
      how long one prefill holds up the running rows.
    - start=False leaves the thread unstarted: call `step()` by hand (tests do this).

    `submit` is thread-safe and never blocks, so it may be called from an asyncio event
    loop; the returned `Request` is iterated with `for` in a thread or `async for` in a loop.
    """

    def __init__(
        self,
        model: GPT,
        tokenizer: Tokenizer,
        *,
        max_batch: int = 16,
        max_queue: int = 64,
        timeout: float | None = 600.0,
        prefill_chunk: int | None = None,
        start: bool = True,
    ) -> None:
        if max_batch < 1 or max_queue < 0:
            raise TinyGPTError(
                f"max_batch must be at least 1 and max_queue 0 or more, got {max_batch} and "
                f"{max_queue}"
            )
        if prefill_chunk is not None and prefill_chunk < 1:
            raise TinyGPTError(f"prefill_chunk must be at least 1, got {prefill_chunk}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_batch, self.max_queue = max_batch, max_queue
        self.timeout, self.prefill_chunk = timeout, prefill_chunk
        self.context = model.config.block_size
        self.vocab_size = model.config.vocab_size
        # A model's vocabulary may be padded past the tokenizer's (to a multiple of 64, say):
        # ids the tokenizer cannot decode are never sampled.
        self._usable = min(self.vocab_size, getattr(tokenizer, "vocab_size", self.vocab_size))
        self.eot_id: int | None = getattr(tokenizer, "eot_id", None)
        self._special = {i: s for s, i in getattr(tokenizer, "special_tokens", {}).items()}
        self.device = next(model.parameters()).device
        with torch.inference_mode():
            self.cache = model.new_cache(max_batch, self.context)
            # The last token of each running row: the input of the next step, (max_batch,).
            self._last = torch.zeros(max_batch, dtype=torch.long, device=self.device)
        self._rows: list[_Row] = []
        self._queue: collections.deque[Request] = collections.deque()
        self._cond = threading.Condition()
        self._ids = itertools.count()
        self._closed = False
        self._steps = self._tokens = 0
        self._finished: collections.Counter[str] = collections.Counter()
        self._thread: threading.Thread | None = None
        if start:
            self._thread = threading.Thread(target=self._run, name="tinygpt-engine", daemon=True)
            self._thread.start()

    # --- the public surface --------------------------------------------------------------
    def encode(self, prompt: str) -> list[int]:
        """Token ids of a text prompt; an empty prompt starts at a document boundary."""
        ids = self.tokenizer.encode(prompt, allowed_special=True) if prompt else []
        if not ids and self.eot_id is not None:
            ids = [self.eot_id]
        return ids

    def submit(
        self,
        prompt: str | Sequence[int],
        params: SamplingParams | None = None,
        **settings: Any,
    ) -> Request:
        """Queue a request: a text prompt or token ids, and SamplingParams (or its fields as
        keyword arguments). Raises TinyGPTError for bad input (PromptTooLong for a prompt
        that fills the context) and QueueFull when the queue is full."""
        params = params_of(params, settings)
        ids = self.encode(prompt) if isinstance(prompt, str) else [int(i) for i in prompt]
        req = new_request(
            next(self._ids), ids, params, vocab_size=self.vocab_size, context=self.context,
            wake=self._wake, timeout=self.timeout,
        )  # fmt: skip
        with self._cond:
            if self._closed:
                raise TinyGPTError("the engine is closed; start a new one")
            # Requests that the next step will give a free row do not count as waiting.
            free = max(0, self.max_batch - len(self._rows))
            if len(self._queue) >= self.max_queue + free:
                raise QueueFull(
                    f"the engine is full: {self.max_batch} rows generate and "
                    f"{len(self._queue) - free} requests wait (at most {self.max_queue}); "
                    "try again shortly"
                )
            self._queue.append(req)
            self._cond.notify_all()
        return req

    def stats(self) -> EngineStats:
        with self._cond:
            return EngineStats(
                active=len(self._rows),
                queued=len(self._queue),
                steps=self._steps,
                tokens=self._tokens,
                max_batch=self.max_batch,
                finished=dict(self._finished),
            )

    def close(self) -> None:
        """Stop the thread; requests still queued or running end with "cancelled"."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        for row in self._rows:
            self._finish(row, "cancelled")
        self._rows.clear()
        while self._queue:
            self._end_waiting(self._queue.popleft(), "cancelled")

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the loop ----------------------------------------------------------------------
    def _wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed and not self._queue and not self._rows:
                    self._cond.wait()
                if self._closed:
                    return
            try:
                self.step()
            except Exception as exc:  # a fault outside a request's own work: end them all
                rows, self._rows = self._rows, []
                with self._cond:
                    waiting, self._queue = list(self._queue), collections.deque()
                self._fail([row.req for row in rows] + waiting, exc)

    @torch.inference_mode()
    def step(self) -> None:
        """One turn of the loop: end cancelled and timed-out requests, let waiting requests
        join (prefill, first token), then one decoding step for every running row. Called
        by the engine's thread, or by hand when the engine was made with start=False."""
        if self._thread is not None and threading.current_thread() is not self._thread:
            raise TinyGPTError("this engine runs its own thread; step() is for start=False")
        now = time.monotonic()
        for i in reversed(range(len(self._rows))):
            row = self._rows[i]
            if row.req._cancelled or now >= row.req.deadline:
                self._finish(row, "cancelled" if row.req._cancelled else "timeout")
                self._remove(i)
        joining: list[Request] = []
        with self._cond:
            for req in list(self._queue):
                if req._cancelled or now >= req.deadline:
                    self._queue.remove(req)
                    self._end_waiting(req, "cancelled" if req._cancelled else "timeout")
            while self._queue and len(self._rows) + len(joining) < self.max_batch:
                joining.append(self._queue.popleft())
        if joining:
            n = len(self._rows)
            try:
                self._join(joining)
            except Exception as exc:  # only these requests fail; the batch goes on
                del self._rows[n:]
                self._fail(joining, exc)
        if self._rows:
            try:
                self._decode()
            except Exception as exc:  # every running request fails; the engine goes on
                rows, self._rows = self._rows, []
                self._fail([row.req for row in rows], exc)

    def _fail(self, requests: list[Request], exc: Exception) -> None:
        message = f"{type(exc).__name__}: {exc}"
        for req in requests:
            if not req.done:
                self._end(req, Event("", finish_reason="error", error=message))

    def _join(self, joining: list[Request]) -> None:
        """Prefill the joining requests together into rows [n, n + m), left-padded, and
        sample each one's first token."""
        n, m = len(self._rows), len(joining)
        rows = [self._new_row(req) for req in joining]
        T = max(len(req.prompt_ids) for req in joining)
        ids = torch.tensor(
            [[0] * (T - len(r.prompt_ids)) + r.prompt_ids for r in joining], device=self.device
        )  # (m, T), left-padded: every prompt ends in the last column
        lens = torch.tensor([len(r.prompt_ids) for r in joining], device=self.device)
        real = torch.arange(T, device=self.device) >= (T - lens)[:, None]  # (m, T)
        cache = self.cache.narrow(n, m)
        cache.reset()
        step = self.prefill_chunk or T
        for s in range(0, T, step):
            part = real[:, s : s + step]
            mask = None if bool(part.all()) else part
            logits, _ = self.model(
                ids[:, s : s + step], cache=cache, attention_mask=mask, last_only=True
            )
        self._rows.extend(rows)
        self._advance(n, logits[:, -1, : self._usable])  # (m, V)

    def _decode(self) -> None:
        """One forward pass for every running row: each feeds its last token."""
        n = len(self._rows)
        self._slide()
        idx = self._last[:n, None]  # (n, 1)
        logits, _ = self.model(idx, cache=self.cache.narrow(0, n), last_only=True)  # (n, 1, V)
        with self._cond:
            self._steps += 1
        self._advance(0, logits[:, -1, : self._usable])

    def _slide(self) -> None:
        """Rows whose next token would pass the context: the window slides to their last
        block_size tokens. Their cache rows are refilled with all of those but the last,
        which the decoding step then feeds as usual (at position block_size - 1)."""
        for i, row in enumerate(self._rows):
            start = window_start(row.window, row.length, self.context)
            if start == row.window:
                continue
            row.window = start
            cache = self.cache.narrow(i, 1)
            cache.reset()
            ids = torch.tensor([row.ids[start : row.length - 1]], device=self.device)
            step = self.prefill_chunk or ids.size(1)
            for s in range(0, ids.size(1), step):
                self.model(ids[:, s : s + step], cache=cache, last_only=True)

    def _advance(self, first: int, logits: Tensor) -> None:
        """Sample the next token of rows [first, first + len(logits)) and deliver it; rows
        that finish leave the batch."""
        rows = self._rows[first : first + logits.size(0)]
        tokens = self._sample(rows, logits)  # (n,)
        self._last[first : first + len(rows)] = tokens
        logprobs = self._logprobs(rows, logits, tokens)
        done: list[int] = []
        wakes: list[Wake] = []
        for j, (row, token) in enumerate(zip(rows, tokens.tolist())):
            row.ids.append(token)
            info = self._token(token, logprobs[j] if logprobs else None)
            reason = None
            if token in row.stop_ids:
                piece, reason = row.text.finish(), "stop"
            else:
                piece = row.text.push(token)
                if row.text.done:
                    reason = "stop"
                elif row.req.completion_tokens + 1 >= row.req.params.max_tokens:
                    piece, reason = piece + row.text.finish(), "length"
            if reason is None:
                row.req._emit(Event(piece, info), wakes)
            else:
                self._end(row.req, Event(piece, info, reason), wakes)
                done.append(first + j)
        wake_all(wakes)
        with self._cond:
            self._tokens += len(rows)
        for i in reversed(done):
            self._remove(i)

    def _sample(self, rows: list[_Row], logits: Tensor) -> Tensor:
        """The next token of every row, each with its own settings and generator, by the one
        sampling rule (`tinygpt.infer.sampler`): rows that share their settings are sampled
        together (`sample_rows`), which gives each the token `sample_token` would.
        logits (n, V) -> ids (n,)."""
        scores = logits.float().cpu().numpy()
        groups: dict[tuple[float, int | None, float | None, float], list[int]] = {}
        for j, row in enumerate(rows):
            p = row.req.params
            groups.setdefault((p.temperature, p.top_k, p.top_p, p.repetition_penalty), []).append(j)
        tokens = [0] * len(rows)
        for (temperature, top_k, top_p, penalty), members in groups.items():
            picked = sample_rows(
                scores[members],
                [rows[j].ids if penalty != 1.0 else () for j in members],
                [rows[j].generator for j in members],
                temperature=temperature,
                top_k=top_k,
                top_p=top_p,
                repetition_penalty=penalty,
            )
            for j, token in zip(members, picked):
                tokens[j] = token
        return torch.tensor(tokens, dtype=torch.long, device=logits.device)

    def _logprobs(
        self, rows: list[_Row], logits: Tensor, tokens: Tensor
    ) -> list[_Logprob | None] | None:
        """Per row, (logprob of the chosen token, [(id, logprob) of the top ones]) or None
        for a row that did not ask; None when no row asked."""
        if not any(r.req.params.logprobs for r in rows):
            return None
        logp = torch.log_softmax(logits.float(), dim=-1)  # (n, V)
        chosen = logp.gather(1, tokens[:, None])[:, 0].tolist()  # (n,)
        k = max(r.req.params.top_logprobs for r in rows)
        top_v, top_i = logp.topk(k, dim=-1) if k else (logp[:, :0], logp[:, :0].long())
        out: list[_Logprob | None] = []
        for j, r in enumerate(rows):
            kj = r.req.params.top_logprobs
            pairs = list(zip(top_i[j, :kj].tolist(), top_v[j, :kj].tolist()))
            out.append((chosen[j], pairs) if r.req.params.logprobs else None)
        return out

    def _token(self, token: int, logprob: _Logprob | None) -> Token:
        if logprob is None:
            return self._describe(token)
        value, top = logprob
        return self._describe(token, value, tuple(self._describe(i, v) for i, v in top))

    def _describe(self, token: int, logprob: float | None = None, top: tuple = ()) -> Token:
        return describe_token(self.tokenizer, self._special, token, logprob, top)

    def _new_row(self, req: Request) -> _Row:
        p = req.params
        generator = row_generators(p.seed, 1)[0] if p.temperature > 0 else None
        stop_ids = p.stop_token_ids
        if stop_ids is None:
            stop_ids = () if self.eot_id is None else (self.eot_id,)
        text = RowText(self.tokenizer, p.stop)
        return _Row(req, text, generator, frozenset(stop_ids), list(req.prompt_ids))

    def _remove(self, i: int) -> None:
        """Free row i: the last running row moves into its slot (cache, last token)."""
        last = len(self._rows) - 1
        if i != last:
            self.cache.copy_row(last, i)
            self._last[i] = self._last[last]
            self._rows[i] = self._rows[last]
        self._rows.pop()

    def _finish(self, row: _Row, reason: str) -> None:
        self._end(row.req, Event(row.text.finish(), finish_reason=reason))

    def _end_waiting(self, req: Request, reason: str) -> None:
        self._end(req, Event("", finish_reason=reason))

    def _end(self, req: Request, event: Event, wakes: list[Wake] | None = None) -> None:
        usage = Usage(req.prompt_tokens, req.completion_tokens + (event.token is not None))
        req._emit(Event(event.text, event.token, event.finish_reason, usage, event.error), wakes)
        with self._cond:
            self._finished[event.finish_reason or "error"] += 1
