"""Serving an ONNX export folder (`tinygpt serve ONNX_DIR`): the same API over onnxruntime,
one request at a time with a bounded queue, without torch.

A tiny chat model is trained for a moment to answer three questions and end its turn (as in
tests/test_serve.py), saved as a run and exported with `tinygpt export --format onnx`. The
run served by the PyTorch engine is the twin: greedy answers of the ONNX server equal the
run's. The rest is checked with the official `openai` client (whole and streamed answers,
stop strings, seeds, n, usage), raw HTTP (logprobs refused, the queue's 503, /info), the
backend by hand (cancellation, time limit, closing) and the command in a subprocess.
Both runtimes choose tokens by one rule (`tinygpt.infer.sampler`), so seeded answers agree
too.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time

import httpx
import openai
import pytest

from chatmodel import QA, TEMPLATE, chat_tokenizer, train_chat_run
from tinygpt.cli import main
from tinygpt.serve import create_app, start

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from tinygpt.export.onnx import export_run_onnx  # noqa: E402
from tinygpt.infer.onnx_runtime import load_onnx  # noqa: E402
from tinygpt.serve import open_model  # noqa: E402
from tinygpt.serve.backend import OnnxBackend, ServedModel  # noqa: E402

CONTEXT = 64


@pytest.fixture(scope="module")
def tok():
    return chat_tokenizer()


@pytest.fixture(scope="module")
def folders(tmp_path_factory, tok):
    """(run folder, its ONNX export): a model trained to answer QA and end its turn."""
    root = tmp_path_factory.mktemp("onnx-serve")
    run = train_chat_run(root / "chatty", tok, context=CONTEXT)
    return run, export_run_onnx(run, root / "chatty-onnx")


@pytest.fixture(scope="module")
def onnx_server(folders):
    app = create_app(folders[1], threads=1)  # opens the folder, as `tinygpt serve` does
    with start(app) as running:
        yield running


@pytest.fixture(scope="module")
def run_server(folders):
    with start(create_app(folders[0], max_batch=4)) as running:
        yield running


@pytest.fixture(scope="module")
def client(onnx_server):
    return openai.OpenAI(base_url=onnx_server.url + "/v1", api_key="unused", max_retries=0)


class SlowLM:
    """An onnxruntime graph (`OnnxLM`) whose every forward pass takes `delay` s longer."""

    def __init__(self, lm, delay: float) -> None:
        self._lm, self.delay = lm, delay

    def __getattr__(self, name):
        return getattr(self._lm, name)

    def __call__(self, *args):
        time.sleep(self.delay)
        return self._lm(*args)


def ask(messages_or_prompt, url: str, **kw) -> dict:
    """A raw POST to the chat endpoint (a list of messages) or completions (a prompt)."""
    chat = isinstance(messages_or_prompt, list)
    body = {"model": kw.pop("model"), **kw}
    body["messages" if chat else "prompt"] = messages_or_prompt
    path = "/v1/chat/completions" if chat else "/v1/completions"
    return httpx.post(url + path, json=body, timeout=30).json()


# ------------------------------------------------------------------------------ the API


def test_greedy_answers_equal_the_runs(onnx_server, run_server, client):
    for q, a in QA:
        out = client.chat.completions.create(
            model="chatty-onnx", messages=[{"role": "user", "content": q}], temperature=0
        )
        assert out.choices[0].message.content == a
        assert out.choices[0].finish_reason == "stop"
        twin = ask([{"role": "user", "content": q}], run_server.url, model="chatty", temperature=0)
        assert twin["choices"][0]["message"]["content"] == a
        assert twin["usage"] == out.usage.model_dump(exclude_none=True)
    # plain completions, run to max_tokens or to the end of the text
    for prompt in ("hi", "who are", "see you"):
        mine = client.completions.create(
            model="chatty-onnx", prompt=prompt, max_tokens=30, temperature=0
        )
        twin = ask(prompt, run_server.url, model="chatty", max_tokens=30, temperature=0)
        assert mine.choices[0].text == twin["choices"][0]["text"]
        assert mine.choices[0].finish_reason == twin["choices"][0]["finish_reason"]
        assert mine.usage.model_dump(exclude_none=True) == twin["usage"]


def test_streaming_stop_strings_seeds_n_and_usage(client, run_server, tok):
    messages = [{"role": "user", "content": "who are you"}]
    whole = client.chat.completions.create(model="chatty-onnx", messages=messages, temperature=0)
    parts = list(
        client.chat.completions.create(
            model="chatty-onnx",
            messages=messages,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert parts[0].choices[0].delta.role == "assistant"
    text = "".join(p.choices[0].delta.content or "" for p in parts if p.choices)
    assert text == whole.choices[0].message.content == "a tiny model"
    assert len([p for p in parts if p.choices and p.choices[0].finish_reason]) == 1
    assert parts[-1].choices == [] and parts[-1].usage == whole.usage
    assert len({p.id for p in parts}) == 1
    prompt_ids = TEMPLATE.encode(tok, messages, add_generation_prompt=True)[0]
    # prompt + the answer's characters + the end-of-turn token that ended it
    assert whole.usage.prompt_tokens == len(prompt_ids)
    assert whole.usage.completion_tokens == len("a tiny model") + 1
    assert whole.usage.total_tokens == len(prompt_ids) + 13
    # a stop string, also across tokens while streaming: excluded, finish_reason "stop"
    stopped = client.chat.completions.create(
        model="chatty-onnx", messages=messages, temperature=0, stop=["ny m"]
    )
    assert stopped.choices[0].message.content == "a ti"
    assert stopped.choices[0].finish_reason == "stop"
    streamed = client.chat.completions.create(
        model="chatty-onnx", messages=messages, temperature=0, stop="ny m", stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == "a ti"
    # seeds: the same seed, the same sample; choice j of n uses seed + j
    kw = dict(model="chatty-onnx", prompt="x", max_tokens=16, temperature=1.5)
    one = client.completions.create(seed=11, **kw)
    assert client.completions.create(seed=11, **kw).choices[0].text == one.choices[0].text
    # ... and the run's: one sampler for both (`tinygpt.infer.sampler`)
    twin = ask("x", run_server.url, **{**kw, "model": "chatty"}, seed=11)
    assert twin["choices"][0]["text"] == one.choices[0].text
    two = client.completions.create(seed=10, n=2, **kw)
    assert [c.index for c in two.choices] == [0, 1]
    assert two.choices[1].text == one.choices[0].text
    zero = client.completions.create(seed=10, **kw)
    assert two.choices[0].text == zero.choices[0].text
    assert two.usage.prompt_tokens == one.usage.prompt_tokens == 1  # counted once
    assert two.usage.completion_tokens == (
        zero.usage.completion_tokens + one.usage.completion_tokens
    )


def test_logprobs_are_refused_and_info_says_so(onnx_server, folders):
    url = onnx_server.url
    for path, body in [
        ("/v1/completions", {"prompt": "hi", "logprobs": 2}),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "hi"}], "logprobs": True},
        ),
    ]:
        r = httpx.post(url + path, json={"model": "chatty-onnx", **body})
        assert r.status_code == 400
        error = r.json()["error"]
        assert error["param"] == "logprobs" and error["code"] == "logprobs_not_supported"
        assert "onnxruntime" in error["message"]
    info = httpx.get(url + "/info").json()
    marker = json.loads((folders[1] / "tinygpt_onnx.json").read_text())
    assert info["parameters"] == marker["parameters"] > 0
    assert info["runtime"] == "onnxruntime" and info["logprobs"] is False
    assert info["context"] == CONTEXT and info["max_batch"] == 1
    assert info["chat"] is True and info["template"] == "default"
    health = httpx.get(url + "/health").json()
    assert health["max_batch"] == 1 and health["active"] == 0 and health["queued"] == 0
    assert httpx.get(url + "/").status_code == 200  # the chat page works for an ONNX folder too


def test_one_request_at_a_time_a_full_queue_and_a_client_that_leaves(folders):
    generator = load_onnx(folders[1], threads=1)
    generator.lm = SlowLM(generator.lm, 0.05)
    backend = OnnxBackend(generator, max_queue=1)
    served = ServedModel(backend, "slow", template=TEMPLATE, owned=True)
    served.stop_ids = ()  # every answer runs to max_tokens: 40 tokens take 2 s
    with start(create_app(served)) as running, httpx.Client(base_url=running.url) as http:
        long = {"model": "slow", "prompt": "hi", "max_tokens": 40, "stream": True}
        with http.stream("POST", "/v1/completions", json=long) as first:
            lines = first.iter_lines()
            for line in lines:
                if line.startswith("data: "):
                    break
            results = []
            waiting = threading.Thread(
                target=lambda: results.append(
                    http.post("/v1/completions", json={**long, "stream": False, "max_tokens": 3})
                )
            )
            waiting.start()
            end = time.monotonic() + 5
            while backend.stats().queued == 0:  # one generates, one waits: the queue is full
                assert time.monotonic() < end
                time.sleep(0.01)
            health = http.get("/health").json()
            assert health["active"] == 1 and health["queued"] == 1
            r = http.post("/v1/completions", json={"model": "slow", "prompt": "a"})
            assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1
            assert r.json()["error"]["code"] == "overloaded"
            assert waiting.is_alive()  # it waits its turn: no batch to join
        # the first client left: its generation stops and the waiting request runs
        waiting.join(10)
        assert results[0].status_code == 200
        assert results[0].json()["usage"]["completion_tokens"] == 3
        stats = backend.stats()
        assert stats.finished["cancelled"] == 1 and stats.active == 0
        assert stats.tokens < 40 + 3


def test_the_backend_by_hand(folders, tok):
    generator = load_onnx(folders[1], threads=1)
    backend = OnnxBackend(generator, max_queue=2, start=False)
    ids = TEMPLATE.encode(tok, [{"role": "user", "content": "bye"}], add_generation_prompt=True)[0]
    req = backend.submit(ids, max_tokens=30, temperature=0, stop_token_ids=generator.stop_token_ids)
    assert backend.stats().queued == 1
    backend.step()
    result = req.result(timeout=1)
    assert result.text == "see you soon" and result.finish_reason == "stop"
    assert result.token_ids[-1] == generator.end_of_turn_id
    req = backend.submit(ids, max_tokens=4, temperature=0, stop_token_ids=())
    backend.step()
    events = list(req)
    assert [e.text for e in events] == list("see ") and events[-1].finish_reason == "length"
    assert events[-1].usage.completion_tokens == 4
    # no stop ids: past the end of text, exactly max_tokens, as the engine generates them
    from tinygpt.infer.engine import Engine
    from tinygpt.infer.loader import load_run

    plain = tok.encode("hi")
    req = backend.submit(plain, max_tokens=12, temperature=0, stop_token_ids=())
    backend.step()
    mine = req.result(timeout=1)
    assert mine.finish_reason == "length" and mine.usage.completion_tokens == 12
    assert set(generator.stop_token_ids) & set(mine.token_ids)  # it ended its turn, went on
    loaded = load_run(folders[0])
    with Engine(loaded.model, loaded.tokenizer, max_batch=1) as engine:
        twin = engine.submit(plain, max_tokens=12, temperature=0, stop_token_ids=())
        assert twin.result(timeout=10).token_ids == mine.token_ids
    # past the context the window slides, as in the engine: the same tokens, greedy and
    # sampled with the same seed
    long = tok.encode("a" * (CONTEXT - 3))
    for kw in (dict(temperature=0), dict(temperature=1.2, repetition_penalty=1.3, seed=4)):
        req = backend.submit(long, max_tokens=30, stop_token_ids=(), **kw)
        backend.step()
        mine = req.result(timeout=1)
        assert mine.finish_reason == "length" and mine.usage.completion_tokens == 30
        with Engine(loaded.model, loaded.tokenizer, max_batch=1) as engine:
            twin = engine.submit(long, max_tokens=30, stop_token_ids=(), **kw)
            assert twin.result(timeout=10).token_ids == mine.token_ids
    # cancelled while waiting, timed out, refused, closed
    gone = backend.submit(ids, max_tokens=5)
    gone.cancel()
    late = backend.submit(ids, max_tokens=5, timeout=1e-6)
    time.sleep(0.01)
    backend.step()
    assert gone.result(timeout=1).finish_reason == "cancelled"
    assert late.result(timeout=1).finish_reason == "timeout"
    for bad, message in [
        (dict(prompt=[], max_tokens=1), "holds no tokens"),
        (dict(prompt=[10**6], max_tokens=1), "outside the vocabulary"),
        (dict(prompt=ids, max_tokens=1, logprobs=True), "without logprobs"),
    ]:
        with pytest.raises(Exception, match=message):
            backend.submit(bad.pop("prompt"), **bad)
    with pytest.raises(Exception, match="context is 64"):
        backend.submit(tok.encode("a" * CONTEXT), max_tokens=1)
    backend.submit(ids, max_tokens=1)
    backend.submit(ids, max_tokens=1)
    backend.submit(ids, max_tokens=1)  # one would generate, two wait
    with pytest.raises(Exception, match="try again shortly") as full:
        backend.submit(ids, max_tokens=1)
    assert full.value.retry_after >= 1
    waiting = backend._queue[0]
    backend.close()
    assert waiting.result(timeout=1).finish_reason == "cancelled"
    with pytest.raises(Exception, match="closed"):
        backend.submit(ids, max_tokens=1)


# ------------------------------------------------------------------------------ the command


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serving_an_onnx_folder_never_imports_torch(folders):
    code = textwrap.dedent(
        f"""
        import sys, httpx
        from tinygpt.serve import create_app, start
        with start(create_app({str(folders[1])!r}, threads=1)) as server:
            r = httpx.post(server.url + "/v1/chat/completions", json={{
                "model": "chatty-onnx", "temperature": 0,
                "messages": [{{"role": "user", "content": "hi"}}]}})
        print(r.json()["choices"][0]["message"]["content"])
        print("torch" in sys.modules)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.split("\n")[:2] == ["hello there", "False"], out.stderr


def test_tinygpt_serve_onnx_folder(folders, tmp_path, capsys):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tinygpt", "serve", str(folders[1]), "--port", str(port)]
        + ["--threads", "1", "--log-level", "warning", "--model-name", "tiny-onnx"],
        env=os.environ.copy(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
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
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        out = client.chat.completions.create(
            model="tiny-onnx", messages=[{"role": "user", "content": "bye"}], temperature=0
        )
        assert out.choices[0].message.content == "see you soon"
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert "serving 'tiny-onnx' at http://127.0.0.1" in err
    assert "(onnxruntime, one request at a time, chat template: default" in err
    # bad input: one line, exit status 2
    assert main(["serve", str(folders[1]), "--device", "cuda", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "served on the CPU with onnxruntime" in err and len(err.strip().splitlines()) == 1
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "tinygpt_onnx.json").write_text("{")
    assert main(["serve", str(tmp_path / "bad"), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "is not valid JSON" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(Exception, match="threads must be at least 1"):
        open_model(folders[1], threads=0)
