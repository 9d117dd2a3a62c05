"""The OpenAI wire format of requests: bodies in, checked settings out; errors back.

Owns: reading a request body (content type, UTF-8, JSON, an object), checking every field
of `/v1/completions` and `/v1/chat/completions` that we implement (types, ranges, caps), the
fields OpenAI defines that we do not implement (refused by name unless given their neutral
value), and the JSON shape of errors; the shapes of answers, stream chunks and logprobs are
`tinygpt.serve.answer`'s. Pure Python: it knows nothing about HTTP frameworks, models or
tokenizers (`tinygpt.serve.routes` joins it to those), so every rule here is tested without
a server.

The rules, with OpenAI's API reference as the model:
- An error is `{"error": {"message", "type", "param", "code"}}` with an HTTP status
  (`APIError`). `param` names the field at fault.
- Fields OpenAI does not define are ignored (clients send their own extras), except
  tinygpt's own `fit_context` (chat; a boolean: leave out the oldest exchanges that do not
  fit, as `tinygpt chat` does; the chat page sends it); fields it
  defines that we do not implement (`tools`, `response_format`, `logit_bias`, penalties, ...)
  are refused with a 400 that names the field, unless they hold the value that means "off"
  (`null`, `0`, `false`, `[]`, `{"type": "text"}`, ...), which some clients always send.
- `max_tokens` defaults to `Limits.max_tokens_default` and may not exceed
  `Limits.max_tokens_cap`; an answer may run past the model's context (its window slides,
  as in `tinygpt sample`). Chat also reads
  `max_completion_tokens` (OpenAI's newer name) and prefers it.
- `n` choices (at most `Limits.max_n`, counting every prompt of a completions request) are
  generated as separate requests, choice i with seed `seed + i`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from tinygpt.core.config import SEED

# ------------------------------------------------------------------------------ errors


class APIError(Exception):
    """An answer that is an error: HTTP status, message, OpenAI error type, param, code."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message = status, message
        self.type, self.param, self.code = type, param, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.message, type=self.type, param=self.param, code=self.code)


def error_body(
    message: str,
    *,
    type: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
) -> dict[str, Any]:
    """>>> error_body("no", param="n")
    {'error': {'message': 'no', 'type': 'invalid_request_error', 'param': 'n', 'code': None}}
    """
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def bad(message: str, param: str | None = None, code: str | None = None) -> APIError:
    """A 400 about the request's content."""
    return APIError(400, message, param=param, code=code)


# ------------------------------------------------------------------------------ the body

MAX_BODY_BYTES = 4 * 1024 * 1024


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def parse_body(body: bytes, content_type: str | None) -> dict[str, Any]:
    """The JSON object a request carries, or an APIError: 415 for a body that is not
    declared `application/json` (in UTF-8), 400 for one that is empty, not UTF-8, not JSON
    (NaN and Infinity included) or not an object.

    >>> parse_body(b'{"model": "m"}', "application/json; charset=utf-8")
    {'model': 'm'}
    >>> parse_body(b'[1]', "application/json")
    Traceback (most recent call last):
    ...
    tinygpt.serve.protocol.APIError: the body must be a JSON object, got a list
    """
    media, _, params = (content_type or "").partition(";")
    if media.strip().lower() != "application/json":
        raise APIError(
            415,
            f"the body must be JSON sent with 'Content-Type: application/json', got "
            f"{content_type or 'no content type'!r}",
            code="unsupported_media_type",
        )
    for param in params.split(";"):
        key, _, value = param.partition("=")
        if key.strip().lower() == "charset" and value.strip().strip('"').lower() not in (
            "utf-8",
            "utf8",
        ):
            raise APIError(
                415,
                f"the body must be UTF-8 JSON, got charset {value.strip()!r}",
                code="unsupported_media_type",
            )
    if not body.strip():
        raise bad("the request has no body; send a JSON object")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise bad(
            f"the body is not valid UTF-8 (byte 0x{body[exc.start]:02x} at offset {exc.start}); "
            "JSON must be sent as UTF-8"
        ) from None
    try:
        data = json.loads(text, parse_constant=_reject_constant)
    except (json.JSONDecodeError, ValueError) as exc:
        raise bad(f"the body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise bad(f"the body must be a JSON object, got a {_json_type(data)}")
    return data


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    return "object"


# ------------------------------------------------------------------------------ fields


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _get_int(body: dict[str, Any], name: str, default: int | None) -> int | None:
    value = body.get(name)
    if value is None:
        return default
    if not _is_int(value):
        raise bad(f"{name} must be an integer, got {json.dumps(value)}", name)
    return value


def _get_number(body: dict[str, Any], name: str, default: float, lo: float, hi: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if not _is_number(value):
        raise bad(f"{name} must be a number, got {json.dumps(value)}", name)
    if not lo <= value <= hi:
        raise bad(f"{name} must be between {lo:g} and {hi:g}, got {value}", name)
    return float(value)


def _get_bool(body: dict[str, Any], name: str, default: bool) -> bool:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise bad(f"{name} must be true or false, got {json.dumps(value)}", name)
    return value


def _neutral(*values: Any) -> Callable[[Any], bool]:
    return lambda v: v is None or any(v == x and type(v) is type(x) for x in values)


def _zero(v: Any) -> bool:
    return v is None or (_is_number(v) and v == 0)


# Fields OpenAI defines that this server does not implement, with what counts as "off".
UNSUPPORTED_COMMON: dict[str, Callable[[Any], bool]] = {
    "logit_bias": _neutral({}),
    "presence_penalty": _zero,
    "frequency_penalty": _zero,
    "service_tier": _neutral("auto", "default"),
    "store": _neutral(False),
    "prediction": _neutral(),
}
UNSUPPORTED_COMPLETIONS: dict[str, Callable[[Any], bool]] = {
    **UNSUPPORTED_COMMON,
    "echo": _neutral(False),
    "best_of": _neutral(1),
    "suffix": _neutral(""),
}
UNSUPPORTED_CHAT: dict[str, Callable[[Any], bool]] = {
    **UNSUPPORTED_COMMON,
    "tools": _neutral([]),
    "tool_choice": _neutral("none"),
    "functions": _neutral([]),
    "function_call": _neutral("none"),
    "parallel_tool_calls": lambda v: True,  # only means something with tools
    "response_format": lambda v: v is None or v == {"type": "text"},
    "audio": _neutral(),
    "modalities": _neutral(["text"]),
    "reasoning_effort": _neutral(),
    "web_search_options": _neutral(),
}


def _refuse_unsupported(body: dict[str, Any], table: dict[str, Callable[[Any], bool]]) -> None:
    for name, is_off in table.items():
        if name in body and not is_off(body[name]):
            raise bad(
                f"{name} is not supported by this server; leave it out",
                name,
                code="unsupported_parameter",
            )


@dataclass(frozen=True)
class Limits:
    """What a server allows: the default and the cap of max_tokens, and the most choices
    (n times the number of prompts) one request may ask for."""

    max_tokens_default: int = 256
    max_tokens_cap: int = 1024
    max_n: int = 8
    max_stop: int = 4

    def __post_init__(self) -> None:
        if self.max_tokens_cap < 1 or self.max_n < 1:
            raise ValueError("max_tokens_cap and max_n must be at least 1")
        if self.max_tokens_default > self.max_tokens_cap:
            object.__setattr__(self, "max_tokens_default", self.max_tokens_cap)


@dataclass
class Settings:
    """The checked settings common to both endpoints (before prompts are encoded)."""

    model: str
    max_tokens: int
    temperature: float
    top_p: float | None
    n: int
    stop: tuple[str, ...]
    seed: int | None
    stream: bool
    include_usage: bool
    logprobs: bool
    top_logprobs: int

    def sampling(self, choice: int) -> dict[str, Any]:
        """The engine's sampling settings for choice i (its seed is seed + i)."""
        return dict(
            max_tokens=self.max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            seed=None if self.seed is None else self.seed + choice,
            stop=self.stop,
            logprobs=self.logprobs,
            top_logprobs=self.top_logprobs,
        )


def _common(
    body: dict[str, Any], limits: Limits, models: Sequence[str], max_tokens_names: Sequence[str]
) -> Settings:
    model = _model(body, models)
    max_tokens = _max_tokens(body, limits, max_tokens_names)
    temperature = _get_number(body, "temperature", 1.0, 0.0, 2.0)
    top_p: float | None = _get_number(body, "top_p", 1.0, 0.0, 1.0)
    if top_p == 0:  # no token holds zero mass: only the most likely one is left
        temperature, top_p = 0.0, None
    elif top_p == 1:
        top_p = None
    n = _get_int(body, "n", 1)
    assert n is not None
    if n < 1:
        raise bad(f"n must be at least 1, got {n}", "n")
    if n > limits.max_n:
        raise bad(f"n is {n}, more than this server's cap of {limits.max_n} choices", "n")
    stop = _stop(body, limits)
    seed = _get_int(body, "seed", None)
    lo, hi = SEED.lo, SEED.hi
    assert lo is not None and hi is not None  # seeds are bounded both ways
    if seed is not None and not lo <= seed <= hi - (n - 1):
        # choice i is seeded seed + i: every one of them must be a seed
        raise bad(
            f"seed must be an integer from {lo} to {hi - (n - 1)}, got {seed}",
            "seed",
        )
    stream = _get_bool(body, "stream", False)
    include_usage = _include_usage(body, stream)
    return Settings(
        model=model,
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        n=n,
        stop=stop,
        seed=seed,
        stream=stream,
        include_usage=include_usage,
        logprobs=False,
        top_logprobs=0,
    )


def _model(body: dict[str, Any], models: Sequence[str]) -> str:
    """The model the request names: one this server serves (404 otherwise)."""
    model = body.get("model")
    if model is None:
        raise bad("model is missing; name the model to use (GET /v1/models lists it)", "model")
    if not isinstance(model, str):
        raise bad(f"model must be a string, got {json.dumps(model)}", "model")
    if model not in models:
        raise APIError(
            404,
            f"the model {model!r} does not exist; this server serves {', '.join(map(repr, models))}",
            param="model",
            code="model_not_found",
        )
    return model


def _max_tokens(body: dict[str, Any], limits: Limits, names: Sequence[str]) -> int:
    """The first of `names` the body gives (chat prefers max_completion_tokens), checked
    against the cap; the server's default when none is given."""
    max_tokens = None
    for name in names:
        max_tokens = _get_int(body, name, None)
        if max_tokens is not None:
            break
    else:
        name = names[0]
    if max_tokens is None:
        max_tokens = limits.max_tokens_default
    elif max_tokens < 1:
        raise bad(f"{name} must be at least 1, got {max_tokens}", name)
    elif max_tokens > limits.max_tokens_cap:
        raise bad(
            f"{name} is {max_tokens}, more than this server's cap of {limits.max_tokens_cap}; "
            "ask for fewer tokens",
            name,
        )
    return max_tokens


def _stop(body: dict[str, Any], limits: Limits) -> tuple[str, ...]:
    """The stop strings: a string or a list of them, at most `limits.max_stop`; empty
    strings are dropped (they would stop at once)."""
    stop_field = body.get("stop")
    if stop_field is None:
        stop: tuple[str, ...] = ()
    elif isinstance(stop_field, str):
        stop = (stop_field,)
    elif isinstance(stop_field, list) and all(isinstance(s, str) for s in stop_field):
        stop = tuple(stop_field)
    else:
        raise bad(
            f"stop must be a string or a list of strings, got {json.dumps(stop_field)}", "stop"
        )
    if len(stop) > limits.max_stop:
        raise bad(f"stop holds {len(stop)} strings; give at most {limits.max_stop}", "stop")
    return tuple(s for s in stop if s)


def _include_usage(body: dict[str, Any], stream: bool) -> bool:
    """stream_options.include_usage: allowed only with stream."""
    options = body.get("stream_options")
    if options is None:
        return False
    if not isinstance(options, dict):
        raise bad("stream_options must be an object", "stream_options")
    if not stream:
        raise bad("stream_options is only allowed when stream is true", "stream_options")
    return _get_bool(options, "include_usage", False)


# ------------------------------------------------------------------------------ requests


@dataclass
class CompletionRequest:
    settings: Settings
    prompts: list[str | list[int]]  # text, or token ids


@dataclass
class ChatRequest:
    settings: Settings
    messages: list[dict[str, str]]  # roles system, user, assistant; string contents
    # tinygpt's own field (not OpenAI's): leave out the oldest exchanges that do not fit
    fit_context: bool = False


def parse_completion(
    body: dict[str, Any], limits: Limits, models: Sequence[str]
) -> CompletionRequest:
    """The checked settings and prompts of a `/v1/completions` body. A prompt is a string,
    a list of strings, a list of token ids or a list of such lists; each prompt gives n
    choices, and all of them together at most `limits.max_n`."""
    _refuse_unsupported(body, UNSUPPORTED_COMPLETIONS)
    settings = _common(body, limits, models, ("max_tokens",))
    if "prompt" not in body or body["prompt"] is None:
        raise bad("prompt is missing; give the text to continue", "prompt")
    prompts = _prompts(body["prompt"])
    if len(prompts) * settings.n > limits.max_n:
        raise bad(
            f"{len(prompts)} prompts x n = {settings.n} asks for {len(prompts) * settings.n} "
            f"choices; this server makes at most {limits.max_n} per request",
            "n",
        )
    logprobs = body.get("logprobs")
    if logprobs is not None:
        if not _is_int(logprobs) or not 0 <= logprobs <= 5:
            raise bad(
                f"logprobs must be an integer from 0 to 5, got {json.dumps(logprobs)}",
                "logprobs",
            )
        settings.logprobs, settings.top_logprobs = True, logprobs
    return CompletionRequest(settings, prompts)


def _prompts(prompt: Any) -> list[str | list[int]]:
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list) and prompt:
        if all(isinstance(p, str) for p in prompt):
            return list(prompt)
        if all(_is_int(p) for p in prompt):
            return [list(prompt)]
        if all(isinstance(p, list) and p and all(_is_int(i) for i in p) for p in prompt):
            return [list(p) for p in prompt]
    raise bad(
        "prompt must be a string, a list of strings, a list of token ids or a list of "
        f"non-empty lists of token ids, got {json.dumps(prompt)[:80]}",
        "prompt",
    )


def parse_chat(body: dict[str, Any], limits: Limits, models: Sequence[str]) -> ChatRequest:
    """The checked settings and messages of a `/v1/chat/completions` body. Message contents
    may also be lists of text parts (`{"type": "text", "text": ...}`), joined; the role
    `developer` (OpenAI's newer name for system) is read as `system`. Whether the
    conversation is well formed is the chat template's rule (`tinygpt.data.template`)."""
    _refuse_unsupported(body, UNSUPPORTED_CHAT)
    settings = _common(body, limits, models, ("max_completion_tokens", "max_tokens"))
    if "messages" not in body:
        raise bad("messages is missing; give the conversation as a list of messages", "messages")
    messages = body["messages"]
    if not isinstance(messages, list):
        raise bad(f"messages must be a list, got a {_json_type(messages)}", "messages")
    if not messages:
        raise bad("messages is empty; give at least one user message", "messages")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise bad(f"message {i} must be an object, got a {_json_type(m)}", "messages")
        if "role" not in m or "content" not in m:
            missing = "role" if "role" not in m else "content"
            raise bad(
                f"message {i} has no {missing}; every message needs role and content", "messages"
            )
        role, content = m["role"], m["content"]
        if role == "developer":
            role = "system"
        if isinstance(content, list):
            content = _join_parts(i, content)
        if not isinstance(content, str):
            raise bad(
                f"message {i}'s content must be a string (or a list of text parts), got "
                f"{_json_type(content)}",
                "messages",
            )
        out.append({"role": role, "content": content})
    logprobs = _get_bool(body, "logprobs", False)
    top = _get_int(body, "top_logprobs", None)
    if top is not None:
        if not logprobs:
            raise bad("top_logprobs needs logprobs set to true", "top_logprobs")
        if not 0 <= top <= 20:
            raise bad(f"top_logprobs must be from 0 to 20, got {top}", "top_logprobs")
    settings.logprobs, settings.top_logprobs = logprobs, top or 0
    return ChatRequest(settings, out, _get_bool(body, "fit_context", False))


def _join_parts(i: int, parts: list[Any]) -> str:
    texts = []
    for part in parts:
        if not isinstance(part, dict) or part.get("type") != "text":
            kind = part.get("type") if isinstance(part, dict) else _json_type(part)
            raise bad(
                f"message {i} holds a content part of type {kind!r}; this server reads text only",
                "messages",
            )
        if not isinstance(part.get("text"), str):
            raise bad(f"message {i} holds a text part without a string 'text'", "messages")
        texts.append(part["text"])
    return "".join(texts)
