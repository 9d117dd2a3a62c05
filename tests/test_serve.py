"""The OpenAI-compatible server, over real HTTP: the official `openai` client for the API as
people use it (completions and chat, whole and streamed, n, stop, seed, logprobs), raw HTTP
for the error cases and the stream's framing, and the server's behaviour under load (answers
equal those made alone, a client that leaves frees its row, the queue, the time limit).

Servers run in background threads on free loopback ports (`tinygpt.serve.start`, which waits
for them with a time limit; fixtures always stop them); one test starts `tinygpt serve` as a
process. The protocol tests use a tiny model with random weights whose special tokens'
logits are masked out, so that every answer runs to max_tokens, one character a token; the chat tests
use a tiny model trained for a moment to answer three questions and end its turn.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import string
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest
import torch

import tinygpt
from chatmodel import QA, TEMPLATE, chat_tokenizer, train_chat_run
from tinygpt.cli import main
from tinygpt.core.config import RunConfig
from tinygpt.core.model import GPT, GPTConfig
from tinygpt.data.tokenizer import train_tokenizer
from tinygpt.infer.engine import Engine
from tinygpt.infer.loader import save_model_run
from tinygpt.serve import Limits, create_app, start
from tinygpt.serve.protocol import APIError, parse_body

NAME = "tiny"
CONTEXT = 64
CAP = 40
MAX_N = 4
# Batch shape changes the last bits of a CPU matmul (tests/test_engine.py): greedy answers
# under load equal answers alone wherever the two best logits are further apart than this.
MIN_MARGIN = 1e-4


class ScriptedGPT(GPT):
    """A GPT whose forward pass can be slowed down (`delay` seconds) and whose `banned` ids
    are never generated (their logits are -inf): generation then runs to max_tokens."""

    delay = 0.0
    banned: tuple[int, ...] = ()

    def forward(self, idx, targets=None, **kw):
        if self.delay:
            time.sleep(self.delay)
        logits, loss = super().forward(idx, targets, **kw)
        if self.banned:
            logits[..., list(self.banned)] = float("-inf")
        return logits, loss


@pytest.fixture(scope="module")
def tok():
    return chat_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    torch.manual_seed(0)
    config = GPTConfig(
        vocab_size=tok.vocab_size, block_size=CONTEXT, n_layer=2, n_head=4, n_embd=32, init_std=0.3
    )
    m = ScriptedGPT(config).eval()
    m.banned = tuple(tok.special_tokens.values())  # every answer is max_tokens characters
    return m


@pytest.fixture(scope="module")
def engine(model, tok):
    with Engine(model, tok, max_batch=8, max_queue=16) as e:
        yield e


@pytest.fixture(scope="module")
def server(engine):
    app = create_app(
        engine, name=NAME, template=TEMPLATE, limits=Limits(max_tokens_cap=CAP, max_n=MAX_N)
    )
    with start(app) as running:
        yield running


@pytest.fixture()
def slow(model):
    """Slow the protocol model down for a test (it is shared by the module)."""
    model.delay = 0.01
    yield model
    model.delay = 0.0


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def chat_run(tmp_path_factory, tok):
    """A run folder with a chat template and a model trained to answer QA and end its turn."""
    return train_chat_run(tmp_path_factory.mktemp("runs") / "chatty", tok, context=CONTEXT)


@pytest.fixture(scope="module")
def chat_server(chat_run):
    app = create_app(chat_run, max_batch=4)  # opens the run folder, as `tinygpt serve` does
    with start(app) as running:
        yield running


def chunks(response: httpx.Response) -> list:
    """The data of every server-sent event of a response, JSON-decoded ([DONE] as is)."""
    out = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            data = line[len("data: ") :]
            out.append(data if data == "[DONE]" else json.loads(data))
        else:
            assert line == "", line
    return out


def post(http: httpx.Client, path: str, body: dict, **kw) -> httpx.Response:
    return http.post(path, json=body, **kw)


# ---------------------------------------------------------------------------- the API


def test_models_health_and_unknown_paths(http):
    models = http.get("/v1/models").json()
    assert [m["id"] for m in models["data"]] == [NAME] and models["object"] == "list"
    assert http.get(f"/v1/models/{NAME}").json()["object"] == "model"
    assert http.get("/v1/models/gpt-4").status_code == 404
    health = http.get("/health").json()
    assert health["status"] == "ok" and health["max_batch"] == 8
    for path, method, status in [
        ("/nope", "GET", 404),
        ("/static/nope.js", "GET", 404),
        ("/", "POST", 405),
        ("/v1/nope", "GET", 404),
        ("/v1/completions", "GET", 405),
    ]:
        r = http.request(method, path)
        assert r.status_code == status
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}


def test_the_chat_page_and_info(http, model, engine):
    page = http.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "connect-src 'self'" in csp
    assert page.headers["x-content-type-options"] == "nosniff"
    assert '<script src="/static/chat.js"' in page.text and "/static/chat.css" in page.text
    files = {"chat.js": "javascript", "chat.css": "text/css"}
    for name, kind in files.items():
        r = http.get(f"/static/{name}")
        assert r.status_code == 200 and kind in r.headers["content-type"]
        files[name] = r.text
    # offline and text-only: nothing from another origin, text never written as HTML
    for text in (page.text, *files.values()):
        assert "http://" not in text and "https://" not in text and "@import" not in text
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in files["chat.js"]
    info = http.get("/info").json()
    assert info == {
        "model": NAME,
        "parameters": model.num_params(),
        "context": CONTEXT,
        "chat": True,
        "template": "default",
        "runtime": "pytorch",
        "max_batch": 8,
        "max_tokens_default": CAP,
        "max_tokens_cap": CAP,
        "logprobs": True,
        "api_key_required": False,
    }
    # the page can be left out; /info stays open when an API key guards /v1
    app = create_app(engine, name=NAME, template=None, api_key="k", page=False)
    with start(app) as running, httpx.Client(base_url=running.url) as other:
        assert other.get("/").status_code == 404
        assert other.get("/static/chat.js").status_code == 404
        info = other.get("/info").json()
        assert info["api_key_required"] is True and info["chat"] is False
        assert info["template"] is None
        assert other.get("/v1/models").status_code == 401


def test_completions_with_the_openai_client(client, tok):
    prompt = "To be, or not"
    out = client.completions.create(
        model=NAME, prompt=prompt, max_tokens=12, temperature=0.9, seed=7, n=3
    )
    assert out.object == "text_completion" and out.model == NAME and out.id.startswith("cmpl-")
    assert [c.index for c in out.choices] == [0, 1, 2]
    assert all(c.finish_reason == "length" for c in out.choices)
    assert all(len(tok.encode(c.text)) == 12 for c in out.choices)
    # usage is exact: the prompt is counted once, every choice's tokens are counted
    assert out.usage.prompt_tokens == len(tok.encode(prompt))
    assert out.usage.completion_tokens == 3 * 12
    assert out.usage.total_tokens == out.usage.prompt_tokens + 36
    # choice j is seeded seed + j: the same as a request of its own with that seed
    again = client.completions.create(
        model=NAME, prompt=prompt, max_tokens=12, temperature=0.9, seed=8
    )
    assert again.choices[0].text == out.choices[1].text
    assert len({c.text for c in out.choices}) == 3
    # several prompts: n choices each, in order
    two = client.completions.create(model=NAME, prompt=["a", "b"], max_tokens=3, temperature=0, n=2)
    assert [c.index for c in two.choices] == [0, 1, 2, 3]
    assert two.choices[0].text == two.choices[1].text != two.choices[2].text


def test_streaming_equals_the_whole_answer(client, http, tok):
    for settings in (dict(temperature=0), dict(temperature=1.0, seed=3)):
        whole = client.completions.create(model=NAME, prompt="Now is", max_tokens=20, **settings)
        stream = client.completions.create(
            model=NAME, prompt="Now is", max_tokens=20, stream=True, **settings
        )
        parts = list(stream)
        assert "".join(p.choices[0].text for p in parts) == whole.choices[0].text
        assert [p.choices[0].finish_reason for p in parts].count("length") == 1
        assert len({p.id for p in parts}) == 1
    # the framing, over raw HTTP: usage at the end with empty choices, then [DONE]
    body = dict(
        model=NAME,
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=10,
        temperature=0,
        n=2,
        stream=True,
        stream_options={"include_usage": True},
    )
    with http.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = chunks(r)
    assert events[-1] == "[DONE]"
    events = events[:-1]
    assert len({e["id"] for e in events}) == 1
    assert all(e["object"] == "chat.completion.chunk" for e in events)
    final = events[-1]
    assert final["choices"] == [] and final["usage"]["completion_tokens"] == 20
    assert all(e["usage"] is None for e in events[:-1])
    whole = client.chat.completions.create(
        model=NAME, messages=body["messages"], max_tokens=10, temperature=0
    )
    assert final["usage"]["prompt_tokens"] == whole.usage.prompt_tokens
    for index in (0, 1):
        mine = [e["choices"][0] for e in events[:-1] if e["choices"][0]["index"] == index]
        assert mine[0]["delta"]["role"] == "assistant"
        assert sum(c["finish_reason"] is not None for c in mine) == 1
        assert mine[-1]["finish_reason"] == "length"
        text = "".join(c["delta"].get("content", "") for c in mine)
        assert text == whole.choices[0].message.content


def test_stop_strings(client, tok):
    full = client.completions.create(model=NAME, prompt="Friends", max_tokens=30, temperature=0)
    text = full.choices[0].text
    # a two-character stop string spans two tokens; it is cut from the text
    k = next(i for i in range(5, 28) if text.find(text[i : i + 2]) == i)
    stop = text[k : k + 2]
    for stream in (False, True):
        out = client.completions.create(
            model=NAME,
            prompt="Friends",
            max_tokens=30,
            temperature=0,
            stop=[stop, "@@"],
            stream=stream,
        )
        if stream:
            parts = list(out)
            got = "".join(p.choices[0].text for p in parts)
            reasons = [p.choices[0].finish_reason for p in parts if p.choices[0].finish_reason]
        else:
            got, reasons = out.choices[0].text, [out.choices[0].finish_reason]
        assert got == text[:k] and reasons == ["stop"]
    chat = client.chat.completions.create(
        model=NAME, messages=[{"role": "user", "content": "x"}], max_tokens=30, temperature=0
    )
    content = chat.choices[0].message.content
    short = client.chat.completions.create(
        model=NAME,
        messages=[{"role": "user", "content": "x"}],
        max_tokens=30,
        temperature=0,
        stop=content[3:5],
    )
    assert short.choices[0].message.content == content[: content.find(content[3:5])]
    assert short.choices[0].finish_reason == "stop"


def test_logprobs(client, http, tok):
    out = client.completions.create(model=NAME, prompt="O", max_tokens=6, temperature=0, logprobs=3)
    lp = out.choices[0].logprobs
    assert "".join(lp.tokens) == out.choices[0].text and len(lp.tokens) == 6
    assert all(v <= 0 for v in lp.token_logprobs)
    assert all(
        len(top) == 3 and max(top.values()) == v
        for top, v in zip(lp.top_logprobs, lp.token_logprobs)
    )
    assert lp.text_offset == list(range(6))
    stream = client.completions.create(
        model=NAME, prompt="O", max_tokens=6, temperature=0, logprobs=3, stream=True
    )
    parts = [p.choices[0].logprobs for p in stream if p.choices[0].logprobs]
    assert [t for p in parts for t in p.tokens] == lp.tokens
    assert [o for p in parts for o in p.text_offset] == lp.text_offset
    assert [v for p in parts for v in p.token_logprobs] == lp.token_logprobs
    chat = client.chat.completions.create(
        model=NAME,
        messages=[{"role": "user", "content": "x"}],
        max_tokens=5,
        temperature=0,
        logprobs=True,
        top_logprobs=2,
    )
    content = chat.choices[0].logprobs.content
    assert "".join(t.token for t in content) == chat.choices[0].message.content
    assert all(len(t.top_logprobs) == 2 and t.top_logprobs[0].logprob == t.logprob for t in content)
    assert all(bytes(t.bytes).decode() == t.token for t in content)
    # streamed: the same tokens, spread over the chunks
    stream = client.chat.completions.create(
        model=NAME,
        messages=[{"role": "user", "content": "x"}],
        max_tokens=5,
        temperature=0,
        logprobs=True,
        stream=True,
    )
    streamed = [
        t
        for p in stream
        if p.choices and p.choices[0].logprobs
        for t in p.choices[0].logprobs.content
    ]
    assert [t.token for t in streamed] == [t.token for t in content]


def test_chat_with_a_trained_run(chat_server, tok):
    client = openai.OpenAI(base_url=chat_server.url + "/v1", api_key="unused", max_retries=0)
    name = client.models.list().data[0].id
    assert name == "chatty"  # the run folder's name
    for question, answer in QA:
        messages = [{"role": "user", "content": question}]
        out = client.chat.completions.create(model=name, messages=messages, temperature=0)
        choice = out.choices[0]
        assert out.object == "chat.completion" and out.id.startswith("chatcmpl-")
        assert choice.message.role == "assistant" and choice.message.content == answer
        assert choice.finish_reason == "stop"  # the model ended its turn
        prompt_ids, _ = TEMPLATE.encode(tok, messages, add_generation_prompt=True)
        assert out.usage.prompt_tokens == len(prompt_ids)
        assert out.usage.completion_tokens == len(answer) + 1  # and the end-of-turn token
        stream = client.chat.completions.create(
            model=name,
            messages=messages,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
        parts = list(stream)
        assert parts[0].choices[0].delta.role == "assistant"
        assert "".join(p.choices[0].delta.content or "" for p in parts if p.choices) == answer
        assert [p.choices[0].finish_reason for p in parts if p.choices][-1] == "stop"
        assert parts[-1].usage.total_tokens == out.usage.total_tokens
    # a system message, and content given as text parts
    out = client.chat.completions.create(
        model=name,
        messages=[
            {"role": "developer", "content": "Be brief."},
            {
                "role": "user",
                "content": [{"type": "text", "text": "h"}, {"type": "text", "text": "i"}],
            },
        ],
        max_tokens=3,
    )
    assert out.usage.completion_tokens <= 3


# ---------------------------------------------------------------------------- errors

GOOD = {"model": NAME, "prompt": "a", "max_tokens": 2}
CHAT = {"model": NAME, "messages": [{"role": "user", "content": "a"}], "max_tokens": 2}
LONG = "a" * CONTEXT

ERRORS = [
    # (path, body (bytes: sent as is), headers, status, param, words in the message)
    ("/v1/completions", b'{"model": "tiny", "prompt": ', {}, 400, None, "not valid JSON"),
    ("/v1/completions", b'{"model": NaN}', {}, 400, None, "not valid JSON"),
    (
        "/v1/completions",
        json.dumps(GOOD).encode(),
        {"content-type": "text/plain"},
        415,
        None,
        "application/json",
    ),
    ("/v1/completions", b'{"model": "tiny", "prompt": "\xff"}', {}, 400, None, "not valid UTF-8"),
    ("/v1/completions", b"", {}, 400, None, "no body"),
    ("/v1/completions", b"[1, 2]", {}, 400, None, "JSON object"),
    ("/v1/completions", {"prompt": "a"}, {}, 400, "model", "model is missing"),
    ("/v1/completions", {**GOOD, "model": "gpt-4"}, {}, 404, "model", "does not exist"),
    ("/v1/completions", {"model": NAME}, {}, 400, "prompt", "prompt is missing"),
    ("/v1/completions", {**GOOD, "prompt": 5}, {}, 400, "prompt", "prompt must be"),
    ("/v1/completions", {**GOOD, "prompt": "ü"}, {}, 400, "prompt", "cannot be encoded"),
    ("/v1/completions", {**GOOD, "prompt": [10_000]}, {}, 400, "prompt", "outside the vocabulary"),
    ("/v1/completions", {**GOOD, "prompt": LONG}, {}, 400, "prompt", f"{CONTEXT} tokens long"),
    (
        "/v1/completions",
        {**GOOD, "prompt": LONG, "stream": True},
        {},
        400,
        "prompt",
        f"context is {CONTEXT}",
    ),
    ("/v1/completions", {**GOOD, "max_tokens": 0}, {}, 400, "max_tokens", "at least 1"),
    ("/v1/completions", {**GOOD, "max_tokens": -3}, {}, 400, "max_tokens", "at least 1"),
    ("/v1/completions", {**GOOD, "max_tokens": CAP + 1}, {}, 400, "max_tokens", f"cap of {CAP}"),
    ("/v1/completions", {**GOOD, "max_tokens": "5"}, {}, 400, "max_tokens", "integer"),
    ("/v1/completions", {**GOOD, "n": MAX_N + 1}, {}, 400, "n", f"cap of {MAX_N}"),
    ("/v1/completions", {**GOOD, "prompt": ["a"] * 3, "n": 2}, {}, 400, "n", "6 choices"),
    ("/v1/completions", {**GOOD, "seed": -1}, {}, 400, "seed", "integer from 0"),
    ("/v1/completions", {**GOOD, "temperature": 3}, {}, 400, "temperature", "between 0 and 2"),
    ("/v1/completions", {**GOOD, "top_p": True}, {}, 400, "top_p", "number"),
    ("/v1/completions", {**GOOD, "stop": [1]}, {}, 400, "stop", "list of strings"),
    ("/v1/completions", {**GOOD, "stop": list("abcde")}, {}, 400, "stop", "at most 4"),
    (
        "/v1/completions",
        {**GOOD, "stream_options": {"include_usage": True}},
        {},
        400,
        "stream_options",
        "stream is true",
    ),
    ("/v1/completions", {**GOOD, "logprobs": 9}, {}, 400, "logprobs", "0 to 5"),
    ("/v1/completions", {**GOOD, "echo": True}, {}, 400, "echo", "not supported"),
    ("/v1/completions", {**GOOD, "logit_bias": {"3": 5}}, {}, 400, "logit_bias", "not supported"),
    (
        "/v1/completions",
        {**GOOD, "frequency_penalty": 0.5},
        {},
        400,
        "frequency_penalty",
        "not supported",
    ),
    (
        "/v1/chat/completions",
        {**CHAT, "tools": [{"type": "function"}]},
        {},
        400,
        "tools",
        "not supported",
    ),
    (
        "/v1/chat/completions",
        {**CHAT, "response_format": {"type": "json_object"}},
        {},
        400,
        "response_format",
        "not supported",
    ),
    ("/v1/chat/completions", {"model": NAME}, {}, 400, "messages", "messages is missing"),
    ("/v1/chat/completions", {**CHAT, "messages": "hi"}, {}, 400, "messages", "must be a list"),
    ("/v1/chat/completions", {**CHAT, "messages": []}, {}, 400, "messages", "empty"),
    (
        "/v1/chat/completions",
        {**CHAT, "messages": ["hi"]},
        {},
        400,
        "messages",
        "must be an object",
    ),
    (
        "/v1/chat/completions",
        {**CHAT, "messages": [{"role": "usr", "content": "a"}]},
        {},
        400,
        "messages",
        "did you mean 'user'",
    ),
    (
        "/v1/chat/completions",
        {**CHAT, "messages": [{"role": "user", "content": 5}]},
        {},
        400,
        "messages",
        "must be a string",
    ),
    (
        "/v1/chat/completions",
        {**CHAT, "messages": [{"role": "user"}]},
        {},
        400,
        "messages",
        "no content",
    ),
    (
        "/v1/chat/completions",
        {**CHAT, "messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
        {},
        400,
        "messages",
        "text only",
    ),
    (
        "/v1/chat/completions",
        {**CHAT, "messages": [{"role": "assistant", "content": "a"}]},
        {},
        400,
        "messages",
        "the user was expected",
    ),
    (
        "/v1/chat/completions",
        {**CHAT, "messages": [{"role": "user", "content": LONG}]},
        {},
        400,
        "messages",
        f"context is {CONTEXT}",
    ),
    (
        "/v1/chat/completions",
        {**CHAT, "top_logprobs": 2},
        {},
        400,
        "top_logprobs",
        "needs logprobs",
    ),
    (
        "/v1/chat/completions",
        {**CHAT, "max_completion_tokens": 0},
        {},
        400,
        "max_completion_tokens",
        "at least 1",
    ),
]


def test_fit_context_leaves_out_the_oldest_exchanges(chat_server, tok):
    """tinygpt's own `fit_context` field (the chat page sends it): the oldest exchanges are
    left out until the answer has min(max_tokens, context / 2) tokens, as in `tinygpt chat`,
    and a header says how many."""
    turns = []
    for q, a in QA * 2:
        turns += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    messages = [{"role": "system", "content": "Be brief."}, *turns[:-1]]  # ends with "who"
    body = {"model": "chatty", "messages": messages, "temperature": 0, "max_tokens": 20}
    with httpx.Client(base_url=chat_server.url, timeout=30) as http:
        r = http.post("/v1/chat/completions", json=body)
        assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
        assert "x-tinygpt-messages-left-out" not in r.headers
        r = http.post("/v1/chat/completions", json={**body, "fit_context": True})
        assert r.status_code == 200
        left_out = int(r.headers["x-tinygpt-messages-left-out"])
        kept = [messages[0], *messages[1 + left_out :]]
        ids, _ = TEMPLATE.encode(tok, kept, add_generation_prompt=True)
        assert left_out > 0 and left_out % 2 == 0
        assert r.json()["usage"]["prompt_tokens"] == len(ids) <= CONTEXT - 20
        assert len(TEMPLATE.encode(tok, [messages[0], *messages[left_out - 1 :]], True)[0]) > (
            CONTEXT - 20
        )  # one exchange more would not have fitted
        with http.stream(
            "POST", "/v1/chat/completions", json={**body, "fit_context": True, "stream": True}
        ) as streamed:
            assert streamed.headers["x-tinygpt-messages-left-out"] == str(left_out)
            text = "".join(
                e["choices"][0]["delta"].get("content") or ""
                for e in chunks(streamed)[:-1]
                if e["choices"]
            )
        assert text == r.json()["choices"][0]["message"]["content"]
        # the last message alone too long: 400, saying so; fit_context must be a boolean
        long = {**body, "messages": [{"role": "user", "content": "hi " * 40}]}
        r = http.post("/v1/chat/completions", json={**long, "fit_context": True})
        assert r.status_code == 400 and "the last message takes" in r.json()["error"]["message"]
        r = http.post("/v1/chat/completions", json={**body, "fit_context": "yes"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "fit_context"


def test_every_error_case_answers_in_openai_shape_and_the_server_goes_on(http):
    for path, body, headers, status, param, words in ERRORS:
        if isinstance(body, bytes):
            headers = {"content-type": "application/json", **headers}
            r = http.post(path, content=body, headers=headers)
        else:
            r = http.post(path, json=body, headers=headers)
        assert r.status_code == status, (body, r.text)
        assert r.headers["content-type"] == "application/json", body
        error = r.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert words in error["message"] and error["param"] == param, (body, error)
        assert error["type"] == "invalid_request_error"
        ok = post(http, "/v1/completions", GOOD)  # the server still answers correctly
        assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == 2
    too_long = post(http, "/v1/completions", {**GOOD, "prompt": LONG})
    assert too_long.json()["error"]["code"] == "context_length_exceeded"


def test_fields_that_openai_does_not_define_are_ignored_and_neutral_values_accepted(http):
    body = {
        **GOOD,
        "top_k": 5,
        "my_field": {"x": 1},
        "user": "me",
        "frequency_penalty": 0,
        "logit_bias": {},
        "echo": False,
        "best_of": 1,
    }
    assert post(http, "/v1/completions", body).status_code == 200
    chat = {**CHAT, "tools": [], "response_format": {"type": "text"}, "store": False}
    assert post(http, "/v1/chat/completions", chat).status_code == 200


def test_chat_without_a_template_and_the_api_key(engine, tok):
    app = create_app(engine, name=NAME, api_key="sesame")
    with start(app) as running, httpx.Client(base_url=running.url) as http:
        assert http.get("/health").status_code == 200  # open without a key
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "sesame"}):
            r = http.post("/v1/completions", json=GOOD, headers=headers)
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
            assert http.get("/v1/models", headers=headers).status_code == 401
        client = openai.OpenAI(base_url=running.url + "/v1", api_key="sesame", max_retries=0)
        assert (
            client.completions.create(model=NAME, prompt="a", max_tokens=2).usage.total_tokens == 3
        )
        with pytest.raises(openai.BadRequestError, match="no chat template"):
            client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "a"}])
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=running.url + "/v1", api_key="no", max_retries=0).models.list()


def test_parse_body_rules():
    assert parse_body(b'{"a": 1}', "Application/JSON; charset=UTF-8") == {"a": 1}
    with pytest.raises(APIError) as exc:
        parse_body(b'{"a": 1}', "application/json; charset=latin-1")
    assert exc.value.status == 415
    with pytest.raises(APIError, match="JSON object, got a string"):
        parse_body(b'"x"', "application/json")


# ---------------------------------------------------------------------------- under load


def settled(engine):
    """The engine's counters once its last step is over (a client may read its answer
    before the step that produced it has added its tokens to the counters)."""
    time.sleep(0.05)
    stats = engine.stats()
    assert stats.active == stats.queued == 0
    return stats


def greedy_by_full_passes(model, ids, n):
    """Greedy tokens by full forward passes, alone, and the smallest top-2 logit gap."""
    seq, margin = list(ids), float("inf")
    with torch.no_grad():
        for _ in range(n):
            logits = model(torch.tensor([seq]))[0][0, -1]
            top = logits.topk(2).values
            margin = min(margin, (top[0] - top[1]).item())
            seq.append(int(logits.argmax()))
    return seq[len(ids) :], margin


def test_greedy_answers_under_load_equal_answers_alone(server, client, engine, model, tok):
    prompts = [
        "To be, or not",
        "a",
        "Now is the winter",
        "Friends, Romans",
        "O",
        "What's in",
        "All the world",
        "Once more unto",
        "If music be",
        "Shall I compare",
    ]
    new = 24
    alone = {}
    for p in prompts:  # one at a time: each runs in a batch of one
        expected, margin = greedy_by_full_passes(model, tok.encode(p), new)
        assert margin > MIN_MARGIN, f"{p!r}: top-2 margin {margin:.2e}; choose another prompt"
        alone[p] = (
            client.completions.create(model=NAME, prompt=p, max_tokens=new, temperature=0)
            .choices[0]
            .text
        )
        assert alone[p] == tok.decode(expected)

    def one(i_p):
        i, p = i_p
        if i % 2:
            stream = client.completions.create(
                model=NAME, prompt=p, max_tokens=new, temperature=0, stream=True
            )
            return p, "".join(c.choices[0].text for c in stream)
        return p, client.completions.create(
            model=NAME, prompt=p, max_tokens=new, temperature=0
        ).choices[0].text

    before = settled(engine)
    jobs = list(enumerate(prompts * 2))
    with ThreadPoolExecutor(len(jobs)) as pool:
        answers = list(pool.map(one, jobs))
    after = settled(engine)
    assert all(text == alone[p] for p, text in answers)
    # the requests shared forward passes: far fewer decoding steps than tokens
    tokens, steps = after.tokens - before.tokens, after.steps - before.steps
    assert tokens == len(jobs) * new and steps < tokens / 2, (tokens, steps)


def test_a_client_that_leaves_mid_stream_frees_its_row(server, engine, slow):
    before = settled(engine)
    body = {**GOOD, "max_tokens": CAP, "stream": True}
    with (
        httpx.Client(base_url=server.url) as http,
        http.stream("POST", "/v1/completions", json=body) as r,
    ):
        seen = 0
        for line in r.iter_lines():
            seen += line.startswith("data: ")
            if seen == 3:
                break
    # the connection is closed: the request is cancelled and its row freed
    end = time.monotonic() + 5
    while engine.stats().finished.get("cancelled", 0) == before.finished.get("cancelled", 0):
        assert time.monotonic() < end, "the request was not cancelled"
        time.sleep(0.02)
    stats = engine.stats()
    assert stats.active == 0
    generated = stats.tokens - before.tokens
    assert 3 <= generated < CAP
    time.sleep(0.1)
    assert engine.stats().tokens == stats.tokens  # its generation stopped
    # a client that gives up on a whole (not streamed) answer frees its row too
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.url + "/v1/completions", json={**GOOD, "max_tokens": CAP}, timeout=0.15)
    end = time.monotonic() + 5
    while engine.stats().finished.get("cancelled", 0) < stats.finished.get("cancelled", 0) + 1:
        assert time.monotonic() < end, "the request was not cancelled"
        time.sleep(0.02)
    assert engine.stats().tokens - stats.tokens < CAP


def test_the_event_loop_answers_while_generating(server, http, slow):
    slow.delay = 0.05  # two seconds of generation
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(post, http, "/v1/completions", {**GOOD, "max_tokens": CAP})
        time.sleep(0.2)
        start_t = time.perf_counter()
        assert http.get("/health").json()["active"] == 1
        assert time.perf_counter() - start_t < 0.5  # a step of generation takes 0.05 s
        assert pending.result().status_code == 200


def test_full_queue_answers_503_with_retry_after(model, tok, slow):
    slow.delay = 0.1  # the first request holds the only row for seconds
    pool = ThreadPoolExecutor(1)
    with Engine(model, tok, max_batch=1, max_queue=1) as small:
        app = create_app(small, name=NAME)
        with start(app) as running, httpx.Client(base_url=running.url, timeout=30) as http:
            body = {**GOOD, "max_tokens": CAP, "stream": True}
            with http.stream("POST", "/v1/completions", json=body) as first:
                lines = first.iter_lines()  # kept: an abandoned iterator closes the stream
                for line in lines:
                    if line.startswith("data: "):
                        break
                waiting = pool.submit(post, http, "/v1/completions", {**GOOD, "max_tokens": 2})
                end = time.monotonic() + 5
                while small.stats().queued == 0:  # one runs, one waits: the queue is full
                    assert time.monotonic() < end
                    time.sleep(0.01)
                r = post(http, "/v1/completions", GOOD)
                assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1
                assert r.json()["error"]["type"] == "server_error"
                client = openai.OpenAI(base_url=running.url + "/v1", api_key="x", max_retries=0)
                with pytest.raises(openai.InternalServerError):
                    client.completions.create(model=NAME, prompt="a", max_tokens=2)
                time.sleep(0.3)  # a few steps: the first still holds its row
                assert not waiting.done() and small.stats().active == 1
            # the first client left: its row goes to the waiting request
            assert waiting.result(timeout=10).status_code == 200
    pool.shutdown()


def test_time_limit(engine, slow):
    app = create_app(engine, name=NAME, timeout=0.2)
    with start(app) as running, httpx.Client(base_url=running.url, timeout=30) as http:
        r = post(http, "/v1/completions", {**GOOD, "max_tokens": CAP})
        assert r.status_code == 504 and r.json()["error"]["code"] == "timeout"
        with http.stream(
            "POST", "/v1/completions", json={**GOOD, "max_tokens": CAP, "stream": True}
        ) as r:
            assert r.status_code == 200
            events = chunks(r)
    # text was streamed, then the error, then [DONE]
    assert events[0]["choices"][0]["text"]
    assert events[-2]["error"]["code"] == "timeout" and events[-1] == "[DONE]"
    assert all(e["choices"][0]["finish_reason"] is None for e in events[:-2])


# ---------------------------------------------------------------------------- the command


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve_command(run, *flags: str, env: dict | None = None):
    """`python -m tinygpt serve RUN FLAGS` on a free port, waited for (60 s at most) and always
    stopped; yields the base URL and, after the block, leaves the server's stderr in `.err`."""
    port = free_port()
    argv = [sys.executable, "-m", "tinygpt", "serve", str(run), "--port", str(port)]
    argv += ["--device", "cpu", "--threads", "1", "--log-level", "warning", *flags]
    proc = subprocess.Popen(
        argv, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        end = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.communicate()[1]
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < end, "tinygpt serve did not start within 60 s"
            time.sleep(0.1)
        yield url, proc
    finally:
        proc.terminate()
        _, proc.err = proc.communicate(timeout=30)


def test_tinygpt_serve_command(chat_run):
    with serve_command(chat_run, env={"TINYGPT_API_KEY": "k3y"}) as (url, proc):
        assert httpx.get(url + "/v1/models").status_code == 401
        client = openai.OpenAI(base_url=url + "/v1", api_key="k3y", max_retries=0)
        out = client.chat.completions.create(
            model="chatty", messages=[{"role": "user", "content": "hi"}], temperature=0
        )
        assert out.choices[0].message.content == "hello there"
    assert "serving 'chatty' at http://127.0.0.1" in proc.err


def test_serve_flags_set_the_key_and_the_limits(chat_run):
    """--api-key wins over TINYGPT_API_KEY; --max-tokens-cap and --timeout reach the server."""
    flags = ["--api-key", "fl4g", "--max-tokens-cap", "5", "--timeout", "1e-6"]
    with serve_command(chat_run, *flags, env={"TINYGPT_API_KEY": "k3y"}) as (url, _):
        assert (
            httpx.get(url + "/v1/models", headers={"Authorization": "Bearer k3y"}).status_code
            == 401
        )
        client = openai.OpenAI(base_url=url + "/v1", api_key="fl4g", max_retries=0)
        assert [m.id for m in client.models.list()] == ["chatty"]
        info = httpx.get(url + "/info", headers={"Authorization": "Bearer fl4g"}).json()
        assert info["max_tokens_cap"] == 5
        with pytest.raises(openai.BadRequestError, match="more than this server's cap of 5"):
            client.completions.create(model="chatty", prompt="hi", max_tokens=6)
        with pytest.raises(openai.APIStatusError) as caught:
            client.completions.create(model="chatty", prompt="hi", max_tokens=5)
        assert caught.value.status_code == 504


def test_serve_command_bad_input(tmp_path, chat_run, capsys):
    assert main(["serve", str(tmp_path / "missing")]) == 2
    assert "is not a run folder" in capsys.readouterr().err
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        assert main(["serve", str(chat_run), "--port", str(busy.getsockname()[1])]) == 2
    err = capsys.readouterr().err
    assert "cannot listen on 127.0.0.1" in err and len(err.strip().splitlines()) == 1
    assert main(["serve", str(chat_run), "--max-batch", "0"]) == 2
    assert "--max-batch must be at least 1" in capsys.readouterr().err
    (tmp_path / "onnx").mkdir()
    (tmp_path / "onnx" / "model.onnx").write_bytes(b"")
    assert main(["serve", str(tmp_path / "onnx"), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "holds model.onnx but no tinygpt_onnx.json" in err and len(err.strip().splitlines()) == 1


def test_background_server_thread_stops(engine):
    running = start(create_app(engine, name=NAME))
    running.stop()
    assert not running._thread.is_alive()
    with pytest.raises(httpx.TransportError):
        httpx.get(running.url + "/health", timeout=1)


def test_the_text_chunk_fast_path_writes_the_same_event():
    from tinygpt.serve.answer import Shape, sse

    for chat in (True, False):
        for include_usage in (True, False):
            shape = Shape(chat, NAME)
            extra = {"usage": None} if include_usage else {}
            slow_way = sse(shape.chunk([shape.choice(2, 'a"b ü\n', None, chunk=True)], **extra))
            assert shape.text_event(2, 'a"b ü\n', include_usage) == slow_way


# ---------------------------------------------------------------------------- the benchmark


def test_the_load_benchmarks_models_load_and_never_end(tmp_path):
    """benchmarks/bench_serve.py serves random runs whose answers all run to max_tokens: the
    run loads as any run (its tokenizer fits its model) and end-of-text is out of reach."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    try:
        from bench_serve import never_ends
    finally:
        sys.path.pop(0)
    tok = train_tokenizer("char", [string.printable])
    config = GPTConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=2, n_head=2, n_embd=32)
    torch.manual_seed(0)
    model = never_ends(GPT(config), tok.eot_id)
    save_model_run(tmp_path / "run", RunConfig(model=config), model, tok)
    gen = tinygpt.load(tmp_path / "run")
    with torch.no_grad():
        logits, _ = gen.model(torch.randint(0, tok.eot_id, (8, 32)))
    assert (logits.argmax(-1) != tok.eot_id).all()
    assert (logits[..., tok.eot_id] < logits.max(-1).values - 8).all()


def test_port_0_prints_the_port_it_serves_and_an_empty_key_is_refused(chat_run, capsys):
    """--port 0 lets the system pick a free port: the line printed names that port, and the
    server answers there. --api-key "" would leave the server open: refused."""
    argv = [sys.executable, "-m", "tinygpt", "serve", str(chat_run), "--port", "0"]
    argv += ["--device", "cpu", "--threads", "1", "--log-level", "warning"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        found, lines = None, []
        while found is None and len(lines) < 50:  # the "serving ..." line, before it listens
            lines.append(proc.stderr.readline())
            assert lines[-1], "".join(lines)  # the process ended without it
            found = re.search(r"at http://127\.0\.0\.1:(\d+)/v1", lines[-1])
        assert found and found.group(1) != "0", "".join(lines)
        url = f"http://127.0.0.1:{found.group(1)}"
        end = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.communicate()[1]
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < end, "tinygpt serve did not start within 60 s"
            time.sleep(0.1)
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
    assert main(["serve", str(chat_run), "--api-key", ""]) == 2
    err = capsys.readouterr().err
    assert "--api-key is empty" in err and len(err.strip().splitlines()) == 1
