"""Our model and its transformers twins (GPT-2, Llama, Qwen3) compute the same function."""

from __future__ import annotations

import pytest
import torch

from tinygpt.core.errors import TinyGPTError
from tinygpt.core.model import GPT, GPTConfig
from tinygpt.export.folder import to_hf
from tinygpt.export.hf import (
    config_from_hf,
    from_hf_state_dict,
    hf_config_for,
    load_hf,
    to_hf_model,
    to_hf_state_dict,
)
from tinygpt.infer.generate import generate_ids

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()


def _perturb(model: torch.nn.Module) -> None:
    """Random values everywhere, norm gains and biases included, so a swapped or
    transposed tensor cannot go unnoticed."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)


GPT2_CASES = {
    "small": dict(vocab_size=101, n_positions=32, n_embd=32, n_layer=2, n_head=4),
    "wider-exact-gelu-untied": dict(
        vocab_size=67,
        n_positions=24,
        n_embd=48,
        n_layer=3,
        n_head=3,
        n_inner=80,
        activation_function="gelu",
        tie_word_embeddings=False,
        layer_norm_epsilon=1e-6,
    ),
}
LLAMA_CASES = {
    "mha-tied": dict(
        vocab_size=101,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=32,
        tie_word_embeddings=True,
    ),
    "gqa-untied-theta": dict(
        vocab_size=89,
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=6,
        num_key_value_heads=2,
        max_position_embeddings=40,
        rope_parameters={"rope_type": "default", "rope_theta": 500.0},
        rms_norm_eps=1e-6,
    ),
    "mqa-bias": dict(
        vocab_size=50,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=1,
        max_position_embeddings=16,
        attention_bias=True,
        mlp_bias=True,
    ),
}


QWEN3_CASES = {
    "gqa-tied": dict(
        vocab_size=101,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=32,
        tie_word_embeddings=True,
    ),
    # attention biases but no MLP biases: ours holds zero MLP biases
    "attention-bias-untied-theta": dict(
        vocab_size=61,
        hidden_size=48,
        intermediate_size=80,
        num_hidden_layers=1,
        num_attention_heads=6,
        num_key_value_heads=1,
        head_dim=8,
        max_position_embeddings=24,
        attention_bias=True,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 300.0},
    ),
}
LLAMA_CASES["attention-bias-only"] = dict(
    vocab_size=50,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=1,
    num_attention_heads=4,
    max_position_embeddings=16,
    attention_bias=True,
    mlp_bias=False,
)
HF_CLASSES = {
    "gpt2": ("GPT2Config", "GPT2LMHeadModel"),
    "llama": ("LlamaConfig", "LlamaForCausalLM"),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM"),
}


def _hf_model(family: str, kw: dict, attn: str = "sdpa"):
    torch.manual_seed(0)
    config_cls, model_cls = (getattr(transformers, n) for n in HF_CLASSES[family])
    config = config_cls(bos_token_id=None, eos_token_id=None, **kw)
    model = model_cls(config)
    model.config._attn_implementation = attn
    _perturb(model)
    return model.eval()


FAMILY_CASES = {"gpt2": GPT2_CASES, "llama": LLAMA_CASES, "qwen3": QWEN3_CASES}
CASES = [(family, name) for family, cases in FAMILY_CASES.items() for name in cases]


def _kw(family: str, name: str) -> dict:
    return FAMILY_CASES[family][name]


@pytest.mark.parametrize(("family", "name"), CASES)
def test_load_hf_folder_gives_equal_logits(tmp_path, family, name):
    hf = _hf_model(family, _kw(family, name), attn="eager" if name.startswith("w") else "sdpa")
    hf.save_pretrained(tmp_path)
    ours, config = load_hf(tmp_path)
    assert config.qk_norm == (family == "qwen3")
    assert config.bias == any(n.endswith(".bias") for n in hf.state_dict())
    idx = torch.randint(0, config.vocab_size, (2, config.block_size))
    with torch.no_grad():
        expected = hf(idx).logits
        got, _ = ours(idx)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    "config",
    [
        GPTConfig(vocab_size=97, block_size=20, n_layer=2, n_head=4, n_embd=32),
        GPTConfig(
            vocab_size=97,
            block_size=20,
            n_layer=2,
            n_head=2,
            n_embd=32,
            mlp="gelu",
            tie_weights=False,
            mlp_hidden=40,
        ),
        GPTConfig(
            vocab_size=97,
            block_size=20,
            n_layer=2,
            n_head=4,
            n_embd=32,
            pos="rope",
            norm="rmsnorm",
            mlp="swiglu",
            bias=False,
            n_kv_head=2,
            rope_theta=1000.0,
        ),
        GPTConfig(
            vocab_size=97,
            block_size=20,
            n_layer=1,
            n_head=4,
            n_embd=32,
            pos="rope",
            norm="rmsnorm",
            mlp="swiglu",
            bias=True,
            tie_weights=False,
        ),
        GPTConfig(
            vocab_size=97, block_size=20, n_layer=2, n_head=4, n_embd=32, bias=False, mlp="gelu"
        ),
        GPTConfig(
            vocab_size=97,
            block_size=20,
            n_layer=2,
            n_head=4,
            n_embd=32,
            n_kv_head=2,
            pos="rope",
            norm="rmsnorm",
            mlp="swiglu",
            bias=False,
            qk_norm=True,
        ),
        GPTConfig(
            vocab_size=97,
            block_size=20,
            n_layer=1,
            n_head=4,
            n_embd=48,
            n_kv_head=1,
            pos="rope",
            norm="rmsnorm",
            mlp="swiglu",
            mlp_hidden=72,
            bias=False,
            qk_norm=True,
            tie_weights=False,
            rope_theta=500.0,
            norm_eps=1e-6,
        ),
    ],
    ids=[
        "gpt2",
        "gpt2-untied",
        "llama-gqa",
        "llama-bias-untied",
        "gpt2-bias-free",
        "qwen3-gqa",
        "qwen3-mqa-untied",
    ],
)
def test_export_to_hf_folder_gives_equal_logits_and_greedy_tokens(tmp_path, config):
    torch.manual_seed(0)
    ours = GPT(config).eval()
    _perturb(ours)
    to_hf(ours, tmp_path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    back, back_config = load_hf(tmp_path)
    assert back_config == config
    idx = torch.randint(0, config.vocab_size, (2, config.block_size))
    with torch.no_grad():
        expected = hf(idx).logits
        got, _ = ours(idx)
        again, _ = back(idx)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(again, got, atol=0, rtol=0)

    prompt = idx[:1, :4]
    n = config.block_size - 4  # transformers does not slide past its context
    ids = generate_ids(ours, prompt[0].tolist(), max_new_tokens=n, temperature=0.0)[0]
    ref = hf.generate(
        prompt,
        do_sample=False,
        max_new_tokens=n,
        min_new_tokens=n,
        use_cache=True,
        attention_mask=torch.ones_like(prompt),
        pad_token_id=0,
    )
    assert ids == ref[0, 4:].tolist()


@pytest.mark.parametrize(
    ("kw", "fields"),
    [
        (dict(norm="rmsnorm"), ["norm = 'rmsnorm' (needs 'layernorm')"]),
        (dict(mlp="swiglu", bias=False), ["model.mlp = 'swiglu'"]),
        (dict(qk_norm=True), ["qk_norm = True (needs False; QK-norm has a twin with rotary"]),
        (dict(n_kv_head=2), ["n_kv_head = 2"]),
        (dict(pos="rope"), ["norm = 'layernorm' (needs 'rmsnorm')", "mlp = 'gelu_tanh'"]),
        (
            dict(pos="rope", norm="rmsnorm", mlp="swiglu", qk_norm=True),
            ["model.bias = True (needs False; Qwen3 has no MLP biases"],
        ),
    ],
)
def test_mixed_config_has_no_twin(kw, fields):
    config = GPTConfig(vocab_size=50, block_size=8, n_layer=1, n_head=4, n_embd=16, **kw)
    with pytest.raises(TinyGPTError, match="no transformers twin") as info:
        hf_config_for(config)
    for field in fields:
        assert field in str(info.value)


def test_config_mapping_both_ways():
    config = GPTConfig(
        vocab_size=300,
        block_size=64,
        n_layer=3,
        n_head=6,
        n_embd=96,
        n_kv_head=3,
        pos="rope",
        norm="rmsnorm",
        mlp="swiglu",
        bias=False,
        rope_theta=123.0,
        norm_eps=1e-6,
        tie_weights=False,
    )
    hf = hf_config_for(config, eot_id=5)
    assert hf.model_type == "llama" and hf.num_key_value_heads == 3 and hf.eos_token_id == 5
    assert hf.rope_parameters["rope_theta"] == 123.0
    assert config_from_hf(hf) == config
    gpt2 = GPTConfig(vocab_size=300, block_size=64, n_layer=3, n_head=6, n_embd=96)
    hf2 = hf_config_for(gpt2)
    assert hf2.activation_function == "gelu_new" and hf2.n_inner == 384
    assert config_from_hf(hf2) == gpt2


def test_qwen3_config_mapping_both_ways():
    config = GPTConfig(
        vocab_size=300,
        block_size=64,
        n_layer=2,
        n_head=4,
        n_embd=64,
        n_kv_head=2,
        pos="rope",
        norm="rmsnorm",
        mlp="swiglu",
        bias=False,
        qk_norm=True,
        rope_theta=321.0,
        norm_eps=1e-6,
    )
    hf = hf_config_for(config, eot_id=7)
    assert hf.model_type == "qwen3" and hf.head_dim == 16 and hf.num_key_value_heads == 2
    assert hf.attention_bias is False and hf.tie_word_embeddings is True
    assert hf.sliding_window is None and set(hf.layer_types) == {"full_attention"}
    assert hf.rope_parameters == {"rope_type": "default", "rope_theta": 321.0}
    assert hf.rms_norm_eps == 1e-6 and hf.pad_token_id == 7
    assert config_from_hf(hf) == config
    sliding = transformers.Qwen3Config(
        hidden_size=32,
        num_attention_heads=4,
        head_dim=8,
        num_hidden_layers=2,
        intermediate_size=8,
        vocab_size=10,
        use_sliding_window=True,
        sliding_window=4,
        max_window_layers=1,
    )
    with pytest.raises(TinyGPTError, match="sliding-window attention do not load"):
        config_from_hf(sliding)


def test_zero_biases_import_as_bias_false(tmp_path):
    hf = _hf_model("gpt2", GPT2_CASES["small"])
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name.endswith(".bias"):
                p.zero_()
    hf.save_pretrained(tmp_path)
    ours, config = load_hf(tmp_path)
    assert config.bias is False
    assert not any(n.endswith(".bias") for n in ours.state_dict())
    idx = torch.randint(0, config.vocab_size, (2, config.block_size))
    with torch.no_grad():
        torch.testing.assert_close(ours(idx)[0], hf(idx).logits, atol=1e-4, rtol=1e-4)
    with pytest.raises(TinyGPTError, match="non-zero biases, but model.bias = false"):
        from_hf_state_dict(config, _hf_model("gpt2", GPT2_CASES["small"]).state_dict())


def test_bias_free_gpt2_is_written_with_zero_biases():
    config = GPTConfig(vocab_size=40, block_size=8, n_layer=1, n_head=2, n_embd=16, bias=False)
    state = to_hf_state_dict(GPT(config))
    biases = [k for k in state if k.endswith(".bias")]
    assert len(biases) == 7  # ln_1, c_attn, c_proj, ln_2, c_fc, mlp c_proj, ln_f
    assert all(not state[k].any() for k in biases)


def test_to_hf_model_in_memory():
    ours = GPT(GPTConfig(vocab_size=40, block_size=8, n_layer=1, n_head=2, n_embd=16)).eval()
    hf = to_hf_model(ours)
    assert hf.lm_head.weight.data_ptr() == hf.transformer.wte.weight.data_ptr()


def test_load_hf_errors(tmp_path):
    with pytest.raises(TinyGPTError, match="not a transformers model folder"):
        load_hf(tmp_path)
    transformers.BertConfig(
        vocab_size=10,
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=8,
    ).save_pretrained(tmp_path)
    with pytest.raises(TinyGPTError, match="model type 'bert' is not supported; tinygpt loads"):
        load_hf(tmp_path)
    odd = transformers.LlamaConfig(
        hidden_size=32,
        num_attention_heads=4,
        head_dim=16,
        num_hidden_layers=1,
        intermediate_size=8,
        vocab_size=10,
    )
    with pytest.raises(TinyGPTError, match="head_dim 16"):
        config_from_hf(odd)
    gelu_fast = transformers.GPT2Config(activation_function="relu", n_layer=1)
    with pytest.raises(TinyGPTError, match="activation 'relu' is not supported"):
        config_from_hf(gelu_fast)
