"""Parameter, FLOP and memory accounting, checked against the real module."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from tinygpt.cli import main
from tinygpt.core.errors import TinyGPTError
from tinygpt.core.info import (
    flops_per_token,
    kv_cache_bytes_per_token,
    memory_estimate,
    param_breakdown,
)
from tinygpt.core.model import GPT, GPTConfig

GPT2_124M = GPTConfig(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768)


CONFIGS = [
    dict(),
    dict(pos="rope", norm="rmsnorm", mlp="swiglu", bias=False, n_kv_head=2, tie_weights=False),
    dict(qk_norm=True, n_kv_head=1, mlp="gelu", mlp_hidden=50, bias=False),
    dict(norm="rmsnorm", pos="rope"),
]


def small(**kw) -> GPTConfig:
    return GPTConfig(**{**dict(vocab_size=97, block_size=16, n_layer=2, n_head=4, n_embd=32), **kw})


def test_gpt2_124m_known_answer():
    p = param_breakdown(GPT2_124M)
    assert p["total"] == 124_439_808
    assert p["non_embedding"] == 123_653_376
    assert p["position_embedding"] == 1024 * 768
    assert p["lm_head"] == 0  # tied: counted once, under the token embedding


@pytest.mark.parametrize("kw", CONFIGS)
def test_param_breakdown_matches_module(kw):
    config = small(**kw)
    model = GPT(config)
    p = param_breakdown(config)
    assert p["total"] == model.num_params()
    assert p["non_embedding"] == model.num_params(non_embedding=True)
    block = model.blocks[0]
    assert p["per_block"]["attention"] == sum(x.numel() for x in block.attn.parameters())
    assert p["per_block"]["mlp"] == sum(x.numel() for x in block.mlp.parameters())


def _count(model: GPT, idx: torch.Tensor, backward: bool) -> int:
    with FlopCounterMode(display=False) as counter:
        _, loss = model(idx, idx)
        if backward:
            loss.backward()
    return counter.get_total_flops()


@pytest.mark.parametrize("kw", CONFIGS)
def test_flops_match_flop_counter(kw):
    """FlopCounterMode counts matmuls as 2*m*n*k, as we do, so the forward count is exact.

    The manual kernel is used because the counter has no formula for the CPU flash
    attention kernel behind SDPA; with SDPA it sees everything but the attention scores.
    Backward is exactly 2x forward: every matmul needs the gradient of its input (the
    embedding output requires one too) and of its weight.
    """
    B, T = 2, 16
    idx = torch.randint(0, 97, (B, T))
    f = flops_per_token(small(**kw), context=T)
    manual = GPT(small(attn="manual", **kw))
    assert _count(manual, idx, backward=False) == B * T * f["forward"]
    assert _count(manual, idx, backward=True) == B * T * f["training"]
    sdpa = GPT(small(**kw))
    assert _count(sdpa, idx, backward=False) == B * T * (f["forward"] - f["attention_scores"])


def test_flops_conventions():
    f = flops_per_token(GPT2_124M)
    L, C, T = 12, 768, 1024
    # Matmul weights: non-embedding parameters (tied head included) less norms and biases.
    weights = param_breakdown(GPT2_124M)["non_embedding"] - L * (4 * C + 9 * C) - 2 * C
    # 2 FLOPs per weight, plus 4 * L * T * C for attention scores and values at full context.
    assert f["forward"] == 2 * weights + 4 * L * T * C
    assert f["training"] == 3 * f["forward"]
    assert f["forward_causal"] < f["forward"]
    assert flops_per_token(GPT2_124M, context=1)["attention_scores"] == 4 * 12 * 768


def test_memory_and_kv_cache():
    assert kv_cache_bytes_per_token(GPT2_124M) == 2 * 12 * 768 * 4
    assert kv_cache_bytes_per_token(GPT2_124M, "bfloat16") == 2 * 12 * 768 * 2
    gqa = small(n_kv_head=1)
    assert kv_cache_bytes_per_token(gqa, torch.float16) == 2 * 2 * 1 * 8 * 2
    m = memory_estimate(GPT2_124M, batch=4, context=512, dtype="bfloat16")
    assert m["weights"] == 124_439_808 * 2
    assert m["training_state"] == 124_439_808 * 16
    assert m["inference_kv_cache"] == 4 * 512 * 2 * 12 * 768 * 2
    assert (
        m["training_activations"]
        > memory_estimate(GPT2_124M, 2, 512, "bfloat16")["training_activations"]
    )
    with pytest.raises(TinyGPTError, match="longer than the model's block_size 1024"):
        memory_estimate(GPT2_124M, context=2048)
    with pytest.raises(TinyGPTError, match="unknown dtype 'fp8'"):
        memory_estimate(GPT2_124M, dtype="fp8")


def test_activation_estimate_is_the_right_size():
    """The estimate is within 2x of what autograd really keeps for backward."""
    config = small(vocab_size=256, block_size=64, n_embd=64)
    model = GPT(config)
    idx = torch.randint(0, 256, (4, 64))
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(idx, idx)
    params = {p.data_ptr() for p in model.parameters()}
    seen, total = set(), 0
    for t in saved:
        key = (t.data_ptr(), t.shape)
        if t.data_ptr() in params or key in seen:
            continue
        seen.add(key)
        total += t.numel() * t.element_size()
    estimate = memory_estimate(config, batch=4, context=64)["training_activations"]
    assert total / 2 < estimate < total * 2


def test_cli_info_preset_and_json(capsys):
    assert main(["info", "--preset", "gpt2-124m"]) == 0
    out = capsys.readouterr().out
    assert "124,439,808" in out and "123,653,376" in out
    assert main(["info", "--preset", "gpt2-124m", "--json", "--batch", "2", "--context", "64"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["params"]["total"] == 124_439_808
    assert data["memory"]["inference_kv_cache"] == 2 * 64 * 2 * 12 * 768 * 4


def test_cli_info_config_file_and_run(tmp_path, capsys):
    from tinygpt.core.config import load_config

    config = load_config(preset="gpt2-124m")
    path = tmp_path / "config.toml"
    path.write_text(config.to_toml())
    assert main(["info", "--config", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["params"]["total"] == 124_439_808
    assert main(["info", str(tmp_path)]) == 0
    assert "124,439,808" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "give exactly one of RUN, --preset P or --config FILE"),
        (["--preset", "gpt2-124m", "--config", "x.toml"], "give exactly one of"),
        (["nowhere"], "is not a run folder"),
        (["--config", "missing.toml"], "config file missing.toml does not exist"),
        (["--preset", "gpt2-124m", "--context", "4096"], "longer than the model's block_size"),
        (["--preset", "gpt2-124m", "--batch", "0"], "--batch = 0 must be at least 1"),
    ],
)
def test_cli_info_errors(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    assert main(["info", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tinygpt: error:") and message in err
