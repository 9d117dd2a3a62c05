"""What each route of the server does: requests checked, submitted, awaited or streamed.

Owns: the API key check, turning checked requests (`tinygpt.serve.protocol`) into backend
submissions (one per choice), waiting for answers without blocking the event loop,
streaming them as server-sent events (`tinygpt.serve.answer` shapes them), noticing clients
that go away, the per-request time limit, reading a body within its size limit, and the
error answers of generation (busy, too long, timed out, cancelled, failed). Knows nothing
about models, torch or how tokens are generated (`tinygpt.serve.backend`), nor which path
a handler is mounted on (`tinygpt.serve.app`).

How a request runs. The body is read and checked on the event loop; the prompt is encoded
(a chat conversation through the run's template); each of the n choices is submitted to
the backend, whose thread generates it alongside every other running request (continuous
batching: one forward pass per step for all of them). A non-streamed answer awaits the
results (one wake-up of the event loop per choice); a streamed one forwards each event as a
chunk. Either way, when the client disconnects every choice is cancelled, which frees its
row at the next step.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import anyio
from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from tinygpt.core.errors import TinyGPTError
from tinygpt.data.template import fit_history
from tinygpt.serve.answer import Shape, chat_logprobs, completion_logprobs, sse, usage
from tinygpt.serve.backend import ServedModel
from tinygpt.serve.protocol import (
    MAX_BODY_BYTES,
    APIError,
    Limits,
    Settings,
    bad,
    error_body,
    parse_body,
    parse_chat,
    parse_completion,
)

# How much longer than a request's time limit the server waits for the backend to end it
# (the backend checks the limit between two steps) before answering 504 itself.
GRACE_S = 10.0

# With "fit_context": true, how many of the oldest messages were left out of the prompt.
LEFT_OUT_HEADER = "X-Tinygpt-Messages-Left-Out"


class _ClientGone(Exception):
    """The client disconnected before its answer was ready."""


# ----------------------------------------------------------------------------- streaming


class EventStream(StreamingResponse):
    """Server-sent events that stop as soon as the client disconnects.

    Starlette only watches for the disconnect under ASGI servers older than spec 2.4 and
    otherwise relies on `send` failing, which some servers never do; so this response
    always watches, and cancelling the body iterator cancels the requests behind it.
    """

    media_type = "text/event-stream"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async with anyio.create_task_group() as group:

            async def run(func: Callable[[], Any]) -> None:
                await func()
                group.cancel_scope.cancel()

            group.start_soon(run, partial(self.stream_response, send))
            await run(partial(self.listen_for_disconnect, receive))


# ----------------------------------------------------------------------------- the server


class Routes:
    """The handlers of one app's routes over one served model (`create_app` mounts them)."""

    def __init__(
        self, served: ServedModel, limits: Limits, api_key: str | None, timeout: float | None
    ) -> None:
        self.served, self.limits, self.api_key, self.timeout = served, limits, api_key, timeout
        self.backend = served.backend
        self.tokenizer = served.backend.tokenizer

    # --- plain routes ------------------------------------------------------------------
    async def check_key(self, request: Request) -> None:
        if self.api_key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode(), self.api_key.encode()
        ):
            raise APIError(
                401,
                "a valid API key is needed: send 'Authorization: Bearer <key>'"
                if not given
                else "the API key is not valid",
                code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )

    def _model_card(self) -> dict[str, Any]:
        return {
            "id": self.served.name,
            "object": "model",
            "created": self.served.created,
            "owned_by": "tinygpt",
        }

    async def models(self) -> dict[str, Any]:
        return {"object": "list", "data": [self._model_card()]}

    async def model(self, model_id: str) -> dict[str, Any]:
        if model_id != self.served.name:
            raise APIError(
                404,
                f"the model {model_id!r} does not exist; this server serves {self.served.name!r}",
                param="model",
                code="model_not_found",
            )
        return self._model_card()

    async def health(self) -> dict[str, Any]:
        stats = self.backend.stats()
        return {
            "status": "ok",
            "model": self.served.name,
            "max_batch": self.backend.max_batch,
            "active": getattr(stats, "active", None),
            "queued": getattr(stats, "queued", None),
        }

    async def info(self) -> dict[str, Any]:
        """What the chat page shows and needs: the model, its size and context, whether it
        chats, the limits of a request. Open like /health (the page asks before it has a key)."""
        template = self.served.template
        return {
            "model": self.served.name,
            "parameters": self.served.parameters,
            "context": self.backend.context,
            "chat": template is not None,
            "template": None if template is None else template.name,
            "runtime": self.served.runtime,
            "max_batch": self.backend.max_batch,
            "max_tokens_default": self.limits.max_tokens_default,
            "max_tokens_cap": self.limits.max_tokens_cap,
            "logprobs": self._logprobs_supported(),
            "api_key_required": self.api_key is not None,
        }

    def _logprobs_supported(self) -> bool:
        return bool(getattr(self.backend, "supports_logprobs", True))

    # --- the generation routes ---------------------------------------------------------
    async def completions(self, request: Request) -> Response:
        body = parse_body(await _read(request), request.headers.get("content-type"))
        req = parse_completion(body, self.limits, [self.served.name])
        prompts = [self._encode_prompt(p) for p in req.prompts]
        return await self._generate(request, Shape(False, self.served.name), req.settings, prompts)

    async def chat(self, request: Request) -> Response:
        body = parse_body(await _read(request), request.headers.get("content-type"))
        req = parse_chat(body, self.limits, [self.served.name])
        template = self.served.template
        if template is None:
            raise bad(
                f"the model {self.served.name!r} has no chat template (it was not fine-tuned "
                "for chat), so it cannot answer a conversation; use /v1/completions",
                "messages",
                code="no_chat_template",
            )
        messages, left_out = req.messages, 0
        try:
            if req.fit_context:
                # The rule of `tinygpt chat`: the answer gets min(max_tokens, context / 2).
                context = self.backend.context
                budget = context - min(req.settings.max_tokens, context // 2)
                messages, left_out = fit_history(template, self.tokenizer, messages, budget)
            ids, _ = template.encode(self.tokenizer, messages, add_generation_prompt=True)
        except TinyGPTError as exc:
            raise bad(str(exc), "messages") from None
        self._check_length(ids, "messages")
        shape = Shape(True, self.served.name)
        response = await self._generate(request, shape, req.settings, [ids])
        if req.fit_context:
            response.headers[LEFT_OUT_HEADER] = str(left_out)
        return response

    def _encode_prompt(self, prompt: str | list[int]) -> list[int]:
        """Token ids of a prompt. Text is encoded as text (a special-token string typed in a
        prompt stays characters: `tinygpt.data.template`'s rule); an empty prompt starts a document."""
        tok = self.tokenizer
        if isinstance(prompt, list):
            size = tok.vocab_size
            bad_ids = [i for i in prompt if not 0 <= i < size]
            if bad_ids:
                raise bad(
                    f"token id {bad_ids[0]} is outside the vocabulary (ids 0 to {size - 1})",
                    "prompt",
                )
            ids = prompt
        else:
            try:
                ids = tok.encode(prompt) if prompt else []
            except TinyGPTError as exc:
                raise bad(f"the prompt cannot be encoded: {exc}", "prompt") from None
            if not ids:
                ids = [tok.eot_id]
        self._check_length(ids, "prompt")
        return ids

    def _check_length(self, ids: list[int], param: str) -> None:
        context = self.backend.context
        if len(ids) >= context:
            raise bad(
                f"the prompt is {len(ids)} tokens long, but the model's context is {context} "
                f"tokens for prompt and completion together; shorten the prompt to at most "
                f"{context - 1} tokens",
                param,
                code="context_length_exceeded",
            )

    def _submit(self, settings: Settings, prompts: list[list[int]]) -> list[Any]:
        """Submit n choices per prompt (choice j of a prompt with seed + j); all or none."""
        if settings.logprobs and not self._logprobs_supported():
            raise bad(
                f"this server generates with {self.served.runtime}, which does not report "
                "log-probabilities; leave out logprobs",
                "logprobs",
                code="logprobs_not_supported",
            )
        handles: list[Any] = []
        try:
            for ids in prompts:
                for j in range(settings.n):
                    handles.append(
                        self.backend.submit(
                            ids,
                            **settings.sampling(j),
                            stop_token_ids=self.served.stop_ids,
                            timeout=self.timeout,
                        )
                    )
        except Exception as exc:
            for h in handles:
                h.cancel()
            retry = getattr(exc, "retry_after", None)
            if retry is not None:
                raise APIError(
                    503,
                    f"the server is busy: {exc}",
                    type="server_error",
                    code="overloaded",
                    headers={"Retry-After": str(int(retry))},
                ) from None
            if hasattr(exc, "prompt_tokens") or isinstance(exc, TinyGPTError):
                raise bad(str(exc), "prompt") from None
            raise
        return handles

    async def _generate(
        self, request: Request, shape: Shape, settings: Settings, prompts: list[list[int]]
    ) -> Response:
        handles = self._submit(settings, prompts)
        prompt_tokens = sum(len(p) for p in prompts)
        if settings.stream:
            return EventStream(
                self._stream(shape, settings, handles, prompt_tokens),
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        try:
            results = await self._wait(request, handles)
        except _ClientGone:
            return Response(status_code=499)  # nobody reads it
        choices, completion_tokens = [], 0
        for i, result in enumerate(results):
            self._check_finish(result.finish_reason, getattr(result, "error", None))
            completion_tokens += result.usage.completion_tokens
            tokens = self._shown_tokens(result.logprobs, result.token_ids, result.finish_reason)
            logprobs = self._logprobs(shape, settings, tokens)
            choices.append(shape.choice(i, result.text, result.finish_reason, logprobs))
        return JSONResponse(shape.answer(choices, usage(prompt_tokens, completion_tokens)))

    async def _wait(self, request: Request, handles: list[Any]) -> list[Any]:
        """The results of every handle, awaited on the event loop; cancels them all when
        the client disconnects, one fails, or the time limit (plus a grace) passes."""
        results = asyncio.ensure_future(asyncio.gather(*(h.aresult() for h in handles)))
        gone = asyncio.ensure_future(_disconnected(request.receive))
        limit = None if self.timeout is None else self.timeout + GRACE_S
        try:
            done, _ = await asyncio.wait(
                {results, gone}, timeout=limit, return_when=asyncio.FIRST_COMPLETED
            )
            if results in done:
                try:
                    return results.result()
                except Exception as exc:
                    raise APIError(500, f"generation failed: {exc}", type="server_error") from None
            if gone in done:
                raise _ClientGone
            raise self._timeout_error()
        finally:
            gone.cancel()
            if not results.done():
                results.cancel()
            for h in handles:
                h.cancel()

    def _timeout_error(self) -> APIError:
        return APIError(
            504,
            f"the request took longer than this server's time limit of {self.timeout:g} s; "
            "ask for fewer tokens or try again when the server is less busy",
            type="server_error",
            code="timeout",
        )

    def _check_finish(self, reason: str, error: str | None) -> None:
        if reason in ("stop", "length"):
            return
        raise self._finish_error(reason, error)

    def _finish_error(self, reason: str | None, error: str | None) -> APIError:
        if reason == "timeout":
            return self._timeout_error()
        if reason == "cancelled":
            return APIError(
                503,
                "the request was cancelled: the server is shutting down",
                type="server_error",
                code="cancelled",
            )
        return APIError(500, f"generation failed: {error}", type="server_error")

    def _shown_tokens(self, tokens: Any, ids: Any, reason: str | None) -> list[Any]:
        """The tokens whose logprobs are reported: all but an end-of-text or end-of-turn
        token that ended the answer (it is not part of the text)."""
        tokens = list(tokens)
        if tokens and reason == "stop" and ids and ids[-1] in self.served.stop_ids:
            tokens.pop()
        return tokens

    def _logprobs(
        self, shape: Shape, settings: Settings, tokens: list[Any], offset: int = 0
    ) -> Any:
        if not settings.logprobs:
            return None
        return chat_logprobs(tokens) if shape.chat else completion_logprobs(tokens, offset)

    async def _stream(
        self, shape: Shape, settings: Settings, handles: list[Any], prompt_tokens: int
    ) -> AsyncIterator[bytes]:
        """The chunks of a streamed answer: per chat choice a first chunk with the role; text
        as it is released (with the logprobs of the tokens since the last chunk); one chunk per
        choice with its finish_reason; with include_usage a last chunk with empty choices and
        the usage; then [DONE]. An error while generating becomes an error event, then
        [DONE]."""
        extra = {"usage": None} if settings.include_usage else {}
        queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()

        async def pump(i: int, handle: Any) -> None:
            try:
                async for event in handle:
                    queue.put_nowait((i, event))
            except Exception as exc:  # the backend failed outside a request's events
                queue.put_nowait((i, exc))

        tasks = [asyncio.ensure_future(pump(i, h)) for i, h in enumerate(handles)]
        # One timer for the whole stream (not one per event): past the time limit and its
        # grace, a stuck backend is abandoned.
        watchdog = None
        if self.timeout is not None:
            loop = asyncio.get_running_loop()
            late = (-1, _TimedOut())
            watchdog = loop.call_later(self.timeout + GRACE_S, queue.put_nowait, late)
        pending = [_Pending() for _ in handles]
        completion_tokens, left = 0, len(handles)
        try:
            if shape.chat:
                yield b"".join(
                    sse(shape.chunk([shape.choice(i, "", None, chunk=True, role=True)], **extra))
                    for i in range(len(handles))
                )
            while left:
                # Every event that is already here goes out in one write.
                batch = [await queue.get()]
                while not queue.empty():
                    batch.append(queue.get_nowait())
                out: list[bytes] = []
                failed = False
                for i, event in batch:
                    if isinstance(event, _TimedOut):
                        out.append(sse(self._timeout_error().body()))
                    elif isinstance(event, Exception):
                        out.append(
                            sse(error_body(f"generation failed: {event}", type="server_error"))
                        )
                    elif event.finish_reason not in (None, "stop", "length"):
                        out.append(sse(self._finish_error(event.finish_reason, event.error).body()))
                    else:
                        out.append(self._chunk(shape, settings, pending, i, event, **extra))
                        if event.finish_reason is not None:
                            left -= 1
                            completion_tokens += event.usage.completion_tokens
                        continue
                    failed = True
                    break
                if out:
                    yield b"".join(out)
                if failed:
                    break
            else:
                if settings.include_usage:
                    yield sse(shape.chunk([], usage(prompt_tokens, completion_tokens)))
            yield sse("[DONE]")
        finally:
            if watchdog is not None:
                watchdog.cancel()
            for task in tasks:
                task.cancel()
            for h in handles:
                h.cancel()

    def _chunk(
        self,
        shape: Shape,
        settings: Settings,
        pending: list[_Pending],
        i: int,
        event: Any,
        **extra: Any,
    ) -> bytes:
        """The event of choice i as a chunk (b"" when it shows nothing yet: a stop string may
        be starting); it carries the logprobs of the tokens since the choice's last chunk."""
        reason = event.finish_reason
        mine = pending[i]
        if event.token is not None and settings.logprobs:
            mine.tokens.append(event.token)
        if reason is None and not event.text:
            return b""
        if reason is None and not settings.logprobs:
            return shape.text_event(i, event.text, settings.include_usage)  # the common case
        tokens, mine.tokens = mine.tokens, []
        if reason is not None:
            tokens = self._shown_tokens(tokens, [t.id for t in tokens], reason)
        logprobs = self._logprobs(shape, settings, tokens, mine.offset)
        mine.offset += sum(len(t.text) for t in tokens)
        text = event.text if (event.text or not shape.chat) else None
        return sse(shape.chunk([shape.choice(i, text, reason, logprobs, chunk=True)], **extra))


@dataclass
class _Pending:
    """A streamed choice's tokens not yet shown with a chunk, and its text offset."""

    tokens: list[Any] = field(default_factory=list)
    offset: int = 0


class _TimedOut:
    """Put in a stream's queue when its time limit and grace have passed."""


async def _read(request: Request) -> bytes:
    """The request body, refusing more than MAX_BODY_BYTES (413) without reading it all."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise _too_large()
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise _too_large()
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large() -> APIError:
    return APIError(
        413,
        f"the body is larger than this server's limit of {MAX_BODY_BYTES // (1024 * 1024)} MiB",
        code="request_too_large",
    )


async def _disconnected(receive: Receive) -> None:
    """Return when the client disconnects (the body has been read by then)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
