"""A tiny chat run for the serving tests: a char tokenizer with the default template's
special tokens and a 2-layer model trained for a moment (150 steps, about 2 s) to answer
three questions and end its turn. Greedy decoding gives the answers in QA exactly."""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any

import torch

from tinygpt.core.config import DataConfig, RunConfig
from tinygpt.core.model import GPT, GPTConfig
from tinygpt.data.template import get_template, save_template
from tinygpt.data.tokenizer import train_tokenizer
from tinygpt.infer.loader import save_model_run

TEMPLATE = get_template("default")
QA = [("hi", "hello there"), ("bye", "see you soon"), ("who are you", "a tiny model")]
CHARS = string.ascii_letters + string.digits + " .,;:!?'\n"


def chat_tokenizer() -> Any:
    return train_tokenizer("char", [CHARS]).with_special_tokens(TEMPLATE.special_tokens)


def train_chat_run(run: Path, tok: Any, context: int = 64) -> Path:
    """Write a run folder at `run` whose model answers QA (greedy) and ends its turn."""
    # One thread, also when a module fixture calls this before the conftest's per-test
    # setting has run (tiny matmuls on two busy cores are slower with two threads).
    torch.set_num_threads(1)
    seqs = [
        TEMPLATE.encode(tok, [{"role": "user", "content": q}, {"role": "assistant", "content": a}])[
            0
        ]
        for q, a in QA
    ]
    T = max(map(len, seqs))
    x = torch.tensor([s[:-1] + [0] * (T - len(s)) for s in seqs])
    y = torch.tensor([s[1:] + [-1] * (T - len(s)) for s in seqs])  # -1: not scored
    torch.manual_seed(0)
    config = GPTConfig(
        vocab_size=tok.vocab_size, block_size=context, n_layer=2, n_head=2, n_embd=32, dropout=0.0
    )
    m = GPT(config)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    for _ in range(150):
        _, loss = m(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.2
    save_model_run(run, RunConfig(model=config, data=DataConfig(tokenizer="char")), m, tok)
    save_template(run, TEMPLATE)
    return run
