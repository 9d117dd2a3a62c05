"""The GPT model: configuration, layers, blocks and the full network, top to bottom.

This module owns the architecture and its forward pass, nothing else. It knows nothing about
tokenizers, files, optimizers, sampling or export formats: those wrap the model from outside
(`tinygpt.infer.generate`, `tinygpt.core.checkpoint`, `tinygpt.export`).

One configuration covers two families and their mixtures:

- GPT-2: learned positions, LayerNorm, tanh-GELU MLP, biases, tied head.
- Llama: rotary positions (RoPE), RMSNorm, SwiGLU MLP, no biases, grouped-query attention.

Shape alphabet, used in every comment below:
    B batch, T time (sequence length; T_k for keys when it differs from the queries),
    C channels (n_embd), H query heads, K key/value heads, D head dim (C // H), V vocab.

Initialisation (GPT-2, Radford et al. 2019, as in nanoGPT) lives in one place,
`GPT._init_weights`: every weight matrix and embedding ~ N(0, init_std), biases zero, norm
gains one, and the two projections that write into the residual stream (attention output,
MLP output) use init_std / sqrt(2 * n_layer), so the residual's variance does not grow
with depth.

KV cache: `GPT.new_cache(batch, max_len)` returns a `KVCache` holding, per layer,
preallocated key and value tensors of shape (B, K, max_len, D) and a length per row, `lens`
(B,). Row b holds the keys/values of its positions [0, lens[b]); a forward pass with `cache=`
writes the new tokens after them and attends to everything cached so far. Feeding the prompt
(prefill, in one or several chunks) and then one token at a time (decode) gives the same
logits as one forward pass over the whole sequence.

Batches of different sequences. Rows of one batch may sit at different positions: prompts
of different lengths are left-padded and passed with `attention_mask` (B, T), 1 for real
tokens and 0 for padding (the convention of transformers); `positions` (B, T) may be given,
and defaults to each token's index among its row's real tokens. Padding is seen by no real
token and never enters the cache, so each row gets the logits it would get alone. Without
a mask and with every cached row at the same length, the forward pass takes the plain path
(one slice of the position tables, SDPA's own causal mask), as in training.
"""

from __future__ import annotations

import copy
import math
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tinygpt.core.config import GPTConfig
from tinygpt.core.errors import TinyGPTError

# ---------------------------------------------------------------------------------- leaves


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * g (Zhang & Sennrich 2019): LayerNorm without centring."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        # Normalise in fp32 so that low-precision inputs do not lose the small mean square.
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


def make_norm(config: GPTConfig, dim: int) -> nn.Module:
    if config.norm == "rmsnorm":
        return RMSNorm(dim, config.norm_eps)
    return nn.LayerNorm(dim, eps=config.norm_eps, bias=config.bias)


def rope_tables(config: GPTConfig) -> tuple[Tensor, Tensor]:
    """cos and sin of the rotation angles pos * theta^(-2i/D), each (block_size, D).

    The D/2 frequencies are written twice, [f0..f_{D/2-1}, f0..f_{D/2-1}], because we pair
    dimension i with i + D/2 ("rotate half", as Llama's reference code and transformers do).
    """
    D = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, D, 2, dtype=torch.float32) / D))
    t = torch.arange(config.block_size, dtype=torch.float32)
    angles = torch.outer(t, inv_freq)  # (T, D/2)
    angles = torch.cat([angles, angles], dim=-1)  # (T, D)
    return angles.cos(), angles.sin()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate each pair (x_i, x_{i+D/2}) by its angle. x (B, H, T, D); cos/sin (T, D) when
    every row is at the same positions, (B, 1, T, D) when each row has its own."""
    x1, x2 = x.chunk(2, dim=-1)  # (B, H, T, D/2) each
    rotated = torch.cat([-x2, x1], dim=-1)  # (B, H, T, D)
    return x * cos.to(x.dtype) + rotated * sin.to(x.dtype)


class KVCache:
    """Keys and values of the tokens seen so far, per layer and per row, for incremental decoding.

    k[i], v[i]: (B, K, max_len, D) for layer i, preallocated and written in place.
    lens: (B,) long; row b holds its positions [0, lens[b]) in slots [0, lens[b]) (a slot is a
    position: padding is never stored). Rows may hold different lengths: left-padded prompts
    of different lengths, or the rows of a continuous batch, which join and leave between
    decoding steps (`narrow` gives a view of some rows, `copy_row` moves a row).

    The model talks to a cache through two calls per forward pass: `prepare(T, real)` once,
    which places the T new tokens and returns their positions and the attention mask, then
    `update(layer, k, v)` in every layer, which stores the new keys/values and returns all of
    the row's keys/values so far. Another cache layout (say, the concatenated past tensors of
    an exported graph) can stand in for this one by offering the same two calls.
    """

    def __init__(
        self,
        n_layer: int,
        batch: int,
        n_kv_head: int,
        max_len: int,
        head_dim: int,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        shape = (batch, n_kv_head, max_len, head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.lens = torch.zeros(batch, dtype=torch.long, device=device)  # (B,)
        self.max_len = max_len
        self._start = 0  # the plan of the current forward pass, made by prepare()
        self._writes: tuple[Tensor, Tensor, Tensor] | None = None
        self._keys = 0

    @property
    def batch(self) -> int:
        return self.lens.size(0)

    @property
    def pos(self) -> int:
        """The length every row holds; an error when rows hold different lengths."""
        lo, hi = self._span()
        if lo != hi:
            raise TinyGPTError(
                f"the rows of this cache hold different lengths ({lo} to {hi}); read cache.lens"
            )
        return hi

    def _span(self) -> tuple[int, int]:
        """The shortest and the longest row."""
        if not self.batch:
            return 0, 0
        lo, hi = torch.aminmax(self.lens)
        return int(lo), int(hi)

    def reset(self, rows: Tensor | None = None) -> None:
        """Empty every row, or the rows selected by `rows` (a (B,) bool mask or indices).
        Stale entries beyond a row's length are never read."""
        if rows is None:
            self.lens.zero_()
        else:
            self.lens[rows] = 0

    def narrow(self, start: int, length: int) -> KVCache:
        """A cache over rows [start, start + length) that shares this one's memory."""
        view = copy.copy(self)
        view.k = [t.narrow(0, start, length) for t in self.k]
        view.v = [t.narrow(0, start, length) for t in self.v]
        view.lens = self.lens.narrow(0, start, length)
        return view

    def copy_row(self, src: int, dst: int) -> None:
        """Copy row `src` (its keys, values and length) over row `dst`."""
        n = int(self.lens[src])
        for t in (*self.k, *self.v):
            t[dst, :, :n] = t[src, :, :n]
        self.lens[dst] = n

    def prepare(self, T: int, real: Tensor | None) -> tuple[int | Tensor, Tensor | None]:
        """Place T new tokens per row after the cached ones. real (B, T) bool marks the real
        tokens (None: all are). Returns (positions, mask):

        - every row at the same length and no padding: (start, None), the new tokens are at
          positions start .. start+T-1 of every row and the causal mask follows from shapes;
        - otherwise ((B, T) positions, (B, 1, T, T_k) bool mask, True where a query may see a
          key). Slot = position, so a query at position p sees the keys in slots [0, p]. A
          padding query gets the position of the real token before it (0 if none), so that it
          sees at least one key and its softmax stays finite (padding rows produce no NaN).
        """
        lo, hi = self._span()
        if real is None and lo == hi:
            if hi + T > self.max_len:
                raise _too_long(hi + T, self.max_len)
            self._start, self._writes, self._keys = hi, None, hi + T
            self.lens += T
            return hi, None
        B, device = self.batch, self.lens.device
        if real is None:
            count = torch.arange(1, T + 1, device=device).expand(B, T)  # (B, T)
            rows = torch.arange(B, device=device).repeat_interleave(T)  # (N,), N = B*T
            cols = torch.arange(T, device=device).repeat(B)  # (N,)
        else:
            count = real.long().cumsum(1)  # (B, T): real tokens up to and including t
            rows, cols = real.nonzero(as_tuple=True)  # (N,) each: where the real tokens are
        positions = (self.lens[:, None] + count - 1).clamp(min=0)  # (B, T)
        new_lens = self.lens + count[:, -1]  # (B,)
        keys = int(new_lens.max())
        if keys > self.max_len:
            raise _too_long(keys, self.max_len)
        self._writes = (rows, cols, positions[rows, cols])
        self._keys = keys
        self.lens.copy_(new_lens)
        slots = torch.arange(keys, device=device)  # (T_k,)
        mask = slots <= positions[:, :, None]  # (B, T, T_k)
        return positions, mask[:, None]  # (B, 1, T, T_k): the same mask for every head

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store k, v (B, K, T, D) as prepare() placed them; return the keys/values of
        slots [0, T_k) of every row, (B, K, T_k, D), T_k = the longest row after this step."""
        keys, values = self.k[layer], self.v[layer]
        if self._writes is None:
            keys[:, :, self._start : self._keys] = k
            values[:, :, self._start : self._keys] = v
        else:
            rows, cols, slots = self._writes  # the N real tokens: batch row, column, slot
            # Indexing (B, K, L, D) with rows and slots around a slice gives (N, K, D).
            keys[rows, :, slots] = k.transpose(1, 2)[rows, cols]  # (N, K, D)
            values[rows, :, slots] = v.transpose(1, 2)[rows, cols]  # (N, K, D)
        return keys[:, :, : self._keys], values[:, :, : self._keys]


def _too_long(n: int, limit: int) -> TinyGPTError:
    return TinyGPTError(
        f"sequence of {n} tokens is longer than the model's context of {limit}; "
        f"crop the input to its last {limit} tokens"
    )


# ---------------------------------------------------------------------------------- layers


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with grouped-query heads and two kernels.

    `attn="manual"` spells the computation out (scores, mask, softmax, weighted sum) and,
    when `keep_attn` is set, stores the probabilities of its last call in `last_attn`
    (B, H, T, T_k) for attention pictures. `attn="sdpa"` calls PyTorch's fused kernel.

    `mask` (B, 1, T, T_k) bool, True where a query may see a key, is given when rows differ
    (padding, rows at different positions); it already holds the causal rule. Without it the
    mask is causal, aligned bottom-right when there are fewer queries than keys.
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.kv_heads, config.head_dim
        self.kind = config.attn
        self.dropout = config.dropout
        # Queries, keys and values in one matmul: H*D + 2*K*D outputs.
        qkv_out = (self.n_head + 2 * self.n_kv_head) * self.head_dim
        self.qkv = nn.Linear(config.n_embd, qkv_out, bias=config.bias)
        self.proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.q_norm = RMSNorm(self.head_dim, config.norm_eps) if config.qk_norm else None
        self.k_norm = RMSNorm(self.head_dim, config.norm_eps) if config.qk_norm else None
        self.resid_drop = nn.Dropout(config.dropout)
        self.keep_attn = False
        self.last_attn: Tensor | None = None

    def forward(
        self,
        x: Tensor,
        rope: tuple[Tensor, Tensor] | None,
        cache: KVCache | None,
        layer: int,
        mask: Tensor | None = None,
    ) -> Tensor:
        B, T, C = x.shape
        H, K, D = self.n_head, self.n_kv_head, self.head_dim
        q, k, v = self.qkv(x).split([H * D, K * D, K * D], dim=-1)  # (B, T, H*D), (B, T, K*D) x2
        q = q.view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
        k = k.view(B, T, K, D).transpose(1, 2)  # (B, K, T, D)
        v = v.view(B, T, K, D).transpose(1, 2)  # (B, K, T, D)
        if self.q_norm is not None and self.k_norm is not None:  # both or neither
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if cache is not None:
            k, v = cache.update(layer, k, v)  # (B, K, T_k, D), T_k = cached + T
        if self.kind == "manual" or self.keep_attn:
            y = self._manual(q, k, v, mask)
        else:
            y = self._sdpa(q, k, v, mask)
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, H, T, D) -> (B, T, C)
        return self.resid_drop(self.proj(y))

    def _sdpa(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
        T, T_k = q.size(2), k.size(2)
        drop = self.dropout if self.training else 0.0
        gqa = self.n_kv_head != self.n_head
        if mask is not None:
            return F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=drop, enable_gqa=gqa
            )
        if T_k == T:
            return F.scaled_dot_product_attention(
                q, k, v, is_causal=True, dropout_p=drop, enable_gqa=gqa
            )
        # With fewer queries than keys, is_causal=True would align the mask top-left
        # (query 0 sees key 0 only). Our queries are the *last* T positions, so the mask
        # must be aligned bottom-right. A single query sees every cached key: no mask.
        mask = None if T == 1 else causal_mask(T, T_k, q.device)
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=drop, enable_gqa=gqa
        )

    def _manual(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
        T, T_k = q.size(2), k.size(2)
        if self.n_kv_head != self.n_head:
            # Each group of H/K query heads shares one key/value head.
            k = k.repeat_interleave(self.n_head // self.n_kv_head, dim=1)  # (B, H, T_k, D)
            v = v.repeat_interleave(self.n_head // self.n_kv_head, dim=1)  # (B, H, T_k, D)
        # Scaled dot products (Vaswani et al. 2017, eq. 1): 1/sqrt(D) keeps their variance ~1.
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)  # (B, H, T, T_k)
        if mask is None:
            mask = causal_mask(T, T_k, q.device)  # (T, T_k)
        # Every query sees at least one key (itself), so no row of the softmax is all -inf.
        scores = scores.masked_fill(~mask, float("-inf"))
        att = F.softmax(scores.float(), dim=-1).to(q.dtype)  # (B, H, T, T_k)
        if self.keep_attn:
            self.last_attn = att.detach()
        if self.training and self.dropout > 0:
            att = F.dropout(att, self.dropout)
        return att @ v  # (B, H, T, T_k) @ (B, H, T_k, D) -> (B, H, T, D)


def causal_mask(T: int, T_k: int, device: torch.device | str = "cpu") -> Tensor:
    """(T, T_k) bool, True where query i (the (T_k - T + i)-th position) may see key j.

    >>> causal_mask(2, 3).int().tolist()
    [[1, 1, 0], [1, 1, 1]]
    """
    return torch.ones(T, T_k, dtype=torch.bool, device=device).tril(diagonal=T_k - T)


def padding_mask(key_real: Tensor, T: int) -> Tensor:
    """key_real (B, T_k) bool, True for real keys; the queries are the last T of the T_k
    positions. -> (B, 1, T, T_k) bool: query i sees the real keys up to itself, and itself
    even when it is padding, so that a padding query has a finite softmax (its output is
    never used, but a NaN would reach real tokens through the next layer's values).

    >>> padding_mask(torch.tensor([[False, True, True]]), 3)[0, 0].int().tolist()
    [[1, 0, 0], [0, 1, 0], [0, 1, 1]]
    """
    T_k, device = key_real.size(1), key_real.device
    causal = causal_mask(T, T_k, device)  # (T, T_k)
    keys = torch.arange(T_k, device=device)  # (T_k,)
    itself = keys == torch.arange(T_k - T, T_k, device=device)[:, None]  # (T, T_k)
    return ((causal & key_real[:, None, :]) | itself)[:, None]  # (B, 1, T, T_k)


class MLP(nn.Module):
    """Position-wise feed-forward: GELU(x W1) W2, or SwiGLU: (SiLU(x Wg) * x Wu) W2."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.kind = config.mlp
        n_in = 2 * config.hidden if config.mlp == "swiglu" else config.hidden
        # For SwiGLU the gate and up projections share one matmul: [gate | up].
        self.fc = nn.Linear(config.n_embd, n_in, bias=config.bias)
        self.proj = nn.Linear(config.hidden, config.n_embd, bias=config.bias)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        h = self.fc(x)  # (B, T, hidden) or (B, T, 2*hidden)
        if self.kind == "swiglu":
            gate, up = h.chunk(2, dim=-1)  # (B, T, hidden) each
            h = F.silu(gate) * up  # Shazeer 2020, "GLU variants improve transformer"
        else:
            h = F.gelu(h, approximate="tanh" if self.kind == "gelu_tanh" else "none")
        return self.drop(self.proj(h))  # (B, T, C)


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.norm1 = make_norm(config, config.n_embd)
        self.attn = CausalSelfAttention(config)
        self.norm2 = make_norm(config, config.n_embd)
        self.mlp = MLP(config)

    def forward(
        self,
        x: Tensor,
        rope: tuple[Tensor, Tensor] | None,
        cache: KVCache | None,
        layer: int,
        mask: Tensor | None = None,
    ) -> Tensor:
        x = x + self.attn(self.norm1(x), rope, cache, layer, mask)
        return x + self.mlp(self.norm2(x))


# ---------------------------------------------------------------------------------- model


class GPT(nn.Module):
    """Token embedding (+ learned positions), n_layer blocks, final norm, LM head."""

    # Buffers registered in __init__ when config.pos == "rope".
    rope_cos: Tensor
    rope_sin: Tensor

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.n_embd)
        self.pos_emb = (
            nn.Embedding(config.block_size, config.n_embd) if config.pos == "learned" else None
        )
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.norm_f = make_norm(config, config.n_embd)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_weights:
            # Press & Wolf 2017: one matrix embeds tokens and scores them.
            self.lm_head.weight = self.tok_emb.weight
        if config.pos == "rope":
            cos, sin = rope_tables(config)
            # Derived from the config, so not saved with the weights.
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.init_std
        if isinstance(module, nn.Linear):
            residual = module in {
                m for b in self.block_modules() for m in (b.attn.proj, b.mlp.proj)
            }
            scale = 1.0 / math.sqrt(2 * self.config.n_layer) if residual else 1.0
            nn.init.normal_(module.weight, mean=0.0, std=std * scale)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)

    def block_modules(self) -> list[Block]:
        """The blocks, typed (an nn.ModuleList yields plain modules)."""
        return [cast(Block, b) for b in self.blocks]

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameters, tied weights counted once; non_embedding drops the position table
        (and, when untied, the token table), as in GPT-2's and Kaplan et al.'s counts."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            if self.pos_emb is not None:
                n -= self.pos_emb.weight.numel()
            if not self.config.tie_weights:
                n -= self.tok_emb.weight.numel()
        return n

    def new_cache(
        self,
        batch: int,
        max_len: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> KVCache:
        c = self.config
        weight = self.tok_emb.weight
        return KVCache(
            c.n_layer,
            batch,
            c.kv_heads,
            min(max_len or c.block_size, c.block_size),
            c.head_dim,
            device=device or weight.device,
            dtype=dtype or weight.dtype,
        )

    def forward(
        self,
        idx: Tensor,
        targets: Tensor | None = None,
        *,
        cache: KVCache | None = None,
        last_only: bool = False,
        positions: Tensor | None = None,
        attention_mask: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """idx (B, T) token ids -> (logits (B, T, V) float32, mean cross-entropy or None).

        targets (B, T): next-token ids, -1 where no loss is wanted. With `cache`, idx holds
        the tokens after the cached ones. `last_only` returns logits for the last position
        only, (B, 1, V), which is all that generation needs.

        attention_mask (B, T): 1 (or True) for real tokens, 0 for padding. No real token sees
        padding, padding never enters the cache, and the logits at padding are meaningless.
        positions (B, T): each token's position (for learned positions and RoPE); by default
        its index among its row's real tokens, counting those already in the cache.
        """
        B, T = idx.shape
        real = None
        if attention_mask is not None:
            if tuple(attention_mask.shape) != (B, T):
                raise TinyGPTError(
                    f"attention_mask has shape {tuple(attention_mask.shape)} but the input ids "
                    f"have {(B, T)}; give one 0/1 flag per input token"
                )
            real = attention_mask.to(device=idx.device, dtype=torch.bool)  # (B, T)
        if cache is not None:
            # int: every row's new tokens start at this position; else (B, T) positions.
            where, mask = cache.prepare(T, real)
        else:
            if idx.size(1) > self.config.block_size:
                raise _too_long(T, self.config.block_size)
            where, mask = 0, None
            if real is not None:
                where = (real.long().cumsum(1) - 1).clamp(min=0)  # (B, T)
                mask = padding_mask(real, T)  # (B, 1, T, T)
        if positions is not None:
            where = self._check_positions(positions, B, T)
        x = self.tok_emb(idx)  # (B, T, C)
        rope = None
        if isinstance(where, int):  # the same positions in every row: slice the tables
            span = slice(where, where + T)
            if self.pos_emb is not None:
                x = x + self.pos_emb.weight[span]  # (B, T, C) + (T, C)
            if self.config.pos == "rope":
                rope = (self.rope_cos[span], self.rope_sin[span])  # (T, D) each
        else:  # positions per row: gather rows of the tables
            if self.pos_emb is not None:
                x = x + self.pos_emb(where)  # (B, T, C) + (B, T, C)
            if self.config.pos == "rope":
                # (B, T, D) -> (B, 1, T, D): one table row per token, shared by the heads.
                rope = (self.rope_cos[where].unsqueeze(1), self.rope_sin[where].unsqueeze(1))
        x = self.drop(x)
        for i, block in enumerate(self.blocks):
            x = block(x, rope, cache, i, mask)
        if last_only:
            x = x[:, -1:]  # (B, 1, C)
        logits = self.lm_head(self.norm_f(x)).float()  # (B, T, V)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(
                logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1
            )
        return logits, loss

    def _check_positions(self, positions: Tensor, B: int, T: int) -> Tensor:
        if tuple(positions.shape) != (B, T):
            raise TinyGPTError(
                f"positions has shape {tuple(positions.shape)} but the input ids have {(B, T)}; "
                "give one position per input token"
            )
        positions = positions.to(device=self.tok_emb.weight.device, dtype=torch.long)
        if torch.compiler.is_compiling():
            # An export or compile traces symbolic values: a check of data would stop it.
            return positions
        lo, hi = (int(p) for p in torch.aminmax(positions))
        if lo < 0 or hi >= self.config.block_size:
            raise TinyGPTError(
                f"positions must lie in [0, {self.config.block_size}) (the model's context), "
                f"got {lo} to {hi}"
            )
        return positions

    @torch.no_grad()
    def attention_maps(self, idx: Tensor) -> list[Tensor]:
        """Attention probabilities of every layer for idx (B, T): a list of (B, H, T, T).

        Runs one forward pass through the manual kernel (SDPA does not expose its weights).
        """
        layers = [b.attn for b in self.block_modules()]
        for a in layers:
            a.keep_attn = True
        try:
            self(idx)
            # keep_attn routes every layer through the manual kernel, which sets last_attn.
            return [cast(Tensor, a.last_attn) for a in layers]
        finally:
            for a in layers:
                a.keep_attn, a.last_attn = False, None
