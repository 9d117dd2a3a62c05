"""The OpenAI wire format of answers: completions, chat completions, stream chunks, logprobs.

Owns the JSON shapes the server sends back once a request has been checked
(`tinygpt.serve.protocol`): the id, creation time and kind every answer and chunk of one
request shares (`Shape`), a choice, the usage, both endpoints' logprobs and the
server-sent-event framing (`sse`). Pure Python: it knows nothing about HTTP frameworks,
models, tokenizers or how a request was checked.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


@dataclass
class Shape:
    """What every answer and chunk of one request shares: id, created, model, kind."""

    chat: bool
    model: str
    id: str = ""
    created: int = field(default_factory=lambda: int(time.time()))
    _text_event: tuple[str, str, str] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not self.id:
            self.id = new_id("chatcmpl" if self.chat else "cmpl")

    def head(self, chunk: bool) -> dict[str, Any]:
        if self.chat:
            kind = "chat.completion.chunk" if chunk else "chat.completion"
        else:
            kind = "text_completion"
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    def choice(
        self,
        index: int,
        text: str | None,
        finish_reason: str | None,
        logprobs: dict[str, Any] | None = None,
        *,
        chunk: bool = False,
        role: bool = False,
    ) -> dict[str, Any]:
        """One entry of `choices`: a message (chat), a delta (chat chunk) or text."""
        out: dict[str, Any] = {"index": index}
        if self.chat and chunk:
            delta: dict[str, Any] = {"role": "assistant"} if role else {}
            if text is not None:
                delta["content"] = text
            out["delta"] = delta
        elif self.chat:
            out["message"] = {"role": "assistant", "content": text or ""}
        else:
            out["text"] = text or ""
        out["logprobs"] = logprobs
        out["finish_reason"] = finish_reason
        return out

    def text_event(self, index: int, text: str, include_usage: bool) -> bytes:
        """The server-sent event of a chunk that only carries text, written without building
        dicts (one per token per stream: the server's most frequent message); the same JSON
        as `sse(self.chunk([self.choice(index, text, None, chunk=True)]))`."""
        if self._text_event is None:
            head = json.dumps(self.head(True), ensure_ascii=False)[:-1]
            key = '"delta": {"content": ' if self.chat else '"text": '
            self._text_event = (
                f'data: {head}, "choices": [{{"index": ',
                f", {key}",
                ("}" if self.chat else "")
                + ', "logprobs": null, "finish_reason": null}]'
                + (', "usage": null' if include_usage else "")
                + "}\n\n",
            )
        start, middle, end = self._text_event
        return f"{start}{index}{middle}{json.dumps(text, ensure_ascii=False)}{end}".encode()

    def answer(self, choices: list[dict[str, Any]], usage: dict[str, int]) -> dict[str, Any]:
        return {**self.head(False), "choices": choices, "usage": usage}

    def chunk(self, choices: list[dict[str, Any]], usage: Any = ...) -> dict[str, Any]:
        out = {**self.head(True), "choices": choices}
        if usage is not ...:
            out["usage"] = usage
        return out


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def chat_logprobs(tokens: Sequence[Any]) -> dict[str, Any]:
    """Chat's logprobs: per token its text, log-probability, UTF-8 bytes and the most likely
    tokens of its step. `tokens` are the engine's `Token`s (id, text, bytes, logprob, top)."""

    def one(t: Any) -> dict[str, Any]:
        return {"token": t.text, "logprob": t.logprob, "bytes": list(t.bytes)}

    return {"content": [{**one(t), "top_logprobs": [one(x) for x in t.top]} for t in tokens]}


def completion_logprobs(tokens: Sequence[Any], offset: int = 0) -> dict[str, Any]:
    """The completions endpoint's logprobs: parallel lists of tokens, their log-probabilities,
    the most likely tokens of each step ({text: logprob}, or None when none were asked for)
    and each token's character offset in the text, counting from `offset`."""
    offsets = []
    for t in tokens:
        offsets.append(offset)
        offset += len(t.text)
    return {
        "tokens": [t.text for t in tokens],
        "token_logprobs": [t.logprob for t in tokens],
        "top_logprobs": [{x.text: x.logprob for x in t.top} for t in tokens]
        if any(t.top for t in tokens)
        else None,
        "text_offset": offsets,
    }


def sse(data: Any) -> bytes:
    """One server-sent event: `data: <json>` and a blank line (`[DONE]` as is)."""
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return f"data: {text}\n\n".encode()
