"""Our GPT <-> Hugging Face `transformers` models: config mapping and weight conversion.

Owns the correspondence between `GPTConfig` and the two `transformers` families that are
twins of our model, and the renaming/reshaping of weights both ways. It does not know about
run folders, tokenizer training or training; `transformers` is imported only when a
function here is called (it is an optional dependency, `pip install tinygpt[hf]`).

Which of our configurations have a twin:

- `GPT2LMHeadModel`: pos="learned", norm="layernorm", mlp="gelu_tanh" (transformers'
  "gelu_new") or "gelu", bias=True, n_kv_head unset (or equal to n_head), qk_norm=False.
  Tied or untied head; any mlp_hidden (`n_inner`).
- `LlamaForCausalLM`: pos="rope", norm="rmsnorm", mlp="swiglu", qk_norm=False; any n_kv_head
  (GQA); bias True or False (`attention_bias` and `mlp_bias`); tied or untied head; any
  mlp_hidden (`intermediate_size`) and rope_theta.

Anything else (e.g. RoPE with LayerNorm, learned positions with SwiGLU, QK-norm) is a mixed
configuration without a twin: `hf_config_for` raises and names the fields to change.
`attn` (sdpa/manual), `dropout` and `init_std` do not change the function computed.

Weight layout notes: GPT-2 stores its projections as `Conv1D` with weight (in, out), the
transpose of `nn.Linear`, and packs q, k, v in `attn.c_attn`; our `qkv` packs them in the
same order, so only a transpose is needed. Llama's separate q/k/v and gate/up matrices are
concatenated into our fused `qkv` and `fc`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from tinygpt.errors import TinyGPTError
from tinygpt.model import GPT, GPTConfig

GPT2_ACTIVATIONS = {"gelu_tanh": "gelu_new", "gelu": "gelu"}


def _transformers() -> Any:
    try:
        import transformers
    except ImportError as exc:
        raise TinyGPTError(
            "this needs the `transformers` package; install it with: pip install 'tinygpt[hf]'"
        ) from exc
    return transformers


# ---------------------------------------------------------------------------------- config


def twin_family(config: GPTConfig) -> str:
    """'gpt2' or 'llama'; raises TinyGPTError naming the fields that have no twin."""
    if config.pos == "learned":
        family, wanted = "gpt2", {"norm": "layernorm", "bias": True, "qk_norm": False}
        broken = [
            f"{k} = {getattr(config, k)!r} (needs {v!r})"
            for k, v in wanted.items()
            if getattr(config, k) != v
        ]
        if config.mlp not in GPT2_ACTIVATIONS:
            broken.append(f"mlp = {config.mlp!r} (needs 'gelu_tanh' or 'gelu')")
        if config.kv_heads != config.n_head:
            broken.append(f"n_kv_head = {config.n_kv_head} (GPT-2 has no grouped-query heads)")
    else:
        family, wanted = "llama", {"norm": "rmsnorm", "mlp": "swiglu", "qk_norm": False}
        broken = [
            f"{k} = {getattr(config, k)!r} (needs {v!r})"
            for k, v in wanted.items()
            if getattr(config, k) != v
        ]
    if broken:
        name = "GPT-2 (learned positions)" if family == "gpt2" else "Llama (rotary positions)"
        raise TinyGPTError(
            f"this configuration has no transformers twin: a {name} twin needs " + "; ".join(broken)
        )
    return family


def hf_config_for(config: GPTConfig, eot_id: int | None = None) -> Any:
    """The `transformers` config (GPT2Config or LlamaConfig) of our config's twin."""
    tf = _transformers()
    family = twin_family(config)
    common = dict(
        vocab_size=config.vocab_size,
        tie_word_embeddings=config.tie_weights,
        initializer_range=config.init_std,
        bos_token_id=eot_id,
        eos_token_id=eot_id,
    )
    if family == "gpt2":
        return tf.GPT2Config(
            n_positions=config.block_size,
            n_embd=config.n_embd,
            n_layer=config.n_layer,
            n_head=config.n_head,
            n_inner=config.hidden,
            activation_function=GPT2_ACTIVATIONS[config.mlp],
            layer_norm_epsilon=config.norm_eps,
            resid_pdrop=config.dropout,
            embd_pdrop=config.dropout,
            attn_pdrop=config.dropout,
            **common,
        )
    return tf.LlamaConfig(
        max_position_embeddings=config.block_size,
        hidden_size=config.n_embd,
        num_hidden_layers=config.n_layer,
        num_attention_heads=config.n_head,
        num_key_value_heads=config.kv_heads,
        head_dim=config.head_dim,
        intermediate_size=config.hidden,
        hidden_act="silu",
        rms_norm_eps=config.norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": config.rope_theta},
        attention_bias=config.bias,
        mlp_bias=config.bias,
        attention_dropout=config.dropout,
        **common,
    )


def _rope_theta(hf: Any) -> float:
    params = getattr(hf, "rope_parameters", None) or {}
    if params.get("rope_type", "default") != "default":
        raise TinyGPTError(
            f"RoPE scaling {params['rope_type']!r} is not supported; only plain RoPE loads"
        )
    return float(params.get("rope_theta", getattr(hf, "rope_theta", 10000.0)))


def config_from_hf(hf: Any) -> GPTConfig:
    """Our GPTConfig for a transformers GPT2Config or LlamaConfig.

    Sizes that equal our defaults (mlp_hidden, n_kv_head) are left unset, so that a config
    exported and loaded back compares equal.
    """
    config = _config_from_hf(hf)
    if config.mlp_hidden == dataclasses.replace(config, mlp_hidden=None).hidden:
        config.mlp_hidden = None
    if config.n_kv_head == config.n_head:
        config.n_kv_head = None
    return config


def _config_from_hf(hf: Any) -> GPTConfig:
    kind = getattr(hf, "model_type", None)
    if kind == "gpt2":
        act = {v: k for k, v in GPT2_ACTIVATIONS.items()}.get(hf.activation_function)
        if act is None:
            raise TinyGPTError(
                f"GPT-2 activation {hf.activation_function!r} is not supported; "
                "only 'gelu_new' and 'gelu' load"
            )
        if hf.scale_attn_by_inverse_layer_idx or not hf.scale_attn_weights:
            raise TinyGPTError("GPT-2 models with non-standard attention scaling do not load")
        return GPTConfig(
            vocab_size=hf.vocab_size,
            block_size=hf.n_positions,
            n_layer=hf.n_layer,
            n_head=hf.n_head,
            n_embd=hf.n_embd,
            bias=True,
            norm="layernorm",
            norm_eps=hf.layer_norm_epsilon,
            mlp=act,
            mlp_hidden=hf.n_inner or 4 * hf.n_embd,
            pos="learned",
            tie_weights=bool(hf.tie_word_embeddings),
            init_std=hf.initializer_range,
        )
    if kind == "llama":
        if hf.hidden_act != "silu":
            raise TinyGPTError(f"Llama activation {hf.hidden_act!r} is not supported; only silu")
        if hf.head_dim * hf.num_attention_heads != hf.hidden_size:
            raise TinyGPTError(
                f"Llama head_dim {hf.head_dim} x {hf.num_attention_heads} heads != hidden size "
                f"{hf.hidden_size}; our model needs head_dim = hidden_size / heads"
            )
        if bool(hf.attention_bias) != bool(hf.mlp_bias):
            raise TinyGPTError("Llama models with attention_bias != mlp_bias do not load")
        return GPTConfig(
            vocab_size=hf.vocab_size,
            block_size=hf.max_position_embeddings,
            n_layer=hf.num_hidden_layers,
            n_head=hf.num_attention_heads,
            n_embd=hf.hidden_size,
            n_kv_head=hf.num_key_value_heads,
            bias=bool(hf.attention_bias),
            norm="rmsnorm",
            norm_eps=hf.rms_norm_eps,
            mlp="swiglu",
            mlp_hidden=hf.intermediate_size,
            pos="rope",
            rope_theta=_rope_theta(hf),
            tie_weights=bool(hf.tie_word_embeddings),
            init_std=hf.initializer_range,
        )
    raise TinyGPTError(
        f"model type {kind!r} is not supported; tinygpt loads 'gpt2' and 'llama' models"
    )


# --------------------------------------------------------------------------------- weights


def _gpt2_pairs(config: GPTConfig) -> list[tuple[str, str, bool]]:
    """(our name, transformers name, transposed) for every GPT-2 tensor."""
    pairs = [
        ("tok_emb.weight", "transformer.wte.weight", False),
        ("pos_emb.weight", "transformer.wpe.weight", False),
    ]
    for i in range(config.n_layer):
        ours, theirs = f"blocks.{i}.", f"transformer.h.{i}."
        for a, b, t in [
            ("norm1", "ln_1", False),
            ("attn.qkv", "attn.c_attn", True),
            ("attn.proj", "attn.c_proj", True),
            ("norm2", "ln_2", False),
            ("mlp.fc", "mlp.c_fc", True),
            ("mlp.proj", "mlp.c_proj", True),
        ]:
            pairs.append((f"{ours}{a}.weight", f"{theirs}{b}.weight", t))
            pairs.append((f"{ours}{a}.bias", f"{theirs}{b}.bias", False))
    pairs += [
        ("norm_f.weight", "transformer.ln_f.weight", False),
        ("norm_f.bias", "transformer.ln_f.bias", False),
    ]
    if not config.tie_weights:
        pairs.append(("lm_head.weight", "lm_head.weight", False))
    return pairs


def _llama_pairs(config: GPTConfig) -> list[tuple[str, list[str]]]:
    """(our name, transformers names concatenated along dim 0) for every Llama tensor."""
    pairs: list[tuple[str, list[str]]] = [("tok_emb.weight", ["model.embed_tokens.weight"])]
    suffixes = ["weight", "bias"] if config.bias else ["weight"]
    for i in range(config.n_layer):
        ours, theirs = f"blocks.{i}.", f"model.layers.{i}."
        pairs.append((f"{ours}norm1.weight", [f"{theirs}input_layernorm.weight"]))
        pairs.append((f"{ours}norm2.weight", [f"{theirs}post_attention_layernorm.weight"]))
        for s in suffixes:
            pairs.append(
                (f"{ours}attn.qkv.{s}", [f"{theirs}self_attn.{p}_proj.{s}" for p in "qkv"])
            )
            pairs.append((f"{ours}attn.proj.{s}", [f"{theirs}self_attn.o_proj.{s}"]))
            pairs.append(
                (f"{ours}mlp.fc.{s}", [f"{theirs}mlp.gate_proj.{s}", f"{theirs}mlp.up_proj.{s}"])
            )
            pairs.append((f"{ours}mlp.proj.{s}", [f"{theirs}mlp.down_proj.{s}"]))
    pairs.append(("norm_f.weight", ["model.norm.weight"]))
    if not config.tie_weights:
        pairs.append(("lm_head.weight", ["lm_head.weight"]))
    return pairs


def to_hf_state_dict(model: GPT) -> dict[str, Tensor]:
    """Our weights under transformers' names and layouts (tied head omitted)."""
    config = model.config
    ours = model.state_dict()
    out: dict[str, Tensor] = {}
    if twin_family(config) == "gpt2":
        for a, b, transpose in _gpt2_pairs(config):
            out[b] = ours[a].t().contiguous() if transpose else ours[a].clone()
    else:
        H, K, D = config.n_head, config.kv_heads, config.head_dim
        for a, names in _llama_pairs(config):
            if len(names) == 1:
                out[names[0]] = ours[a].clone()
                continue
            sizes = [H * D, K * D, K * D] if len(names) == 3 else [config.hidden] * 2
            for name, part in zip(names, ours[a].split(sizes, dim=0)):
                out[name] = part.clone()
    return out


def from_hf_state_dict(config: GPTConfig, state: dict[str, Tensor]) -> GPT:
    """Build our model for `config` with weights from a transformers state dict."""
    family = twin_family(config)
    ours: dict[str, Tensor] = {}
    try:
        if family == "gpt2":
            for a, b, transpose in _gpt2_pairs(config):
                ours[a] = state[b].t() if transpose else state[b]
        else:
            for a, names in _llama_pairs(config):
                ours[a] = torch.cat([state[n] for n in names], dim=0)
    except KeyError as exc:
        raise TinyGPTError(f"the transformers weights lack {exc.args[0]!r}") from exc
    if config.tie_weights:
        ours["lm_head.weight"] = ours["tok_emb.weight"]
    model = GPT(config)
    model.load_state_dict({k: v.float() for k, v in ours.items()}, strict=True)
    return model


# ----------------------------------------------------------------------------- folders


def from_hf_model(hf_model: Any) -> tuple[GPT, GPTConfig]:
    """Our model (eval mode, fp32) with the weights of an in-memory transformers model."""
    config = config_from_hf(hf_model.config)
    model = from_hf_state_dict(config, hf_model.state_dict())
    return model.eval(), config


def load_hf(path: str | Path) -> tuple[GPT, GPTConfig]:
    """Load a local transformers folder (GPT2LMHeadModel or LlamaForCausalLM) into our model."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise TinyGPTError(
            f"{path} is not a transformers model folder (no config.json); "
            "give the folder that save_pretrained wrote"
        )
    tf = _transformers()
    hf_config = tf.AutoConfig.from_pretrained(path, local_files_only=True)
    config_from_hf(hf_config)  # fail early, before loading weights, on unsupported models
    hf_model = tf.AutoModelForCausalLM.from_pretrained(
        path, local_files_only=True, dtype=torch.float32
    )
    return from_hf_model(hf_model)


def to_hf_model(model: GPT, eot_id: int | None = None) -> Any:
    """An in-memory transformers twin of our model (eval mode) with the same weights."""
    tf = _transformers()
    hf_config = hf_config_for(model.config, eot_id=eot_id)
    cls = tf.GPT2LMHeadModel if hf_config.model_type == "gpt2" else tf.LlamaForCausalLM
    hf_model = cls(hf_config)
    missing, unexpected = hf_model.load_state_dict(to_hf_state_dict(model), strict=False)
    # The tied head is the only tensor we leave out; anything else is a mapping bug.
    missing = [k for k in missing if not (model.config.tie_weights and k == "lm_head.weight")]
    if missing or unexpected:
        raise TinyGPTError(f"weight mapping mismatch: missing {missing}, unexpected {unexpected}")
    if model.config.tie_weights:
        hf_model.tie_weights()
    return hf_model.to(next(model.parameters()).device).eval()


def to_hf(
    model: GPT, out_dir: str | Path, *, tokenizer: Any = None, eot_id: int | None = None
) -> Path:
    """Write a transformers folder (config.json, model.safetensors[, tokenizer.json]).

    The folder loads with `AutoModelForCausalLM.from_pretrained(out_dir)`.
    """
    if tokenizer is not None and eot_id is None:
        eot_id = getattr(tokenizer, "eot_id", None)
    hf_model = to_hf_model(model, eot_id=eot_id)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    hf_model.save_pretrained(out_dir)
    if tokenizer is not None:
        tokenizer.save(out_dir / "tokenizer.json")
    return out_dir
