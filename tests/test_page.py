"""The chat page of `tinygpt serve`, driven in a real headless Chromium (marker `browser`).

Debian's `chromium` and `chromium-driver` (/usr/bin/chromium, /usr/bin/chromedriver) under
Selenium, both paths given so that Selenium Manager never looks for (or downloads) a driver.
The server is the real one (`tinygpt.serve.create_app` over a continuous-batching
`tinygpt.infer.engine.Engine`) on a free loopback port. Its model is a tiny GPT whose logits are
overridden after its real forward pass so that it always writes the same text, cycling
through SCRIPT by position: an answer that holds an HTML image tag with an `onerror` handler,
which the page must show as characters. A forward pass is slowed down a little so that
answers stream over many steps.

The page is checked as a person uses it: the model's name, size and context; a message sent
and its answer arriving in more than one step; markup typed by the user and produced by the
model shown as text, with no element created; Stop ends the generation and the server frees
its row; New chat forgets the conversation; a model without a chat template gets a completion
box; a server that went away gives a clear message. Screenshots are saved under
build/test-artifacts/ (or $TINYGPT_TEST_ARTIFACTS), and the folder is printed.
"""

from __future__ import annotations

import os
import string
import time
from pathlib import Path

import pytest
import torch

from tinygpt.core.model import GPT, GPTConfig
from tinygpt.data.template import get_template
from tinygpt.data.tokenizer import train_tokenizer
from tinygpt.infer.engine import Engine
from tinygpt.serve import Limits, create_app, start

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
    pytest.skip(
        "the browser test needs Debian's chromium and chromium-driver "
        "(apt-get install -y chromium chromium-driver)",
        allow_module_level=True,
    )
webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.chrome.options import Options  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

TEMPLATE = get_template("default")
NAME = "parrot"
CONTEXT = 512
XSS = "<img src=x onerror=\"document.title='pwned'\">"
SCRIPT = f"Hello! {XSS} stays text. "
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
    "--window-size=1000,760",
]
WAIT = 15  # seconds any one thing may take before the test fails


class ParrotGPT(GPT):
    """A real GPT forward pass whose next token is then forced: row b, holding lens[b]
    tokens, writes SCRIPT[lens[b] % len(SCRIPT)] (one character a token)."""

    delay = 0.01
    script: list[int] = []

    def forward(self, idx, targets=None, cache=None, **kw):
        if self.delay:
            time.sleep(self.delay)
        logits, loss = super().forward(idx, targets, cache=cache, **kw)
        if cache is not None and self.script:
            nxt = torch.tensor(self.script)[cache.lens % len(self.script)]  # (B,)
            forced = torch.full_like(logits[:, -1], float("-inf"))  # (B, V)
            forced[torch.arange(len(nxt)), nxt] = 0.0
            logits[:, -1] = forced
        return logits, loss


@pytest.fixture(scope="module")
def tok():
    chars = string.ascii_letters + string.digits + " .,;:!?'\"<>=()/-\n"
    return train_tokenizer("char", [chars]).with_special_tokens(TEMPLATE.special_tokens)


@pytest.fixture(scope="module")
def engine(tok):
    torch.manual_seed(0)
    config = GPTConfig(
        vocab_size=tok.vocab_size, block_size=CONTEXT, n_layer=2, n_head=2, n_embd=32
    )
    model = ParrotGPT(config).eval()
    model.script = tok.encode(SCRIPT)
    with Engine(model, tok, max_batch=4, max_queue=8) as e:
        yield e


@pytest.fixture(scope="module")
def server(engine):
    app = create_app(engine, name=NAME, template=TEMPLATE, limits=Limits(max_tokens_cap=600))
    with start(app) as running:
        yield running


@pytest.fixture(scope="module")
def artifacts(request) -> Path:
    root = Path(__file__).resolve().parents[1]
    folder = Path(os.environ.get("TINYGPT_TEST_ARTIFACTS", root / "build" / "test-artifacts"))
    folder.mkdir(parents=True, exist_ok=True)
    # printed at the end of the run (tests/conftest.py)
    request.config.tinygpt_artifacts = [folder]
    return folder


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager, were it asked: no network
    options = Options()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(WAIT)
    driver.set_script_timeout(WAIT)
    try:
        yield driver
    finally:
        driver.quit()


# ------------------------------------------------------------------------------ helpers


def wait_for(driver, condition, what: str, timeout: float = WAIT):
    return WebDriverWait(driver, timeout, poll_frequency=0.02).until(
        lambda d: condition(d), message=f"waited {timeout} s for {what}"
    )


def open_page(driver, url: str) -> None:
    driver.get(url + "/")
    wait_for(
        driver,
        lambda d: d.find_element(By.ID, "model-meta").text.endswith(("batch 4", "PyTorch")),
        "the model's description",
    )
    # Record the request bodies the page sends, and the length of the newest answer each
    # time it changes (to see text arrive in steps).
    driver.execute_script(
        """
        window.sent = [];
        const f = window.fetch;
        window.fetch = (url, options) => {
          if (options && options.body) window.sent.push(JSON.parse(options.body));
          return f(url, options);
        };
        window.lengths = [];
        new MutationObserver(() => {
          const texts = document.querySelectorAll('#log .msg:last-child .text');
          if (texts.length) window.lengths.push(texts[0].textContent.length);
        }).observe(document.getElementById('log'), {childList: true, subtree: true,
                                                     characterData: true});
        """
    )


def set_field(driver, field_id: str, value: str) -> None:
    if driver.find_element(By.ID, "settings").get_attribute("hidden") is not None:
        driver.find_element(By.ID, "settings-toggle").click()
    box = driver.find_element(By.ID, field_id)
    box.clear()
    box.send_keys(value)


def type_and_send(driver, text: str) -> None:
    box = driver.find_element(By.ID, "input")
    box.clear()
    # send_keys types characters one by one; setting the value keeps a long message quick
    driver.execute_script("arguments[0].value = arguments[1];", box, text)
    driver.find_element(By.ID, "send").click()


def status(driver) -> str:
    return driver.find_element(By.ID, "status").text


def messages(driver) -> list[tuple[str, str]]:
    return [
        (m.get_attribute("class").split()[1], m.find_element(By.CLASS_NAME, "text").text)
        for m in driver.find_elements(By.CSS_SELECTOR, "#log .msg")
    ]


def settled(engine, timeout: float = 5.0):
    end = time.monotonic() + timeout
    while engine.stats().active or engine.stats().queued:
        assert time.monotonic() < end, "the engine is still busy"
        time.sleep(0.01)
    return engine.stats()


# ------------------------------------------------------------------------------ the tests


def test_chat_streams_markup_stays_text_stop_and_new_chat(browser, server, engine, artifacts):
    open_page(browser, server.url)
    assert browser.find_element(By.ID, "model-name").text == NAME
    meta = browser.find_element(By.ID, "model-meta").text
    params = engine.model.num_params()
    assert f"context {CONTEXT} tokens" in meta and "chat template default" in meta
    assert f"{params / 1e3:.1f} K parameters" in meta, meta
    assert browser.title == f"{NAME} · tinygpt"

    # 1. A message with markup in it; the answer (markup too) arrives in steps.
    set_field(browser, "temperature", "0")
    set_field(browser, "max-tokens", str(2 * len(SCRIPT)))
    set_field(browser, "system", "Answer briefly.")
    typed = f"Is this bold? <b>no</b> {XSS}"
    type_and_send(browser, typed)
    wait_for(browser, lambda d: status(d) == "Ready.", "the answer to end")
    shown = messages(browser)
    assert [kind for kind, _ in shown] == ["user", "assistant"]
    assert shown[0][1] == typed  # the very characters typed, markup included
    answer = shown[1][1]
    assert len(answer) == 2 * len(SCRIPT) and XSS in answer
    lengths = browser.execute_script("return window.lengths")
    partial = {n for n in lengths if 0 < n < len(answer)}
    assert len(partial) >= 3, lengths  # text arrived in several steps, not at once
    # no element was made from the text, and no handler ran
    assert (
        browser.execute_script("return document.querySelectorAll('#log img, #log b').length") == 0
    )
    assert browser.title != "pwned"
    body = browser.execute_script("return window.sent")[-1]
    assert body["messages"] == [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": typed},
    ]
    assert body["temperature"] == 0 and body["stream"] is True and body["fit_context"] is True
    note = browser.find_element(By.CSS_SELECTOR, "#log .msg.assistant .meta").text
    assert note.startswith(f"{2 * len(SCRIPT)} tokens"), note
    browser.save_screenshot(str(artifacts / "chat-page.png"))

    # 2. Stop: the generation ends on the server and its row is freed.
    before = settled(engine)
    set_field(browser, "max-tokens", "500")
    type_and_send(browser, "Tell me more.")
    wait_for(browser, lambda d: len(messages(d)[-1][1]) >= 10, "text of the long answer")
    browser.find_element(By.ID, "stop").click()
    wait_for(browser, lambda d: status(d) == "Stopped.", "the page to say it stopped")
    end = time.monotonic() + 5
    while engine.stats().finished.get("cancelled", 0) == before.finished.get("cancelled", 0):
        assert time.monotonic() < end, "the server did not cancel the stopped request"
        time.sleep(0.02)
    after = engine.stats()
    assert after.active == 0
    assert after.tokens - before.tokens < 500
    time.sleep(0.2)
    assert engine.stats().tokens == after.tokens  # its generation stopped
    assert browser.find_elements(By.CSS_SELECTOR, "#log .msg.assistant .meta")[-1].text == "stopped"
    stopped_text = messages(browser)[-1][1]
    assert 10 <= len(stopped_text) < 500
    # the next message carries the conversation so far, the stopped answer included
    set_field(browser, "max-tokens", "5")
    type_and_send(browser, "And then?")
    wait_for(browser, lambda d: status(d) == "Ready.", "the third answer")
    sent = browser.execute_script("return window.sent")[-1]["messages"]
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert sent[4]["content"] == stopped_text
    browser.save_screenshot(str(artifacts / "chat-page-stopped.png"))

    # 3. New chat: the page and the conversation are empty; the next message goes alone.
    browser.find_element(By.ID, "new-chat").click()
    assert messages(browser) == []
    type_and_send(browser, "Hello again")
    wait_for(browser, lambda d: status(d) == "Ready.", "the answer in the new chat")
    sent = browser.execute_script("return window.sent")[-1]["messages"]
    assert sent == [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "Hello again"},
    ]
    assert [kind for kind, _ in messages(browser)] == ["user", "assistant"]


def test_a_model_without_a_chat_template_gets_a_completion_box(browser, engine, artifacts):
    app = create_app(engine, name="plain", template=None)
    with start(app) as running:
        open_page(browser, running.url)
        meta = browser.find_element(By.ID, "model-meta").text
        assert "no chat template: text completion" in meta
        assert browser.find_element(By.ID, "system").is_displayed() is False
        set_field(browser, "max-tokens", "12")
        type_and_send(browser, "<i>Once</i>")
        wait_for(browser, lambda d: status(d) == "Ready.", "the continuation")
        assert browser.execute_script("return window.sent")[-1]["prompt"] == "<i>Once</i>"
        shown = messages(browser)
        assert [kind for kind, _ in shown] == ["prompt", "model"]
        assert shown[0][1] == "<i>Once</i>" and len(shown[1][1]) == 12
        assert browser.execute_script("return document.querySelectorAll('#log i').length") == 0
        browser.save_screenshot(str(artifacts / "completion-page.png"))


def test_a_server_that_went_away_gives_a_clear_message(browser, engine, artifacts):
    app = create_app(engine, name=NAME, template=TEMPLATE)
    running = start(app)
    try:
        open_page(browser, running.url)
        # The server stops while it streams an answer: the page says so when the stream ends
        # early (the server cuts open streams 3 s into its shutdown).
        set_field(browser, "max-tokens", "500")
        type_and_send(browser, "A long answer, please.")
        wait_for(browser, lambda d: len(messages(d)[-1][1]) >= 5, "the answer to start")
    finally:
        running.stop()
    banner = wait_for(browser, gone_banner, "the message that the server is gone", timeout=10)
    assert banner.text.startswith("The connection ended before the answer did.")
    assert "server cannot be reached" in banner.text
    assert "not answered" in browser.find_elements(By.CSS_SELECTOR, "#log .meta")[-1].text
    # A message sent to the stopped server gets the message at once.
    started = time.monotonic()
    type_and_send(browser, "Are you there?")
    wait_for(browser, lambda d: len(messages(d)) == 4 and gone_banner(d), "the second message")
    banner = browser.find_element(By.ID, "banner")
    assert banner.text.startswith("The server cannot be reached")
    assert time.monotonic() - started < 5
    assert status(browser) == "Not connected."
    # the message waits in the box to be sent again; the buttons work again
    assert browser.find_element(By.ID, "input").get_attribute("value") == "Are you there?"
    assert browser.find_element(By.ID, "send").is_enabled()
    assert not browser.find_element(By.ID, "stop").is_enabled()
    browser.save_screenshot(str(artifacts / "server-gone.png"))


def gone_banner(driver):
    banner = driver.find_element(By.ID, "banner")
    return banner if banner.is_displayed() and "cannot be reached" in banner.text else False
