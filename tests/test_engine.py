"""The continuous-batching engine: answers under load equal answers alone, rows join and
leave, cancellation, time limits, the bounded queue, stop strings, seeds, logprobs, asyncio.

Most tests drive the engine by hand (`start=False`, `engine.step()`), so that which request
runs when is exact; the thread and asyncio tests use the real background thread.
"""

from __future__ import annotations

import asyncio
import string
import time

import pytest
import torch

from tinygpt.core.errors import TinyGPTError
from tinygpt.core.model import GPT, GPTConfig
from tinygpt.data.tokenizer import train_tokenizer
from tinygpt.infer.engine import (
    Engine,
    EngineError,
    PromptTooLong,
    QueueFull,
    SamplingParams,
)
from tinygpt.infer.generate import generate_ids

VARIANTS = {
    "gpt2": dict(),
    "llama-gqa": dict(pos="rope", norm="rmsnorm", mlp="swiglu", n_kv_head=2),
}
# Batch shape changes the last bits of a CPU matmul, so a row's logits under load differ from
# its logits alone by about 1e-6. Greedy tokens can differ only where the two best logits are
# closer than that: the tests check that their prompts keep every gap above 1e-4.
MIN_MARGIN = 1e-4


@pytest.fixture(scope="module")
def tok():
    # ASCII only: every token is one character, so texts and stop strings are easy to index.
    return train_tokenizer("char", [string.ascii_letters + string.digits + " .,;:!?'\n"])


def make_model(tok, seed: int = 0, **kw) -> GPT:
    torch.manual_seed(seed)
    base = dict(vocab_size=tok.vocab_size, block_size=64, n_layer=2, n_head=4, n_embd=32)
    return GPT(GPTConfig(**{**base, "init_std": 0.3, **kw})).eval()


def greedy_by_full_passes(model: GPT, ids: list[int], n: int) -> tuple[list[int], float]:
    """Greedy tokens from full forward passes (no cache, no batch) and the smallest gap
    between the two best logits on the way."""
    seq, margin = list(ids), float("inf")
    with torch.no_grad():
        for _ in range(n):
            logits = model(torch.tensor([seq]))[0][0, -1]
            top = logits.topk(2).values
            margin = min(margin, (top[0] - top[1]).item())
            seq.append(int(logits.argmax()))
    return seq[len(ids) :], margin


def run_all(engine: Engine, requests) -> None:
    while not all(r.done for r in requests):
        engine.step()


def alone(model, tok, prompt, **settings):
    engine = Engine(model, tok, max_batch=1, start=False)
    req = engine.submit(prompt, **settings)
    run_all(engine, [req])
    return req.result()


PROMPTS = ["To be, or not", "a", "Now is the winter of our", "Friends, Romans", "O", "What's in"]


@pytest.mark.parametrize("name", VARIANTS)
def test_greedy_under_load_equals_alone_while_requests_join(tok, name):
    model = make_model(tok, **VARIANTS[name])
    settings = dict(max_tokens=20, temperature=0.0, stop_token_ids=())
    expected = []
    for p in PROMPTS:
        tokens, margin = greedy_by_full_passes(model, tok.encode(p), 20)
        assert margin > MIN_MARGIN, p
        assert list(alone(model, tok, p, **settings).token_ids) == tokens
        expected.append(tokens)
    assert len({tuple(e) for e in expected}) >= 4  # varied answers

    engine = Engine(model, tok, max_batch=4, start=False)
    reqs = [engine.submit(p, **settings) for p in PROMPTS[:2]]
    for _ in range(3):
        engine.step()
    assert [r.completion_tokens for r in reqs] == [4, 4]
    reqs += [engine.submit(p, **settings) for p in PROMPTS[2:]]  # join mid-generation
    engine.step()
    stats = engine.stats()
    assert (stats.active, stats.queued) == (4, 2)  # two wait for a free row
    assert [r.completion_tokens for r in reqs] == [5, 5, 2, 2, 0, 0]
    run_all(engine, reqs)
    for req, tokens in zip(reqs, expected):
        assert list(req.result().token_ids) == tokens
    assert engine.stats().finished == {"length": 6}


def test_seeded_sampling_is_independent_of_the_batch(tok):
    model = make_model(tok)
    settings = dict(max_tokens=30, temperature=1.0, top_k=20, top_p=0.9, stop_token_ids=())
    solo = alone(model, tok, "Now is", seed=7, **settings)
    assert len(set(solo.token_ids)) > 10  # sampling, not a repeated token
    engine = Engine(model, tok, max_batch=8, start=False)
    others = [
        engine.submit(p, seed=i, **{**settings, "temperature": 0.5 + i / 4})
        for i, p in enumerate(PROMPTS)
    ]
    engine.step()
    engine.step()
    mine = engine.submit("Now is", seed=7, **settings)
    twin = engine.submit("Now is", seed=7, **settings)
    other_seed = engine.submit("Now is", seed=8, **settings)
    run_all(engine, [*others, mine, twin, other_seed])
    assert mine.result().token_ids == solo.token_ids == twin.result().token_ids
    assert other_seed.result().token_ids != solo.token_ids


def test_stop_string_spanning_tokens_while_streaming(tok):
    model = make_model(tok)
    whole = alone(model, tok, "Friends", max_tokens=40, temperature=0.0, stop_token_ids=())
    full = whole.text
    stop = full[6:9]  # three characters: three tokens
    cut = full[: full.find(stop)]
    engine = Engine(model, tok, max_batch=2, start=False)
    other = engine.submit("a", max_tokens=40, temperature=0.0, stop_token_ids=())
    req = engine.submit(
        "Friends", max_tokens=40, temperature=0.0, stop=["zzzz", stop], stop_token_ids=()
    )
    run_all(engine, [req])
    events = list(req)
    assert "".join(e.text for e in events) == cut
    assert [e.finish_reason for e in events][-1] == "stop"
    assert sum(e.finish_reason is not None for e in events) == 1
    # Every token generated counts, the ones that completed the stop string included.
    n = next(k for k in range(41) if stop in tok.decode(list(whole.token_ids[:k])))
    assert events[-1].usage.completion_tokens == n
    assert not other.done  # the other row goes on


def test_end_of_text_and_other_stop_ids(tok):
    model = make_model(tok)
    tokens = alone(model, tok, "What", max_tokens=10, temperature=0.0, stop_token_ids=()).token_ids
    end = tokens[4]
    first = tokens.index(end)
    res = alone(model, tok, "What", max_tokens=10, temperature=0.0, stop_token_ids=[end])
    assert res.finish_reason == "stop"
    assert res.token_ids == tokens[: first + 1]
    assert res.text == tok.decode(tokens[:first])  # the stop id is not text
    assert res.usage.completion_tokens == first + 1
    # By default the tokenizer's end-of-text stops a request.
    engine = Engine(model, tok, start=False)
    assert engine._new_row(engine.submit("a")).stop_ids == {tok.eot_id}


@pytest.mark.parametrize("chunk", [None, 5])
def test_context_limits(tok, chunk):
    """A prompt must leave room for one token; a completion runs past the context, its
    window sliding as in `tinygpt.infer.generate` (the same greedy tokens), also for a row
    that slides while others in the batch do not."""
    model = make_model(tok)  # context 64
    ids = tok.encode("ab" * 40)
    engine = Engine(model, tok, max_batch=3, prefill_chunk=chunk, start=False)
    settings = dict(max_tokens=10, temperature=0.0, stop_token_ids=())
    reqs = [engine.submit(ids[:n], **settings) for n in (61, 63, 20)]
    run_all(engine, reqs)
    for req, n in zip(reqs, (61, 63, 20)):
        res = req.result()
        assert res.finish_reason == "length" and res.usage == type(res.usage)(n, 10)
        expected = generate_ids(model, ids[:n], max_new_tokens=10, temperature=0.0)[0]
        assert list(res.token_ids) == expected
        assert (
            expected
            == generate_ids(model, ids[:n], max_new_tokens=10, temperature=0.0, use_cache=False)[0]
        )
    for n in (64, 80):
        with pytest.raises(
            PromptTooLong, match=f"prompt is {n} tokens long, but the model's context is 64"
        ):
            engine.submit(ids[:n])
    res = alone(model, tok, "a", max_tokens=5, temperature=0.0, stop_token_ids=())
    assert (res.finish_reason, res.usage) == ("length", type(res.usage)(1, 5))
    # sampling past the context, with a repetition penalty: the text of the generate path
    kw = dict(temperature=1.0, top_p=0.9, repetition_penalty=1.3, seed=5)
    res = alone(model, tok, ids[:60], max_tokens=30, stop_token_ids=(), **kw)
    assert list(res.token_ids) == generate_ids(model, ids[:60], max_new_tokens=30, **kw)[0]


def test_cancel_frees_the_row_for_the_next_request(tok):
    model = make_model(tok)
    engine = Engine(model, tok, max_batch=1, start=False)
    a = engine.submit("To be", max_tokens=50, temperature=0.0, stop_token_ids=())
    b = engine.submit("Now", max_tokens=5, temperature=0.0, stop_token_ids=())
    for _ in range(3):
        engine.step()
    # A step lets waiting requests join (prefill: their first token), then decodes once.
    assert (a.completion_tokens, b.completion_tokens, engine.stats().queued) == (4, 0, 1)
    a.cancel()
    engine.step()  # a leaves, b joins its row
    assert a.finish_reason == "cancelled" and a.completion_tokens == 4
    assert b.completion_tokens == 2 and engine.stats().active == 1
    run_all(engine, [b])
    assert a.completion_tokens == 4  # its generation stopped
    assert (
        b.result().token_ids
        == alone(model, tok, "Now", max_tokens=5, temperature=0.0, stop_token_ids=()).token_ids
    )
    assert engine.stats().finished == {"cancelled": 1, "length": 1}


def test_leaving_an_async_stream_cancels_the_request(tok):
    model = make_model(tok, block_size=256)

    async def main(engine):
        req = engine.submit("To be", max_tokens=250, temperature=0.0, stop_token_ids=())
        stream = req.__aiter__()
        for _ in range(3):
            await stream.__anext__()
        await stream.aclose()  # what a server does when its client goes away
        waiting = engine.submit("Now", max_tokens=250, temperature=0.0, stop_token_ids=())
        task = asyncio.ensure_future(waiting.aresult())
        await asyncio.sleep(0.01)
        task.cancel()  # a cancelled handler task cancels its request too
        with pytest.raises(asyncio.CancelledError):
            await task
        return req, waiting

    with Engine(model, tok, max_batch=2) as engine:
        req, waiting = asyncio.run(main(engine))
        assert req.wait(5) and waiting.wait(5)
    assert req.finish_reason == waiting.finish_reason == "cancelled"
    assert req.completion_tokens < 250 and waiting.completion_tokens < 250


def test_queue_full(tok):
    engine = Engine(make_model(tok), tok, max_batch=1, max_queue=2, start=False)
    exact = dict(max_tokens=5, temperature=0.0, stop_token_ids=())  # ends after 5 tokens
    for prompt in "abc":  # the first will take the free row, two wait
        engine.submit(prompt, **exact)
    with pytest.raises(
        QueueFull, match=r"1 rows generate and 2 requests wait \(at most 2\)"
    ) as err:
        engine.submit("d", **exact)
    assert err.value.retry_after >= 1
    engine.step()  # one request takes the row, two wait: still full
    with pytest.raises(QueueFull):
        engine.submit("d", **exact)
    while engine.stats().active:  # the first finishes: one place frees
        engine.step()
    engine.submit("d", **exact)


def test_time_limit(tok):
    engine = Engine(make_model(tok), tok, max_batch=1, start=False, timeout=None)
    # 0.3 s: ample for two steps of a tiny model even on a busy machine.
    running = engine.submit("a", max_tokens=50, timeout=0.3, stop_token_ids=())
    waiting = engine.submit("b", max_tokens=50, timeout=0.3)
    engine.step()
    engine.step()
    time.sleep(0.35)
    engine.step()
    assert running.finish_reason == waiting.finish_reason == "timeout"
    assert running.completion_tokens == 3 and waiting.completion_tokens == 0
    assert running.result().usage.completion_tokens == 3


def test_background_thread_and_asyncio_never_block_the_loop(tok):
    model = make_model(tok, block_size=128)
    settings = dict(max_tokens=40, temperature=0.0, stop_token_ids=())
    expected = [alone(model, tok, p, **settings).text for p in PROMPTS]

    async def main(engine):
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0)
                ticks += 1

        async def stream(prompt):
            return "".join([e.text async for e in engine.submit(prompt, **settings)])

        tick = asyncio.ensure_future(ticker())
        texts = await asyncio.gather(*(stream(p) for p in PROMPTS))
        completions = await asyncio.gather(
            *(engine.submit(p, **settings).aresult() for p in PROMPTS)
        )
        tick.cancel()
        return texts, [c.text for c in completions], ticks

    with Engine(model, tok, max_batch=4) as engine:
        texts, whole, ticks = asyncio.run(main(engine))
        sync = [engine.submit(p, **settings).result(10).text for p in PROMPTS[:2]]
        with pytest.raises(TinyGPTError, match="runs its own thread"):
            engine.step()
    assert texts == whole == expected
    assert sync == expected[:2]
    assert ticks > 100  # the event loop kept running while the engine generated


def test_logprobs_are_the_models(tok):
    model = make_model(tok)
    ids = tok.encode("To be")
    res = alone(
        model,
        tok,
        ids,
        max_tokens=6,
        temperature=0.0,
        logprobs=True,
        top_logprobs=3,
        stop_token_ids=(),
    )
    seq = list(ids)
    for token in res.logprobs:
        with torch.no_grad():
            logp = model(torch.tensor([seq]))[0][0, -1].log_softmax(-1)
        assert token.logprob == pytest.approx(logp[token.id].item(), abs=1e-4)
        assert [t.id for t in token.top] == logp.topk(3).indices.tolist()
        assert token.top[0].id == token.id  # greedy: the chosen token is the most likely
        assert token.text == tok.decode([token.id]) and token.bytes == token.text.encode()
        seq.append(token.id)
    assert len(res.logprobs) == 6
    assert alone(model, tok, ids, max_tokens=2).logprobs == ()


def test_padded_vocabulary_is_never_sampled(tok):
    model = make_model(tok, vocab_size=tok.vocab_size + 40, init_std=1.0)
    res = alone(model, tok, "a", max_tokens=60, temperature=2.0, seed=0, stop_token_ids=())
    assert max(res.token_ids) < tok.vocab_size


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (dict(max_tokens=0), "max_tokens must be at least 1"),
        (dict(max_tokens=2.5), "max_tokens must be an integer"),
        (dict(temperature=-1), "temperature = -1 must not be negative"),
        (dict(top_p=0.0), r"top_p = 0.0 must be in \(0, 1\]"),
        (dict(top_k=0), "top_k = 0 must be at least 1"),
        (dict(repetition_penalty=0), "repetition_penalty = 0 must be a positive number"),
        (dict(top_logprobs=21), r"top_logprobs must be in \[0, 20\]"),
        (dict(timeout=0), "timeout must be positive"),
    ],
)
def test_bad_settings(tok, settings, message):
    with pytest.raises(TinyGPTError, match=message):
        SamplingParams(**settings)


def test_bad_requests_and_a_closed_engine(tok):
    engine = Engine(make_model(tok), tok, start=False)
    with pytest.raises(TinyGPTError, match="token id 999 is outside the vocabulary"):
        engine.submit([1, 999])
    with pytest.raises(TinyGPTError, match="holds no tokens"):
        engine.submit([])
    with pytest.raises(TinyGPTError, match="either params or sampling keyword"):
        engine.submit("a", SamplingParams(), max_tokens=3)
    queued = engine.submit("a")
    engine.close()
    assert queued.finish_reason == "cancelled"
    with pytest.raises(TinyGPTError, match="the engine is closed"):
        engine.submit("a")
    with pytest.raises(TinyGPTError, match="max_batch must be at least 1"):
        Engine(make_model(tok), tok, max_batch=0, start=False)


def test_a_failing_step_ends_its_requests_and_the_engine_goes_on(tok, monkeypatch):
    model = make_model(tok)
    engine = Engine(model, tok, max_batch=2, start=False)
    a = engine.submit("a", max_tokens=10, stop_token_ids=())
    engine.step()
    real = GPT.forward

    def broken(self, idx, *args, **kw):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(GPT, "forward", broken)
    engine.step()
    assert a.finish_reason == "error" and "out of memory" in a.error
    with pytest.raises(EngineError, match="generation failed: RuntimeError: out of memory"):
        a.result()
    assert list(a)[-1].error == "RuntimeError: out of memory"
    monkeypatch.setattr(GPT, "forward", real)
    b = engine.submit("b", max_tokens=3)
    run_all(engine, [b])
    assert b.result().usage.completion_tokens >= 1
