"""The GPT model: config validation, attention kernels, KV cache, losses, initialisation."""

from __future__ import annotations

import math

import pytest
import torch

from tinygpt.core.errors import TinyGPTError
from tinygpt.core.model import GPT, GPTConfig, apply_rope, causal_mask, rope_tables


def tiny(**kw) -> GPTConfig:
    base = dict(vocab_size=61, block_size=32, n_layer=2, n_head=4, n_embd=32)
    return GPTConfig(**{**base, **kw})


VARIANTS = [
    dict(),
    dict(pos="rope", norm="rmsnorm", mlp="swiglu", bias=False, n_kv_head=2),
    dict(pos="rope", n_kv_head=1, qk_norm=True, tie_weights=False),
    dict(mlp="gelu", n_kv_head=2),
]


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        (dict(n_embd=30, n_head=4), r"n_embd \(30\) must be divisible by model.n_head \(4\)"),
        (dict(n_kv_head=3), r"n_head \(4\) must be divisible by model.n_kv_head \(3\)"),
        (dict(n_kv_head=0), r"model.n_kv_head = 0 must be at least 1"),
        (dict(n_embd=24, n_head=8, pos="rope"), r"rotary positions need an even head dimension"),
        (dict(norm="rmsnrom"), r"model.norm = 'rmsnrom' is not known.*did you mean 'rmsnorm'"),
        (dict(mlp="swiglue"), r"model.mlp = 'swiglue'.*did you mean 'swiglu'"),
        (dict(pos="rotary"), r"model.pos = 'rotary' is not known; choose one of learned, rope"),
        (dict(attn="flash"), r"model.attn = 'flash' is not known"),
        (dict(vocab_size=0), r"model.vocab_size = 0 must be at least 1"),
        (dict(block_size=-4), r"model.block_size = -4 must be at least 1"),
        (dict(n_layer=2.5), r"model.n_layer = 2.5 must be an integer"),
        (dict(n_head=True), r"model.n_head = True must be an integer"),
        (dict(mlp_hidden=0), r"model.mlp_hidden = 0 must be at least 1"),
        (dict(dropout=1.0), r"model.dropout = 1.0 must be in \[0, 1\)"),
        (dict(dropout=-0.1), r"model.dropout = -0.1 must be in \[0, 1\)"),
        (dict(norm_eps=0.0), r"model.norm_eps = 0.0 must be in \(0, 1\]"),
        (dict(rope_theta=-1.0), r"model.rope_theta = -1.0 must be a positive number"),
        (dict(init_std=0.0), r"model.init_std = 0.0 must be a positive number"),
        (dict(rope_theta=float("inf")), r"model.rope_theta = inf must be a finite number"),
        (dict(dropout=float("nan")), r"model.dropout = nan must be a finite number"),
        (dict(n_embd=100_000), r"model.n_embd = 100000 must be at most 65,536 \(wider models"),
        (dict(vocab_size=2**40), r"model.vocab_size = 1099511627776 must be at most"),
    ],
)
def test_config_validation_messages(kw, message):
    with pytest.raises(TinyGPTError, match=message):
        tiny(**kw)


def test_mlp_hidden_defaults():
    assert GPTConfig(n_embd=128).hidden == 512
    # Llama rule: 2/3 * 4 * C rounded up to a multiple of 32 (768 -> 2048, 100 -> 266 -> 288).
    assert GPTConfig(n_embd=768, n_head=12, mlp="swiglu").hidden == 2048
    assert GPTConfig(n_embd=100, n_head=4, mlp="swiglu").hidden == 288
    assert GPTConfig(n_embd=128, mlp="swiglu", mlp_hidden=100).hidden == 100


def test_gpt2_124m_parameter_count(monkeypatch):
    config = GPTConfig(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768)
    monkeypatch.setattr(GPT, "_init_weights", lambda self, module: None)  # counting only
    with torch.device("meta"):
        model = GPT(config)
    assert model.num_params() == 124_439_808
    assert model.num_params(non_embedding=True) == 123_653_376


def test_causal_mask_alignment():
    assert causal_mask(3, 3).int().tolist() == [[1, 0, 0], [1, 1, 0], [1, 1, 1]]
    # Fewer queries than keys: the queries are the last positions (bottom-right aligned).
    assert causal_mask(2, 4).int().tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]


def _pair(kw):
    torch.manual_seed(0)
    sdpa = GPT(tiny(attn="sdpa", **kw)).eval()
    manual = GPT(tiny(attn="manual", **kw)).eval()
    manual.load_state_dict(sdpa.state_dict())
    return sdpa, manual


@pytest.mark.parametrize("kw", VARIANTS)
def test_manual_attention_equals_sdpa(kw):
    sdpa, manual = _pair(kw)
    idx = torch.randint(0, 61, (3, 32))
    with torch.no_grad():
        a, _ = sdpa(idx)
        b, _ = manual(idx)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kw", VARIANTS)
def test_manual_equals_sdpa_with_cache_offset(kw):
    """Queries shorter than keys (3 new tokens onto 10 cached, then 1): bottom-right mask."""
    sdpa, manual = _pair(kw)
    idx = torch.randint(0, 61, (2, 14))
    outs = []
    with torch.no_grad():
        for model in (sdpa, manual):
            cache = model.new_cache(2)
            parts = [model(idx[:, s:e], cache=cache)[0] for s, e in ((0, 10), (10, 13), (13, 14))]
            outs.append(torch.cat(parts, dim=1))
        full, _ = sdpa(idx)
    torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(outs[0], full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kw", VARIANTS)
def test_chunked_prefill_and_decode_equal_full_forward(kw):
    torch.manual_seed(1)
    model = GPT(tiny(**kw)).eval()
    idx = torch.randint(0, 61, (2, 32))
    with torch.no_grad():
        full, _ = model(idx)
        cache = model.new_cache(2)
        parts = [model(idx[:, s : s + 5], cache=cache)[0] for s in range(0, 30, 5)]
        parts += [model(idx[:, t : t + 1], cache=cache)[0] for t in (30, 31)]
    assert cache.pos == 32
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=1e-5)


def test_last_only_logits():
    model = GPT(tiny()).eval()
    idx = torch.randint(0, 61, (2, 9))
    with torch.no_grad():
        full, _ = model(idx)
        last, _ = model(idx, last_only=True)
    assert last.shape == (2, 1, 61)
    torch.testing.assert_close(last[:, 0], full[:, -1])


def test_too_long_input_and_cache_overflow():
    model = GPT(tiny(block_size=8))
    with pytest.raises(TinyGPTError, match=r"longer than the model's context of 8"):
        model(torch.zeros(1, 9, dtype=torch.long))
    cache = model.new_cache(1)
    model(torch.zeros(1, 6, dtype=torch.long), cache=cache)
    with pytest.raises(TinyGPTError, match=r"sequence of 10 tokens"):
        model(torch.zeros(1, 4, dtype=torch.long), cache=cache)


@pytest.mark.parametrize("kw", VARIANTS)
def test_loss_at_init_is_log_vocab(kw):
    torch.manual_seed(0)
    config = tiny(vocab_size=512, **kw)
    model = GPT(config)
    idx, targets = torch.randint(0, 512, (2, 4, 32))
    _, loss = model(idx, targets)
    assert abs(loss.item() - math.log(512)) < 0.1


def test_loss_ignores_minus_one():
    torch.manual_seed(0)
    model = GPT(tiny())
    idx = torch.randint(0, 61, (2, 8))
    targets = idx.clone()
    targets[:, :4] = -1
    logits, loss = model(idx, targets)
    expected = torch.nn.functional.cross_entropy(
        logits[:, 4:].reshape(-1, 61), idx[:, 4:].reshape(-1)
    )
    torch.testing.assert_close(loss, expected)


@pytest.mark.parametrize("kw", [VARIANTS[0], VARIANTS[1]])
def test_overfits_one_batch(kw):
    torch.manual_seed(0)
    model = GPT(tiny(**kw))
    idx = torch.randint(0, 61, (4, 17))
    x, y = idx[:, :-1], idx[:, 1:]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):
        _, loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    assert loss.item() < 0.05


def test_weight_tying_and_init():
    torch.manual_seed(0)
    model = GPT(tiny(n_layer=8, n_embd=64))
    assert model.lm_head.weight is model.tok_emb.weight
    block = model.blocks[0]
    assert block.attn.qkv.weight.std().item() == pytest.approx(0.02, rel=0.1)
    # Residual projections: 0.02 / sqrt(2 * 8) = 0.005.
    assert block.attn.proj.weight.std().item() == pytest.approx(0.005, rel=0.1)
    assert block.mlp.proj.weight.std().item() == pytest.approx(0.005, rel=0.1)
    assert block.attn.qkv.bias.abs().max().item() == 0
    untied = GPT(tiny(tie_weights=False))
    assert untied.lm_head.weight is not untied.tok_emb.weight


def test_rope_preserves_norm_and_is_relative():
    config = tiny(pos="rope", block_size=64)
    cos, sin = rope_tables(config)
    D = config.head_dim
    q, k = torch.randn(1, 1, 1, D), torch.randn(1, 1, 1, D)

    def rot(x, p):
        return apply_rope(x, cos[p : p + 1], sin[p : p + 1])

    torch.testing.assert_close(rot(q, 7).norm(), q.norm())
    # The score of a query at p and a key at p - 3 depends only on the distance 3.
    a = (rot(q, 10) * rot(k, 7)).sum()
    b = (rot(q, 40) * rot(k, 37)).sum()
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_rope_buffers_are_not_saved():
    model = GPT(tiny(pos="rope"))
    assert "rope_cos" not in model.state_dict()
    assert "pos_emb.weight" not in model.state_dict()


def test_attention_maps():
    torch.manual_seed(0)
    model = GPT(tiny(n_kv_head=2)).eval()
    maps = model.attention_maps(torch.randint(0, 61, (2, 7)))
    assert len(maps) == 2 and maps[0].shape == (2, 4, 7, 7)
    torch.testing.assert_close(maps[1].sum(-1), torch.ones(2, 4, 7))
    assert maps[0].triu(diagonal=1).abs().max().item() == 0  # no attention to the future
    assert model.blocks[0].attn.last_attn is None  # not kept after the call
