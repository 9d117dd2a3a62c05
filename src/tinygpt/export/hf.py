"""Our GPT <-> Hugging Face `transformers`: config mapping, weight conversion, model folders.

Owns the correspondence between `GPTConfig` and the three `transformers` families that are
twins of our model, the renaming/reshaping of weights both ways, and our GPT as a
transformers model (`to_hf_model`, `load_hf`). Writing a complete transformers folder
(weights, config, generation defaults, tokenizer files, model card) that
`AutoModelForCausalLM`, `AutoTokenizer` and `pipeline` load offline without
`trust_remote_code` is `tinygpt.export.folder`'s. It does not know about run folders (see
`tinygpt.export.hf_run`), how a model card is worded (`tinygpt.export.card`) or training;
`transformers` is imported only when a function here is called (an optional dependency,
`pip install tinygpt[hf]`).

Which of our configurations have a twin, chosen by position kind and QK-norm:

- `GPT2LMHeadModel`: pos="learned", norm="layernorm", mlp="gelu_tanh" (transformers'
  "gelu_new") or "gelu", n_kv_head unset (or equal to n_head), qk_norm=False. Tied or untied
  head; any mlp_hidden (`n_inner`). bias=False is written with zero biases (GPT-2 always has
  them; a LayerNorm or linear layer with a zero bias computes the same function).
- `LlamaForCausalLM`: pos="rope", norm="rmsnorm", mlp="swiglu", qk_norm=False; any n_kv_head
  (GQA); bias True or False (`attention_bias` and `mlp_bias`); tied or untied head; any
  mlp_hidden (`intermediate_size`) and rope_theta.
- `Qwen3ForCausalLM`: the Llama layout plus qk_norm=True, bias=False. Checked against
  transformers' `modeling_qwen3.py`: `q_norm`/`k_norm` are RMSNorms over each head's D
  channels with the same `rms_norm_eps` as the block norms, applied to the projected
  queries and keys before RoPE (as ours: `CausalSelfAttention.forward`); the RMSNorm
  normalises in fp32 and multiplies the gain after casting back (as our `RMSNorm`); the MLP
  has no biases at all (`attention_bias` covers q/k/v/o only), so bias=True has no Qwen3
  twin; `head_dim` must be given (its default is 128); sliding-window attention is off
  (`use_sliding_window=False`, every layer "full_attention"); RoPE is the same
  rotate-half convention with `rope_parameters = {"rope_type": "default", "rope_theta"}`.

Anything else (e.g. RoPE with LayerNorm, learned positions with SwiGLU or QK-norm) is a
mixed configuration without a twin: `hf_config_for` raises and names the settings to change.
`attn` (sdpa/manual), `dropout` and `init_std` do not change the function computed.

Importing goes the other way for any folder of these three families. Biases that are all
zero import as bias=False; a model with biases in some layers only (Llama's
`attention_bias` without `mlp_bias`, Qwen3's `attention_bias`) imports with bias=True and
zero biases where transformers has none.

Weight layout notes: GPT-2 stores its projections as `Conv1D` with weight (in, out), the
transpose of `nn.Linear`, and packs q, k, v in `attn.c_attn`; our `qkv` packs them in the
same order, so only a transpose is needed. Llama's and Qwen3's separate q/k/v and gate/up
matrices are concatenated into our fused `qkv` and `fc`.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from tinygpt.core.errors import TinyGPTError
from tinygpt.core.model import GPT, GPTConfig

GPT2_ACTIVATIONS = {"gelu_tanh": "gelu_new", "gelu": "gelu"}
HF_CLASSES = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM"}


def _transformers() -> Any:
    try:
        import transformers
    except ImportError as exc:
        raise TinyGPTError(
            "this needs the `transformers` package; install it with: pip install 'tinygpt[hf]'"
        ) from exc
    return transformers


@contextlib.contextmanager
def _quiet(tf: Any) -> Iterator[None]:
    """No progress bars from transformers while it reads or writes a folder for us (a
    command prints one line when it is done)."""
    logging = tf.utils.logging
    was = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            logging.enable_progress_bar()


# ---------------------------------------------------------------------------------- config


def _layout(config: GPTConfig) -> str:
    """The transformers weight layout our config's tensors follow (no twin check)."""
    if config.pos == "learned":
        return "gpt2"
    return "qwen3" if config.qk_norm else "llama"


def twin_family(config: GPTConfig) -> str:
    """'gpt2', 'llama' or 'qwen3'; raises TinyGPTError naming the settings with no twin."""
    family, name, broken = twin_problems(config)
    if broken:
        raise TinyGPTError(
            f"this configuration has no transformers twin; for a {name} twin change: "
            + "; ".join(broken)
            + ", and train again"
        )
    return family


def twin_problems(config: GPTConfig) -> tuple[str, str, list[str]]:
    """(family, its name in words, the settings that keep `config` from it): the family a
    config's tensors follow and what to change for an exact twin (empty when it has one).
    Other exporters (`tinygpt.export.gguf`) word their own refusal from the same list."""
    family = _layout(config)

    def need(field: str, wanted: Any, why: str = "") -> None:
        value = getattr(config, field)
        if value != wanted:
            broken.append(f"model.{field} = {value!r} (needs {wanted!r}{why})")

    broken: list[str] = []
    if family == "gpt2":
        need("norm", "layernorm")
        need("qk_norm", False, "; QK-norm has a twin with rotary positions, Qwen3")
        if config.mlp not in GPT2_ACTIVATIONS:
            broken.append(f"model.mlp = {config.mlp!r} (needs 'gelu_tanh' or 'gelu')")
        if config.kv_heads != config.n_head:
            broken.append(
                f"model.n_kv_head = {config.n_kv_head} (GPT-2 has no grouped-query heads;"
                " leave it unset)"
            )
        name = "GPT-2 (learned positions)"
    else:
        need("norm", "rmsnorm")
        need("mlp", "swiglu")
        if family == "qwen3":
            need("bias", False, "; Qwen3 has no MLP biases; or model.qk_norm = false for Llama")
        name = (
            "Qwen3 (rotary positions, QK-norm)" if family == "qwen3" else "Llama (rotary positions)"
        )
    return family, name, broken


def hf_config_for(config: GPTConfig, eot_id: int | None = None, pad_id: int | None = None) -> Any:
    """The `transformers` config (GPT2Config, LlamaConfig or Qwen3Config) of our twin."""
    tf = _transformers()
    family = twin_family(config)
    common = dict(
        vocab_size=config.vocab_size,
        tie_word_embeddings=config.tie_weights,
        initializer_range=config.init_std,
        bos_token_id=eot_id,
        eos_token_id=eot_id,
        pad_token_id=eot_id if pad_id is None else pad_id,
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
    rotary = dict(
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
        attention_dropout=config.dropout,
        **common,
    )
    if family == "qwen3":
        return tf.Qwen3Config(
            attention_bias=False, use_sliding_window=False, sliding_window=None, **rotary
        )
    return tf.LlamaConfig(attention_bias=config.bias, mlp_bias=config.bias, **rotary)


def _rope_theta(hf: Any) -> float:
    params = getattr(hf, "rope_parameters", None) or {}
    if params.get("rope_type", "default") != "default":
        raise TinyGPTError(
            f"RoPE scaling {params['rope_type']!r} is not supported; only plain RoPE loads"
        )
    return float(params.get("rope_theta", getattr(hf, "rope_theta", 10000.0)))


def config_from_hf(hf: Any) -> GPTConfig:
    """Our GPTConfig for a transformers GPT2Config, LlamaConfig or Qwen3Config.

    Sizes that equal our defaults (mlp_hidden, n_kv_head) are left unset, so that a config
    exported and loaded back compares equal. `bias` is True whenever the transformers model
    has any bias tensors; `from_hf_model` turns all-zero ones into bias=False.
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
    if kind in ("llama", "qwen3"):
        name = "Llama" if kind == "llama" else "Qwen3"
        if hf.hidden_act != "silu":
            raise TinyGPTError(f"{name} activation {hf.hidden_act!r} is not supported; only silu")
        if hf.head_dim * hf.num_attention_heads != hf.hidden_size:
            raise TinyGPTError(
                f"{name} head_dim {hf.head_dim} x {hf.num_attention_heads} heads != hidden size "
                f"{hf.hidden_size}; our model needs head_dim = hidden_size / heads"
            )
        if kind == "qwen3":
            sliding = [t for t in (getattr(hf, "layer_types", None) or []) if t != "full_attention"]
            if sliding or getattr(hf, "sliding_window", None) is not None:
                raise TinyGPTError(
                    "Qwen3 models with sliding-window attention do not load; tinygpt attends to"
                    " the whole context in every layer"
                )
            bias = bool(hf.attention_bias)
        else:
            bias = bool(hf.attention_bias) or bool(hf.mlp_bias)
        return GPTConfig(
            vocab_size=hf.vocab_size,
            block_size=hf.max_position_embeddings,
            n_layer=hf.num_hidden_layers,
            n_head=hf.num_attention_heads,
            n_embd=hf.hidden_size,
            n_kv_head=hf.num_key_value_heads,
            bias=bias,
            norm="rmsnorm",
            norm_eps=hf.rms_norm_eps,
            mlp="swiglu",
            mlp_hidden=hf.intermediate_size,
            pos="rope",
            rope_theta=_rope_theta(hf),
            qk_norm=kind == "qwen3",
            tie_weights=bool(hf.tie_word_embeddings),
            init_std=hf.initializer_range,
        )
    raise TinyGPTError(
        f"model type {kind!r} is not supported; tinygpt loads 'gpt2', 'llama' and 'qwen3' models"
    )


# --------------------------------------------------------------------------------- weights


def _gpt2_pairs(config: GPTConfig) -> list[tuple[str, str, bool, bool]]:
    """(our name, transformers name, transposed, is_bias) for every GPT-2 tensor.

    Bias entries are listed even for bias=False: GPT-2 always has them (zero for us).
    """
    pairs = [
        ("tok_emb.weight", "transformer.wte.weight", False, False),
        ("pos_emb.weight", "transformer.wpe.weight", False, False),
    ]
    modules = [("norm_f", "transformer.ln_f", False)]
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
            modules.append((ours + a, theirs + b, t))
    for a, b, t in modules:
        pairs.append((f"{a}.weight", f"{b}.weight", t, False))
        pairs.append((f"{a}.bias", f"{b}.bias", False, True))
    if not config.tie_weights:
        pairs.append(("lm_head.weight", "lm_head.weight", False, False))
    return pairs


def _rotary_pairs(config: GPTConfig) -> list[tuple[str, list[str], bool]]:
    """(our name, transformers names concatenated along dim 0, is_bias) for every Llama or
    Qwen3 tensor; bias entries only when config.bias."""
    pairs: list[tuple[str, list[str], bool]] = [
        ("tok_emb.weight", ["model.embed_tokens.weight"], False)
    ]
    suffixes = ["weight", "bias"] if config.bias else ["weight"]
    for i in range(config.n_layer):
        ours, theirs = f"blocks.{i}.", f"model.layers.{i}."
        pairs.append((f"{ours}norm1.weight", [f"{theirs}input_layernorm.weight"], False))
        pairs.append((f"{ours}norm2.weight", [f"{theirs}post_attention_layernorm.weight"], False))
        if config.qk_norm:
            for n in ("q_norm", "k_norm"):
                pairs.append((f"{ours}attn.{n}.weight", [f"{theirs}self_attn.{n}.weight"], False))
        for s in suffixes:
            b = s == "bias"
            pairs += [
                (f"{ours}attn.qkv.{s}", [f"{theirs}self_attn.{p}_proj.{s}" for p in "qkv"], b),
                (f"{ours}attn.proj.{s}", [f"{theirs}self_attn.o_proj.{s}"], b),
                (
                    f"{ours}mlp.fc.{s}",
                    [f"{theirs}mlp.gate_proj.{s}", f"{theirs}mlp.up_proj.{s}"],
                    b,
                ),
                (f"{ours}mlp.proj.{s}", [f"{theirs}mlp.down_proj.{s}"], b),
            ]
    pairs.append(("norm_f.weight", ["model.norm.weight"], False))
    if not config.tie_weights:
        pairs.append(("lm_head.weight", ["lm_head.weight"], False))
    return pairs


def _split_sizes(config: GPTConfig, n_parts: int) -> list[int]:
    """Rows of each transformers matrix inside one of our fused ones (qkv or gate|up)."""
    H, K, D = config.n_head, config.kv_heads, config.head_dim
    return [H * D, K * D, K * D] if n_parts == 3 else [config.hidden] * 2


def to_hf_state_dict(model: GPT) -> dict[str, Tensor]:
    """Our weights under transformers' names and layouts (tied head omitted)."""
    config = model.config
    ours = model.state_dict()
    out: dict[str, Tensor] = {}
    if twin_family(config) == "gpt2":
        for a, b, transpose, is_bias in _gpt2_pairs(config):
            if is_bias and a not in ours:  # bias=False: a zero bias computes the same
                weight = ours[a[: -len("bias")] + "weight"]
                out[b] = torch.zeros(weight.shape[0], dtype=weight.dtype, device=weight.device)
            elif a in ours:
                out[b] = ours[a].t().contiguous() if transpose else ours[a].clone()
        return out
    for a, names, _ in _rotary_pairs(config):
        if len(names) == 1:
            out[names[0]] = ours[a].clone()
            continue
        for name, part in zip(names, ours[a].split(_split_sizes(config, len(names)), dim=0)):
            out[name] = part.clone()
    return out


def _is_zero(t: Tensor) -> bool:
    return not bool(t.detach().ne(0).any())


def hf_biases_all_zero(config: GPTConfig, state: dict[str, Tensor]) -> bool:
    """Whether every bias tensor a transformers state dict holds for `config` is zero."""
    return all(_is_zero(t) for t in _hf_bias_tensors(config, state))


def _hf_bias_tensors(config: GPTConfig, state: dict[str, Tensor]) -> list[Tensor]:
    if _layout(config) == "gpt2":
        return [state[b] for _, b, _, is_bias in _gpt2_pairs(config) if is_bias and b in state]
    pairs = _rotary_pairs(dataclasses.replace(config, bias=True))
    return [state[n] for _, names, is_bias in pairs if is_bias for n in names if n in state]


def from_hf_state_dict(config: GPTConfig, state: dict[str, Tensor]) -> GPT:
    """Build our model for `config` with weights from a transformers state dict.

    With bias=True, bias tensors transformers does not have (Qwen3's MLP, Llama with
    attention_bias only) are zeros; with bias=False, any bias transformers has must be zero.
    """
    if not config.bias and not hf_biases_all_zero(config, state):
        raise TinyGPTError(
            "the transformers weights hold non-zero biases, but model.bias = false; "
            "load them with model.bias = true"
        )
    ours: dict[str, Tensor] = {}
    try:
        if _layout(config) == "gpt2":
            for a, b, transpose, is_bias in _gpt2_pairs(config):
                if is_bias and not config.bias:
                    continue
                ours[a] = state[b].t() if transpose else state[b]
        else:
            for a, names, is_bias in _rotary_pairs(config):
                # a missing bias is a zero one; unfused ones (o_proj, down_proj) have C entries
                sizes = _split_sizes(config, len(names)) if len(names) > 1 else [config.n_embd]
                ours[a] = torch.cat(
                    [
                        torch.zeros(size) if is_bias and n not in state else state[n]
                        for n, size in zip(names, sizes)
                    ],
                    dim=0,
                )
    except KeyError as exc:
        raise TinyGPTError(f"the transformers weights lack {exc.args[0]!r}") from None
    if config.tie_weights:
        ours["lm_head.weight"] = ours["tok_emb.weight"]
    model = GPT(config)
    model.load_state_dict({k: v.float() for k, v in ours.items()}, strict=True)
    return model


# ----------------------------------------------------------------------------- models


def from_hf_model(hf_model: Any) -> tuple[GPT, GPTConfig]:
    """Our model (eval mode, fp32) with the weights of an in-memory transformers model.

    A model whose bias tensors are all zero becomes bias=False (the same function).
    """
    config = config_from_hf(hf_model.config)
    state = hf_model.state_dict()
    if config.bias and hf_biases_all_zero(config, state):
        config = dataclasses.replace(config, bias=False)
    model = from_hf_state_dict(config, state)
    return model.eval(), config


def load_hf(path: str | Path) -> tuple[GPT, GPTConfig]:
    """Load a local transformers folder (GPT-2, Llama or Qwen3 family) into our model."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise TinyGPTError(
            f"{path} is not a transformers model folder (no config.json); "
            "give the folder that save_pretrained wrote"
        )
    tf = _transformers()
    hf_config = tf.AutoConfig.from_pretrained(path, local_files_only=True)
    config_from_hf(hf_config)  # fail early, before loading weights, on unsupported models
    with _quiet(tf):
        hf_model = tf.AutoModelForCausalLM.from_pretrained(
            path, local_files_only=True, dtype=torch.float32
        )
    return from_hf_model(hf_model)


def to_hf_model(model: GPT, eot_id: int | None = None) -> Any:
    """An in-memory transformers twin of our model (eval mode) with the same weights."""
    tf = _transformers()
    hf_config = hf_config_for(model.config, eot_id=eot_id)
    cls = getattr(tf, HF_CLASSES[hf_config.model_type])
    hf_model = cls(hf_config)
    missing, unexpected = hf_model.load_state_dict(to_hf_state_dict(model), strict=False)
    # The tied head is the only tensor we leave out; anything else is a mapping bug.
    missing = [k for k in missing if not (model.config.tie_weights and k == "lm_head.weight")]
    if missing or unexpected:
        raise TinyGPTError(f"weight mapping mismatch: missing {missing}, unexpected {unexpected}")
    if model.config.tie_weights:
        hf_model.tie_weights()
    return hf_model.to(next(model.parameters()).device).eval()
