"""The decoding rules every generation path shares (`tinygpt.infer.sampler`): the sampler
against known answers (greedy, top-k, top-p, repetition penalty, the inverse CDF, the seed
rule, tiny temperatures), the end-of-context rule, and the cross-path test: one small run
and its ONNX export give the same text, seed for seed, from `tinygpt.load(RUN)` (what
`tinygpt sample RUN` runs), from the serving engine (what `tinygpt serve RUN` runs) and from
`tinygpt.load(ONNX_DIR)`, also past the context.
"""

from __future__ import annotations

import random
import warnings

import numpy as np
import pytest
import torch

import tinygpt
from tinygpt.core.config import DataConfig, RunConfig
from tinygpt.core.model import GPT, GPTConfig
from tinygpt.data.tokenizer import train_tokenizer
from tinygpt.infer.engine import Engine
from tinygpt.infer.loader import save_model_run
from tinygpt.infer.sampler import (
    apply_repetition_penalty,
    row_generators,
    sample_rows,
    sample_token,
    token_weights,
    window_start,
)

PROBS = [0.5, 0.3, 0.15, 0.05]


class Draw:
    """A stand-in generator whose uniform draw is known."""

    def __init__(self, u: float) -> None:
        self.u = u

    def random(self) -> float:
        return self.u


def counts(logits, **settings) -> list[int]:
    """How 100 evenly spread draws (mid-points: none on a boundary) fall on the tokens."""
    picks = [sample_token(logits, rng=Draw((i + 0.5) / 100), **settings) for i in range(100)]
    return np.bincount(picks, minlength=len(logits)).tolist()


# ------------------------------------------------------------------------ known answers


def test_inverse_cdf_splits_the_draws_as_the_probabilities():
    logits = np.log(np.array(PROBS, dtype=np.float32))
    assert counts(logits) == [50, 30, 15, 5]
    assert counts(logits, top_k=3) == [53, 31, 16, 0]  # 0.5 / 0.95, 0.3 / 0.95, ...
    assert counts(logits, top_p=0.9) == [53, 31, 16, 0]
    # top-p after top-k: of 0.5 / 0.8 and 0.3 / 0.8, the first reaches 0.55 alone (without
    # top-k the second would stay: 0.5 is short of 0.55)
    assert counts(logits, top_k=2, top_p=0.55) == [100, 0, 0, 0]
    flat = counts(logits, temperature=1e6)  # a flat distribution
    assert all(24 <= c <= 26 for c in flat)
    # vocabulary order, not probability order: the draw walks the ids upwards
    shuffled = np.log(np.array([0.15, 0.5, 0.05, 0.3]))
    picks = [sample_token(shuffled, rng=Draw(u)) for u in (0.1, 0.2, 0.64, 0.66, 0.71)]
    assert picks == [0, 1, 1, 2, 3]  # running sums 0.15, 0.65, 0.7, 1


def test_greedy_is_the_argmax_and_draws_nothing():
    logits = np.array([0.0, 5.0, 5.0, -1.0], dtype=np.float32)

    class NoDraw:
        def random(self):
            raise AssertionError("greedy decoding drew a number")

    assert sample_token(logits, temperature=0, rng=NoDraw()) == 1  # the first of a tie
    assert sample_token(logits, [1], temperature=0, repetition_penalty=2.0) == 2
    rows = np.stack([logits, logits[::-1].copy()])
    assert sample_rows(rows, [(), ()], [NoDraw(), NoDraw()], temperature=0) == [1, 1]


def test_top_k_keeps_ties_at_the_kth():
    w = token_weights(np.array([1.0, 4.0, 3.0, 2.0]), temperature=1.0, top_k=2)
    assert (w > 0).tolist() == [False, True, True, False]
    w = token_weights(np.array([0.0, 5.0, 5.0, 5.0]), temperature=1.0, top_k=2)
    assert (w > 0).tolist() == [False, True, True, True]
    assert (token_weights(np.zeros(3), temperature=1.0, top_k=9) > 0).all()


def test_top_p_known_answers():
    logits = np.log(PROBS)

    def keep(p, x=logits):
        return (token_weights(x, temperature=1.0, top_p=p) > 0).tolist()

    assert keep(0.5) == [True, False, False, False]
    assert keep(0.6) == [True, True, False, False]
    assert keep(0.79) == [True, True, False, False]  # 0.5 + 0.3 reaches 0.79
    assert keep(0.81) == [True, True, True, False]
    assert keep(1.0) == [True, True, True, True]
    assert keep(0.01) == [True, False, False, False]  # the most likely always stays
    assert keep(0.6, np.log([0.15, 0.5, 0.05, 0.3])) == [False, True, False, True]
    # after top-k, the nucleus is taken of what is left (0.5/0.8 = 0.625 reaches 0.6)
    w = token_weights(logits, temperature=1.0, top_k=2, top_p=0.6)
    assert (w > 0).tolist() == [True, False, False, False]


def test_repetition_penalty_known_answer():
    logits = np.array([2.0, -1.0, 3.0, 0.5], dtype=np.float32)
    out = apply_repetition_penalty(logits, [0, 1, 1], 2.0)  # duplicates penalised once
    assert out.tolist() == [1.0, -2.0, 3.0, 0.5] and out.dtype == np.float32
    assert logits.tolist() == [2.0, -1.0, 3.0, 0.5]  # the input is left alone
    assert apply_repetition_penalty(logits, [0, 1], 1.0) is logits
    assert apply_repetition_penalty(logits, [], 2.0) is logits
    # greedy sees the penalty: token 2 (3.0 -> 1.5) loses to token 0 (2.0) once seen
    assert sample_token(logits, [2], temperature=0, repetition_penalty=2.0) == 0


@pytest.mark.parametrize("temperature", [1e-3, 1e-8, 1e-30, 1e-39, 1e-300, 5e-324])
def test_tiny_temperatures_stay_finite_and_pick_the_best(temperature):
    """Any temperature the settings check lets through (down to the smallest float) is
    computed, without a warning, and picks the best token: the same on every path."""
    logits = np.array([1.0, 3.0, 2.9, -50.0], dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        w = token_weights(logits, temperature=temperature, top_p=0.9)
        assert np.isfinite(w).all() and w.tolist() == [0.0, 1.0, 0.0, 0.0]
        rng = np.random.default_rng(0)
        assert {sample_token(logits, temperature=temperature, rng=rng) for _ in range(20)} == {1}
        picked = sample_rows(
            logits[None].repeat(3, 0), [()] * 3, row_generators(0, 3), temperature=temperature
        )
        assert picked == [1, 1, 1]


def test_the_seed_rule():
    # row r of a request draws from child r of SeedSequence(seed), whatever the batch size
    first = [round(float(g.random()), 6) for g in row_generators(1234, 3)]
    assert first == [0.529346, 0.713787, 0.077347]
    alone = row_generators(1234, 1)[0]
    assert round(float(alone.random()), 6) == first[0]
    # one draw per sampled token: the tokens of a seed follow its draws in order
    logits = np.log(PROBS)
    rng = row_generators(1234, 1)[0]
    tokens = [sample_token(logits, rng=rng) for _ in range(3)]
    draws = row_generators(1234, 1)[0].random(3)  # 0.529, 0.233, 0.761
    assert tokens == [1, 0, 1] == [int(np.searchsorted(np.cumsum(PROBS), u)) for u in draws]
    # no seed: fresh entropy
    assert row_generators(None, 1)[0].random() != row_generators(None, 1)[0].random()


def test_the_end_of_context_rule():
    # the window stays while the tokens fit, then keeps the last block_size tokens
    assert [window_start(0, n, 8) for n in (1, 8, 9, 12)] == [0, 0, 1, 4]
    assert window_start(4, 12, 8) == 4 and window_start(4, 13, 8) == 5
    assert window_start(3, 5, 8) == 3  # a left-padded row starts at its first real column


# ------------------------------------------------------------------------- across paths

TEXT_WORDS = ["to", "be", "or", "not", "that", "is", "the", "question", "whether", "tis", "nobler"]
BLOCK = 24
SETTINGS = [
    dict(temperature=0.8, top_k=20),
    dict(temperature=1.0, top_p=0.9),
    dict(temperature=1.2, repetition_penalty=1.3),
]
SEEDS = [0, 1, 2, 3, 4]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """(run folder, its ONNX export in fp32): a char model with a context of 24 trained for
    a moment on lines of words (about 2 s): sampled text that looks like its data, and an
    end-of-text it never saw, so samples run to max_new_tokens."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from tinygpt.export.onnx import export_run_onnx

    rng = random.Random(0)
    text = "\n".join(" ".join(rng.choice(TEXT_WORDS) for _ in range(6)) for _ in range(300))
    tok = train_tokenizer("char", [text])
    data = torch.tensor(tok.encode(text))
    torch.manual_seed(0)
    torch.set_num_threads(1)
    config = GPTConfig(
        vocab_size=tok.vocab_size, block_size=BLOCK, n_layer=2, n_head=2, n_embd=32, dropout=0.0
    )
    model = GPT(config)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(80):
        starts = torch.randint(0, len(data) - BLOCK - 1, (16,))
        x = torch.stack([data[s : s + BLOCK] for s in starts])
        y = torch.stack([data[s + 1 : s + BLOCK + 1] for s in starts])
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    root = tmp_path_factory.mktemp("sampling")
    run = root / "run"
    save_model_run(run, RunConfig(model=config, data=DataConfig(tokenizer="char")), model, tok)
    return run, export_run_onnx(run, root / "onnx")


def engine_texts(gen, requests: list[tuple[str, dict]]) -> list[str]:
    """The completions of `requests` (prompt, settings) from one engine, all submitted at
    once as a server would, each stopping where `generate` stops (its stop ids)."""
    with Engine(gen.model, gen.tokenizer, max_batch=8) as engine:
        reqs = [
            engine.submit(prompt, max_tokens=n, stop_token_ids=gen.stop_token_ids, **kw)
            for prompt, (n, kw) in requests
        ]
        return [r.result(timeout=60).text for r in reqs]


def test_one_seed_one_text_on_every_path(folders):
    run, onnx_dir = folders
    from_run, from_onnx = tinygpt.load(run), tinygpt.load(onnx_dir)
    assert type(from_onnx).__name__ == "OnnxGenerator"
    cases = [
        ("to be", 20, dict(seed=seed, **settings)) for settings in SETTINGS for seed in SEEDS
    ]  # 15 cases inside the context, then 3 that run past it (60 new tokens > 24)
    cases += [("the question", 60, dict(seed=seed, **SETTINGS[seed])) for seed in range(3)]
    texts = [from_run.generate(p, max_new_tokens=n, **kw) for p, n, kw in cases]
    assert texts == [from_onnx.generate(p, max_new_tokens=n, **kw) for p, n, kw in cases]
    assert texts == engine_texts(from_run, [(p, (n, kw)) for p, n, kw in cases])
    assert len(set(texts)) == len(texts)  # seeds and settings give different samples
    assert all(len(t) == 60 for t in texts[-3:])  # past the context: the window slid


@pytest.mark.parametrize(
    "settings",
    [
        {"temperature": 0.0},
        {"temperature": 0.8},
        {"temperature": 0.8, "top_k": 5},
        {"temperature": 1.0, "top_p": 0.9},
        {"temperature": 1.2, "top_k": 20, "top_p": 0.5, "repetition_penalty": 1.3},
        {"temperature": 1e-30},
    ],
)
def test_a_batch_samples_what_each_row_samples_alone(settings):
    """sample_rows (the engine's and the loops' batched path) picks, row by row, exactly the
    token sample_token picks: the same draws, the same arithmetic along each row."""
    gen = np.random.default_rng(0)
    for trial in range(20):
        B, V = 1 + trial % 7, [3, 65, 4096][trial % 3]
        logits = gen.normal(size=(B, V)).astype(np.float32)
        if trial % 4 == 0:
            logits[:, : V // 2] = logits[:, :1]  # ties, at the top and at the k-th
        seen = [gen.integers(0, V, size=gen.integers(0, 9)) for _ in range(B)]
        batch = sample_rows(logits, seen, row_generators(trial, B), **settings)
        rngs = row_generators(trial, B)
        alone = [sample_token(logits[b], seen[b], rng=rngs[b], **settings) for b in range(B)]
        assert batch == alone, (trial, settings)


def test_the_commands_print_the_same_sample_for_a_run_and_its_export(folders, capsys):
    """`tinygpt sample RUN` and `tinygpt sample ONNX_DIR` (fp32): one seed, one text, and it
    is what the Python API and the serving engine give."""
    from tinygpt.cli import main

    run, onnx_dir = folders
    flags = ["--prompt", "to be", "--max-new-tokens", "30", "--temperature", "0.9"]
    flags += ["--top-k", "12", "--seed", "7", "--num-samples", "1"]
    printed = []
    for folder in (run, onnx_dir):
        assert main(["sample", str(folder), *flags]) == 0
        printed.append(capsys.readouterr().out)
    assert printed[0] == printed[1]
    text = tinygpt.load(run).generate("to be", max_new_tokens=30, temperature=0.9, top_k=12, seed=7)
    assert text in printed[0]
    assert engine_texts(
        tinygpt.load(run), [("to be", (30, dict(temperature=0.9, top_k=12, seed=7)))]
    ) == [text]


def test_a_vocabulary_padded_past_the_tokenizer_samples_only_decodable_ids():
    """A model with more rows than its tokenizer has ids (padded, as imported models may be):
    every path samples among the tokenizer's ids only, so they still agree."""
    from tinygpt.infer.generate import TextGenerator

    tok = train_tokenizer("char", ["abc def ghi"])
    torch.manual_seed(3)
    model = GPT(
        GPTConfig(vocab_size=tok.vocab_size + 9, block_size=16, n_layer=1, n_head=2, n_embd=16)
    )
    with torch.no_grad():
        model.lm_head.weight[tok.vocab_size :] += 5.0  # the padded rows would win most draws
    gen = TextGenerator(model.eval(), tok)
    ids = tok.encode("abc")
    steps = gen.token_steps(
        [ids], max_new_tokens=40, temperature=1.0, top_k=None, top_p=None,
        repetition_penalty=1.0, seed=5,
    )  # fmt: skip
    drawn = [row[0] for row in steps]
    assert drawn and max(drawn) < tok.vocab_size
    text = gen.generate("abc", max_new_tokens=40, seed=5)
    assert engine_texts(gen, [("abc", (40, dict(seed=5)))]) == [text]
