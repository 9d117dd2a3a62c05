"""Analytic accounting of a model configuration: parameters, FLOPs, memory.

Owns the arithmetic behind `tinygpt info` (and the numbers the docs and reports quote):
`param_breakdown`, `flops_per_token`, `memory_estimate`, `kv_cache_bytes_per_token`, and
`format_info` for the readable table. Everything is computed from a `GPTConfig` alone, without
building the model; tests check the counts against the real module. It knows nothing about
run folders, presets or files (the command line resolves those into a config).

Conventions:

- Parameters: tied weights are counted once (under the token embedding).
  "non_embedding" leaves out the position table and, when untied, the token table; with a
  tied head the shared matrix is still counted, as GPT-2's published numbers do.
- FLOPs: only matrix multiplications, 2*m*n*k each (a multiply and an add); norms,
  softmax, activations and embeddings are left out (a few per cent at these sizes).
  Attention is counted *dense at full context*: each token's query is scored against all
  `context` keys and weights `context` values, as the kernels compute for a full-length
  sequence with a causal mask (the mask saves no multiplications). `forward_causal` counts
  only the keys a causal token actually sees, averaged over positions: (context + 1) / 2.
  Training is 3x forward: the backward pass computes two matmuls per forward matmul
  (gradients of the input and of the weight).
- Memory: bytes, approximate for activations (the tensors autograd keeps for the
  backward pass, per the layer structure in `tinygpt.core.model`).
"""

from __future__ import annotations

from typing import Any

import torch

from tinygpt.core.errors import TinyGPTError
from tinygpt.core.model import GPTConfig

DTYPE_BYTES = {
    "float32": 4,
    "fp32": 4,
    "bfloat16": 2,
    "bf16": 2,
    "float16": 2,
    "fp16": 2,
    "int8": 1,
}


def dtype_bytes(dtype: str | torch.dtype) -> int:
    if isinstance(dtype, torch.dtype):
        return dtype.itemsize
    if dtype not in DTYPE_BYTES:
        raise TinyGPTError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPE_BYTES)}")
    return DTYPE_BYTES[dtype]


def _norm_params(config: GPTConfig, dim: int) -> int:
    with_bias = config.norm == "layernorm" and config.bias
    return 2 * dim if with_bias else dim


def param_breakdown(config: GPTConfig) -> dict[str, Any]:
    """Parameters per component; `total` equals `GPT(config).num_params()`.

    >>> param_breakdown(GPTConfig(vocab_size=10, block_size=4, n_layer=1, n_head=1,
    ...                           n_embd=2))["total"]
    106
    """
    C, H, K, D, V = (
        config.n_embd,
        config.n_head,
        config.kv_heads,
        config.head_dim,
        config.vocab_size,
    )
    b = 1 if config.bias else 0
    qkv_out = (H + 2 * K) * D
    attention = C * qkv_out + b * qkv_out + C * C + b * C
    if config.qk_norm:
        attention += 2 * D
    n_in = 2 * config.hidden if config.mlp == "swiglu" else config.hidden
    mlp = C * n_in + b * n_in + config.hidden * C + b * C
    norms = 2 * _norm_params(config, C)
    block = attention + mlp + norms
    out: dict[str, Any] = {
        "token_embedding": V * C,
        "position_embedding": config.block_size * C if config.pos == "learned" else 0,
        "per_block": {"attention": attention, "mlp": mlp, "norms": norms, "total": block},
        "blocks": config.n_layer * block,
        "final_norm": _norm_params(config, C),
        "lm_head": 0 if config.tie_weights else V * C,
    }
    out["total"] = (
        out["token_embedding"]
        + out["position_embedding"]
        + out["blocks"]
        + out["final_norm"]
        + out["lm_head"]
    )
    out["non_embedding"] = (
        out["total"]
        - out["position_embedding"]
        - (0 if config.tie_weights else out["token_embedding"])
    )
    return out


def flops_per_token(config: GPTConfig, context: int | None = None) -> dict[str, int]:
    """Matmul FLOPs per token at `context` (default block_size); see the module docstring.

    Keys: attention_linear (q/k/v and output projections), attention_scores (QK^T and the
    weighted sum of V, dense), mlp, lm_head, forward, forward_causal, training.
    """
    T = context or config.block_size
    C, H, K, D, V = (
        config.n_embd,
        config.n_head,
        config.kv_heads,
        config.head_dim,
        config.vocab_size,
    )
    L = config.n_layer
    n_in = 2 * config.hidden if config.mlp == "swiglu" else config.hidden
    attention_linear = L * 2 * (C * (H + 2 * K) * D + C * C)
    scores = L * 2 * 2 * T * H * D  # q.k for T keys, then T values weighted, per head
    causal_scores = L * 2 * 2 * H * D * (T + 1) // 2
    mlp = L * 2 * (C * n_in + config.hidden * C)
    lm_head = 2 * C * V
    forward = attention_linear + scores + mlp + lm_head
    return {
        "context": T,
        "attention_linear": attention_linear,
        "attention_scores": scores,
        "mlp": mlp,
        "lm_head": lm_head,
        "forward": forward,
        "forward_causal": forward - scores + causal_scores,
        "training": 3 * forward,
    }


def kv_cache_bytes_per_token(config: GPTConfig, dtype: str | torch.dtype = "float32") -> int:
    """Keys and values of one token in every layer: 2 * n_layer * K * D * bytes."""
    return 2 * config.n_layer * config.kv_heads * config.head_dim * dtype_bytes(dtype)


def memory_estimate(
    config: GPTConfig,
    batch: int = 1,
    context: int | None = None,
    dtype: str | torch.dtype = "float32",
) -> dict[str, int]:
    """Bytes for weights, training state, activations and the KV cache.

    - weights: parameters in `dtype`.
    - training_state: fp32 weights, fp32 gradients and AdamW's two fp32 moments
      (16 bytes per parameter), as mixed-precision training keeps fp32 masters.
    - training_activations: tensors saved for the backward pass in `dtype`, per layer
      B*T*(5C + (H+2K)*D + MLP widths) (norm inputs/outputs, qkv, attention output,
      MLP hidden), plus B*H*T*T attention probabilities with attn="manual", plus the
      fp32 logits and their softmax (2*B*T*V*4).
    - inference_kv_cache: a cache for batch x context tokens.
    """
    T = context or config.block_size
    if batch < 1 or T < 1:
        raise TinyGPTError(f"batch and context must be positive, got {batch} and {T}")
    if config.block_size < T:
        raise TinyGPTError(
            f"context {T} is longer than the model's block_size {config.block_size}; "
            "give --context at most block_size"
        )
    nbytes = dtype_bytes(dtype)
    params = param_breakdown(config)["total"]
    C, H, K, D = config.n_embd, config.n_head, config.kv_heads, config.head_dim
    n_in = 2 * config.hidden if config.mlp == "swiglu" else config.hidden
    per_layer = batch * T * (5 * C + (H + 2 * K) * D + n_in + config.hidden)
    if config.attn == "manual":
        per_layer += batch * H * T * T
    activations = (config.n_layer * per_layer + 2 * batch * T * C) * nbytes
    activations += 2 * batch * T * config.vocab_size * 4
    return {
        "batch": batch,
        "context": T,
        "dtype_bytes": nbytes,
        "weights": params * nbytes,
        "training_state": params * 16,
        "training_activations": activations,
        "training_total": params * 16 + activations,
        "inference_kv_cache": batch * T * kv_cache_bytes_per_token(config, dtype),
    }


def model_info(
    config: GPTConfig, batch: int = 1, context: int | None = None, dtype: str = "float32"
) -> dict[str, Any]:
    """Everything `tinygpt info` shows, as one JSON-ready dict."""
    return {
        "config": {k: getattr(config, k) for k in config.__dataclass_fields__},
        "head_dim": config.head_dim,
        "mlp_hidden": config.hidden,
        "params": param_breakdown(config),
        "flops_per_token": flops_per_token(config, context),
        "memory": memory_estimate(config, batch, context, dtype),
        "kv_cache_bytes_per_token": {
            name: kv_cache_bytes_per_token(config, name) for name in ("float32", "bfloat16")
        },
    }


def _human(n: float, unit: str = "") -> str:
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {suffix}{unit}"
    return f"{n:.0f} {unit}".rstrip()


def _bytes(n: int) -> str:
    for scale, suffix in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if n >= scale:
            return f"{n / scale:.2f} {suffix}"
    return f"{n} B"


def format_info(info: dict[str, Any], title: str = "") -> str:
    """The readable table of `model_info`'s dict."""
    c, p = info["config"], info["params"]
    f, m = info["flops_per_token"], info["memory"]
    lines = [title] if title else []
    lines.append(
        f"{c['n_layer']} layers, {c['n_head']} heads ({c['n_kv_head'] or c['n_head']} kv), "
        f"{c['n_embd']} wide, head dim {info['head_dim']}, MLP {c['mlp']} {info['mlp_hidden']}, "
        f"context {c['block_size']}, vocab {c['vocab_size']}, {c['pos']} positions, "
        f"{c['norm']}, bias {c['bias']}, tied {c['tie_weights']}"
    )
    pb = p["per_block"]
    rows = [
        ("parameters", "", ""),
        (
            "  token embedding",
            f"{p['token_embedding']:,}",
            "shared with the head" if c["tie_weights"] else "",
        ),
        ("  position embedding", f"{p['position_embedding']:,}", ""),
        ("  per block: attention", f"{pb['attention']:,}", ""),
        ("  per block: MLP", f"{pb['mlp']:,}", ""),
        ("  per block: norms", f"{pb['norms']:,}", ""),
        (f"  {c['n_layer']} blocks", f"{p['blocks']:,}", ""),
        ("  final norm", f"{p['final_norm']:,}", ""),
        ("  LM head", f"{p['lm_head']:,}", "tied: counted once" if c["tie_weights"] else ""),
        ("  total", f"{p['total']:,}", _human(p["total"])),
        ("  non-embedding", f"{p['non_embedding']:,}", ""),
        (f"FLOPs per token (context {f['context']})", "", ""),
        ("  forward", f"{f['forward']:,}", _human(f["forward"], "FLOP") + ", dense attention"),
        ("  forward (causal average)", f"{f['forward_causal']:,}", ""),
        ("  training (3x forward)", f"{f['training']:,}", _human(f["training"], "FLOP")),
        (
            f"memory (batch {m['batch']}, context {m['context']}, {m['dtype_bytes']}-byte values)",
            "",
            "",
        ),
        ("  weights", _bytes(m["weights"]), ""),
        ("  training state", _bytes(m["training_state"]), "fp32 weights, grads, AdamW"),
        ("  training activations", _bytes(m["training_activations"]), "approximate"),
        ("  training total", _bytes(m["training_total"]), ""),
        ("  KV cache", _bytes(m["inference_kv_cache"]), ""),
        ("KV cache per token", "", ""),
        ("  float32", _bytes(info["kv_cache_bytes_per_token"]["float32"]), ""),
        ("  bfloat16", _bytes(info["kv_cache_bytes_per_token"]["bfloat16"]), ""),
    ]
    width = max(len(r[0]) for r in rows if r[1])
    for name, value, note in rows:
        if not value:
            lines.append(name)
        else:
            lines.append(f"{name:<{width}}  {value:>16}  {note}".rstrip())
    return "\n".join(lines)
