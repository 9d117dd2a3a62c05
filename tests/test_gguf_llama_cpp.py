"""llama.cpp itself runs our GGUF files: one small model of each architecture the exporter
writes (random weights, so that every tensor matters) gives llama.cpp's tokenizer our ids,
its forward pass our logits (f32, within 1e-3; for gpt2 once our GELU reads ggml's fp16
table as llama.cpp's does) and its greedy continuation our tokens.

Slow, and needs `llama-cpp-python`, which builds llama.cpp from source (about 11 minutes on
two cores; `CMAKE_ARGS="-DGGML_NATIVE=OFF" pip install llama-cpp-python` for a portable
build). The comparisons are those of `benchmarks/bench_gguf.py`, which also measures
trained models and speed."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from tinygpt.cli import main
from tinygpt.core.config import RunConfig
from tinygpt.core.model import GPT, GPTConfig
from tinygpt.data.tokenizer import train_tokenizer
from tinygpt.infer.loader import save_model_run

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True, scope="module")
def llama_cpp():
    """llama-cpp-python, imported only when these slow tests run (the default run deselects
    them without importing anything)."""
    return pytest.importorskip("llama_cpp", reason="build it: see this module's docstring")


BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
if str(BENCHMARKS) not in sys.path:
    sys.path.append(str(BENCHMARKS))  # bench_gguf imports its neighbour `common`
_spec = importlib.util.spec_from_file_location("bench_gguf", BENCHMARKS / "bench_gguf.py")
bench = importlib.util.module_from_spec(_spec)
sys.modules["bench_gguf"] = bench  # dataclasses look their module up there
_spec.loader.exec_module(bench)

TEXT = [
    "To be, or not to be, that is the question:\n"
    "Whether 'tis nobler in the mind to suffer\n"
    "The slings and arrows of outrageous fortune,\r\n"
    "İstanbul'da ışık; Şişli şeker ağaç Iğdır — naïve café €5 😀 1234567\n"
]
ROPE = dict(norm="rmsnorm", mlp="swiglu", pos="rope", bias=False)


def _randomize(model: torch.nn.Module, seed: int) -> None:
    """Weights of a trained model's scale: gains near one, small biases and matrices."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * noise)
            elif name.endswith("bias"):
                p.copy_(0.1 * noise)
            else:
                p.copy_(0.1 * noise)


CASES = {
    "qwen3-char": (dict(vocab_size=128, qk_norm=True, **ROPE), "char"),
    "llama-bpe": (
        dict(vocab_size=310, n_kv_head=2, tie_weights=False, rope_theta=500.0, **ROPE)
        | dict(bias=True),
        "gpt4",
    ),
    "gpt2-bpe": (dict(vocab_size=300, bias=False), "gpt2"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_llama_cpp_agrees_with_us(name, tmp_path, capsys):
    fields, kind = CASES[name]
    if kind == "char":
        tokenizer = train_tokenizer("char", TEXT)
    else:
        tokenizer = train_tokenizer("bpe", TEXT * 3, vocab_size=300, pattern=kind)
    config = GPTConfig(block_size=64, n_layer=2, n_head=4, n_embd=64, **fields)
    model = GPT(config).eval()
    _randomize(model, seed=len(name))
    run = tmp_path / "run"
    save_model_run(run, RunConfig(model=config), model, tokenizer)
    path = tmp_path / f"{name}.gguf"
    assert main(["export", str(run), "--format", "gguf", "--out", str(path)]) == 0
    capsys.readouterr()

    llm = bench.load_llama(path, config.block_size, threads=1)
    report = bench.Report()
    if kind == "char":
        known = set(tokenizer.chars)  # a character vocabulary encodes only its characters
        texts = ["".join(c for c in t if c in known) for t in bench.VARIED] + TEXT
    else:
        texts = bench.VARIED + TEXT
    bench.check_tokenization(tokenizer, llm, texts, report)
    ids = tokenizer.encode(TEXT[0])[: config.block_size]
    if name.startswith("gpt2"):
        # ggml's CPU GELU reads a table indexed by the input in fp16: a difference of about
        # 1e-3 that vanishes when our model does the same
        bench.check_logits(model, llm, ids, 1e-2, report)
        with bench.ggml_cpu_gelu():
            bench.check_logits(model, llm, ids, 1e-3, report, " (ggml's GELU table)")
    else:
        bench.check_logits(model, llm, ids, 1e-3, report)
    bench.check_greedy(model, llm, ids[:8], 24, report)
    print("\n".join(report.lines))
    assert report.ok, "\n".join(report.lines)


def test_llama_cpp_reads_a_chat_runs_template_and_stops_at_end_of_turn(tmp_path, capsys, llama_cpp):
    from tinygpt.data.template import get_template, save_template

    template = get_template("chatml")
    tokenizer = train_tokenizer("bpe", TEXT * 3, vocab_size=300)
    tokenizer = tokenizer.with_special_tokens(template.special_tokens)
    config = GPTConfig(
        vocab_size=tokenizer.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=32,
        qk_norm=True, **ROPE,
    )  # fmt: skip
    run = tmp_path / "run"
    save_model_run(run, RunConfig(model=config), GPT(config), tokenizer)
    save_template(run, template)
    path = tmp_path / "chat.gguf"
    assert main(["export", str(run), "--format", "gguf", "--out", str(path)]) == 0
    capsys.readouterr()
    llm = bench.load_llama(path, config.block_size, threads=1)
    assert llm.metadata["tokenizer.chat_template"] == template.jinja()
    vocab = llm._model.vocab
    end = tokenizer.special_tokens[template.end_of_turn]
    assert llama_cpp.llama_vocab_is_eog(vocab, end) and llama_cpp.llama_vocab_is_eog(
        vocab, tokenizer.eot_id
    )
    assert llama_cpp.llama_vocab_bos(vocab) == tokenizer.eot_id
    assert not llama_cpp.llama_vocab_get_add_bos(vocab)
    text = template.render([{"role": "user", "content": "hello"}], add_generation_prompt=True)
    ids = llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
    assert ids == tokenizer.encode(text, allowed_special=True)
