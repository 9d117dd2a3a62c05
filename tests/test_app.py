"""The Gradio app (app.py at the repository root): its predict function over the engine that
`tinygpt serve` uses (answers, history, the context, a model without a chat template,
stopping), the app launched on a free loopback port and fetched once, and a model folder
that does not exist (one line, exit status 2)."""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from chatmodel import QA, TEMPLATE, chat_tokenizer, train_chat_run

pytest.importorskip("gradio")

ROOT = Path(__file__).resolve().parents[1]
CONTEXT = 64


def load_app():
    spec = importlib.util.spec_from_file_location("tinygpt_gradio_app", ROOT / "app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def app_module():
    return load_app()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return train_chat_run(tmp_path_factory.mktemp("app") / "chatty", chat_tokenizer(), CONTEXT)


@pytest.fixture(scope="module")
def chat_app(app_module, run):
    served = app_module.open_served(run)
    yield app_module.ChatApp(served)
    served.backend.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_predict_answers_as_the_model_was_trained(chat_app):
    assert os.environ["GRADIO_ANALYTICS_ENABLED"] == "False"
    for q, a in QA:
        steps = list(chat_app.respond(q, [], "", temperature=0, top_p=1, max_tokens=40))
        assert steps[-1] == a
        assert len(steps) > 2 and all(a.startswith(s) for s in steps)  # streamed, growing
    # Gradio's history (its messages format; content as text or as parts) is the context
    history = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": [{"type": "text", "text": "hello there"}]},
    ]
    ids = chat_app.prompt_ids("bye", history, "", 40)
    expected = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello there"},
        {"role": "user", "content": "bye"},
    ]
    tok = chat_app.tokenizer
    assert ids == TEMPLATE.encode(tok, expected, add_generation_prompt=True)[0]
    # a long conversation keeps its newest exchanges only: the answer has room
    long = history * 6
    ids = chat_app.prompt_ids("bye", long, "", 40)
    assert len(ids) <= CONTEXT - min(40, CONTEXT // 2)
    assert ids[-len(TEMPLATE.encode(tok, expected[-1:], add_generation_prompt=True)[0]) :]
    # a stopped answer left in the history (two user messages in a row): the newest counts
    ids = chat_app.prompt_ids("bye", [{"role": "user", "content": "hi"}], "", 40)
    assert ids == TEMPLATE.encode(tok, expected[-1:], add_generation_prompt=True)[0]


def test_stopping_an_answer_cancels_its_request(chat_app):
    engine = chat_app.backend
    # a slower model: the answer cannot end by itself before the stream is closed
    hook = engine.model.register_forward_pre_hook(lambda module, args: time.sleep(0.05))
    try:
        before = engine.stats()
        stream = chat_app.respond("hi", [], "", temperature=0, top_p=1, max_tokens=40)
        assert next(stream) == "h"
        stream.close()  # what Gradio does when Stop is pressed
        end = time.monotonic() + 5
        while engine.stats().finished.get("cancelled", 0) == before.finished.get("cancelled", 0):
            assert time.monotonic() < end, "the request was not cancelled"
            time.sleep(0.01)
        after = engine.stats()
        assert after.active == 0 and after.tokens - before.tokens < len("hello there")
    finally:
        hook.remove()


def test_bad_input_is_a_gradio_error(chat_app, app_module):
    import gradio as gr

    with pytest.raises(gr.Error, match="Type a message"):
        list(chat_app.respond("  ", [], "", 0, 1, 10))
    with pytest.raises(gr.Error, match="more than the"):
        list(chat_app.respond("hello " * 20, [], "", 0, 1, 10))
    with pytest.raises(gr.Error, match="temperature"):
        list(chat_app.respond("hi", [], "", -1, 1, 10))


def test_a_model_without_a_chat_template_continues_text(app_module, run, tmp_path):
    from tinygpt.infer.engine import Engine
    from tinygpt.infer.loader import load_run
    from tinygpt.serve.backend import ServedModel

    loaded = load_run(run)
    with Engine(loaded.model, loaded.tokenizer, max_batch=2) as engine:
        app = app_module.ChatApp(ServedModel(engine, "plain"))
        assert "no chat template" in app.describe()
        answer = list(app.respond("hi", [{"role": "user", "content": "x"}], "", 0, 1, 7))[-1]
        alone = engine.submit(loaded.tokenizer.encode("hi"), max_tokens=7, temperature=0)
        assert answer == alone.result(timeout=10).text
        import gradio as gr

        with pytest.raises(gr.Error, match="context is 64"):
            list(app.respond("a" * CONTEXT, [], "", 0, 1, 7))


def test_the_app_launches_on_loopback(chat_app, app_module):
    port = free_port()
    demo = app_module.launch(chat_app, port=port, block=False)
    try:
        page = httpx.get(f"http://127.0.0.1:{port}/", timeout=30)
        assert page.status_code == 200 and "gradio" in page.text.lower()
        config = httpx.get(f"http://127.0.0.1:{port}/config", timeout=30).json()
        assert config["title"] == "chatty"
        assert demo.share is False or demo.share is None
        assert demo.share_url is None
    finally:
        demo.close()


def test_a_model_folder_that_does_not_exist(tmp_path):
    env = {**os.environ, "TINYGPT_MODEL": str(tmp_path / "missing")}
    out = subprocess.run(
        [sys.executable, str(ROOT / "app.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("app.py: error: "), out.stderr
    assert "missing" in lines[0] and "TINYGPT_MODEL" in lines[0]
