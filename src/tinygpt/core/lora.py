"""LoRA: low-rank adapters trained beside a frozen base, applied from outside the model.

Owns: which projections of a `tinygpt.core.model.GPT` can be adapted (`valid_targets`), the
settings and their checks (`LoraSettings`, `check_settings`), wrapping a model
(`apply_lora`): every base weight frozen, a pair of small matrices beside each chosen
projection, and trainable rows for the special tokens a chat template added; and folding the
adapters into plain weights (`merge_lora`). A LoRA run's link to its base (finding it,
refusing one that moved or changed, rebuilding base + adapter) is the run loader's
(`tinygpt.infer.loader`); writing a merged copy as a plain run is `tinygpt.export.merge`'s.
It knows nothing about files, data, the training loop (`tinygpt.train.loop.fit` trains the
adapted model like any other: the optimiser sees only parameters with `requires_grad`) or the
CLI; `model.py` never learns that it is adapted.

The adapter (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models", eq. 3):
a frozen projection y = x W^T + b gains a trainable update of rank r,

    y = x W^T + b + (alpha / r) * (dropout(x) A^T) B^T,    A (r, in), B (out, r),

A drawn like a fresh `nn.Linear`'s weight (uniform in ±1/sqrt(in), as the authors'
`loralib` does) and B zero, so that training starts from the base exactly. Merging writes
W + (alpha / r) B A into W: one matmul per layer, after which the model is a plain GPT.

Fused projections. Our attention computes queries, keys and values in one matmul (`qkv`,
outputs [H*D | K*D | K*D]) and SwiGLU's `fc` computes [gate | up]: each slice gets its own
adapter, so `targets=("q", "v")` adapts the query and value columns of `qkv` and leaves the
key columns exactly as the base computes them. Targets: q, k, v, o (attention output),
gate and up (SwiGLU; a GELU MLP has only up), down (the MLP's output).

New token rows. A chat template's special tokens get new rows in the embedding (and in an
untied head); a frozen embedding would leave them at their initial values, so those rows —
and only those — train, as a separate small parameter (`rows`) beside the frozen rows of the
base. A tied head shares the same two tensors, so the base's rows stay bit-identical
whatever the optimiser does (weight decay included), and the new ones train once.

Checkpoints. An adapted model's `state_dict()` holds only what trains (the adapters and the
new rows), so every checkpoint of a LoRA run is the adapter — a few hundred kilobytes — and
loading such a state into the adapted model sets those and leaves the base as it is. The run
folder's `adapter.json` (`tinygpt.core.run.RunDir.adapter_path`) says what the adapter is and
where its base is: the run folder and checkpoint, and the sha256 of the base's weights,
checked on every load.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tinygpt.core.config import GPTConfig
from tinygpt.core.errors import TinyGPTError
from tinygpt.core.model import GPT
from tinygpt.core.numbers import Range, check

FORMAT = "tinygpt-lora"
FORMAT_VERSION = 1
TARGETS = ("q", "k", "v", "o", "gate", "up", "down")
DEFAULT_RANK = 8
DEFAULT_DROPOUT = 0.05
RANK = Range(lo=1, hi=65536, integer=True, why="a rank is at most a layer's width")
ALPHA = Range(lo=0, lo_open=True)
DROPOUT = Range(lo=0, hi=1, hi_open=True)


# ----------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class LoraSettings:
    """What to adapt and how: `rank` r (None: 8), `alpha` (the update is scaled by
    alpha / r; None: twice the rank), `dropout` on the adapters' input (None: 0.05), and
    `targets` (names from `TARGETS`; empty: every projection the model has). `resolved`
    fills in what was left to its default; a resumed fine-tune compares only what was given."""

    rank: int | None = None
    alpha: float | None = None
    dropout: float | None = None
    targets: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for flag, value, rule in (
            ("--lora-rank", self.rank, RANK),
            ("--lora-alpha", self.alpha, ALPHA),
            ("--lora-dropout", self.dropout, DROPOUT),
        ):
            if value is not None:
                check(flag, value, rule)

    @property
    def scale(self) -> float:
        rank = DEFAULT_RANK if self.rank is None else self.rank
        return float(self.alpha if self.alpha is not None else 2 * rank) / rank

    def agrees_with(self, other: LoraSettings) -> bool:
        """Whether every setting given here (not None, not empty) is `other`'s."""
        mine, theirs = dataclasses.asdict(self), dataclasses.asdict(other)
        mine["targets"], theirs["targets"] = set(self.targets), set(other.targets)
        return all(v in (None, set()) or v == theirs[k] for k, v in mine.items())

    def resolved(self, config: GPTConfig) -> LoraSettings:
        """The settings with alpha and the targets spelled out for `config`, checked
        (`check_settings`)."""
        return check_settings(self, config)

    def record(self) -> dict[str, Any]:
        return {
            "rank": self.rank,
            "alpha": self.alpha,
            "dropout": self.dropout,
            "targets": list(self.targets),
        }

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> LoraSettings:
        return cls(
            rank=int(record["rank"]),
            alpha=float(record["alpha"]),
            dropout=float(record["dropout"]),
            targets=tuple(record["targets"]),
        )

    def describe(self) -> str:
        """One phrase for notes and reports.

        >>> LoraSettings(rank=4, alpha=8.0, dropout=0.0, targets=("q", "v")).describe()
        'rank 4, alpha 8 (scale 2), dropout 0, on q, v'
        """
        rank = DEFAULT_RANK if self.rank is None else self.rank
        alpha = self.alpha if self.alpha is not None else 2 * rank
        dropout = DEFAULT_DROPOUT if self.dropout is None else self.dropout
        return (
            f"rank {rank}, alpha {alpha:g} (scale {self.scale:g}), dropout"
            f" {dropout:g}, on {', '.join(self.targets) or 'every projection'}"
        )


def parse_targets(text: str) -> tuple[str, ...]:
    """`--lora-targets`: comma-separated names, or `all` (empty: every projection).

    >>> parse_targets("q, v"), parse_targets("all")
    (('q', 'v'), ())
    """
    names = tuple(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))
    if not names:
        raise TinyGPTError(f"--lora-targets: give names from {', '.join(TARGETS)} or all")
    return () if names == ("all",) else names


def _sections(config: GPTConfig) -> dict[str, list[tuple[str, int]]]:
    """The adaptable projections of one block, by their path inside it, each with its
    output sections in order: (target name, width)."""
    H, K, D, C = config.n_head, config.kv_heads, config.head_dim, config.n_embd
    fc = [("gate", config.hidden), ("up", config.hidden)] if config.mlp == "swiglu" else None
    return {
        "attn.qkv": [("q", H * D), ("k", K * D), ("v", K * D)],
        "attn.proj": [("o", C)],
        "mlp.fc": fc or [("up", config.hidden)],
        "mlp.proj": [("down", C)],
    }


def _inputs(config: GPTConfig, path: str) -> int:
    return config.hidden if path == "mlp.proj" else config.n_embd


def valid_targets(config: GPTConfig) -> tuple[str, ...]:
    """The target names a model of `config` has, in `TARGETS` order."""
    have = {name for sections in _sections(config).values() for name, _ in sections}
    return tuple(t for t in TARGETS if t in have)


def check_settings(settings: LoraSettings, config: GPTConfig) -> LoraSettings:
    """`settings` for a model of `config`, every default spelled out; a target the model
    does not have, or a rank larger than an adapted layer allows, is an error."""
    rank = DEFAULT_RANK if settings.rank is None else settings.rank
    dropout = DEFAULT_DROPOUT if settings.dropout is None else settings.dropout
    settings = dataclasses.replace(settings, rank=rank, dropout=dropout)
    valid = valid_targets(config)
    targets = settings.targets or valid
    unknown = [t for t in targets if t not in valid]
    if unknown:
        why = " (a GELU MLP has no gate; its up projection is up)" if "gate" in unknown else ""
        raise TinyGPTError(
            f"--lora-targets {','.join(unknown)}: this model has no such projection{why};"
            f" valid targets: {','.join(valid)} (or all)"
        )
    for path, sections in _sections(config).items():
        for name, width in sections:
            if name not in targets:
                continue
            limit = min(_inputs(config, path), width)
            if rank > limit:
                raise TinyGPTError(
                    f"--lora-rank {settings.rank} is larger than the {name} projection allows"
                    f" ({_inputs(config, path)} inputs, {width} outputs): a rank-r update of"
                    f" that layer needs r <= {limit}; choose a smaller rank"
                )
    alpha = float(settings.alpha if settings.alpha is not None else 2 * rank)
    ordered = tuple(t for t in valid if t in targets)
    return dataclasses.replace(settings, alpha=alpha, targets=ordered)


# ------------------------------------------------------------------------------- layers


class LoRALinear(nn.Module):
    """A frozen `nn.Linear` (its very `weight` and `bias` tensors, so their names in the
    model stay `...weight`/`...bias`) plus one low-rank update per adapted output section.

    sections: [(name, width), ...] covering the outputs in order; `adapted` the names that
    get an adapter. lora_A[name] (r, in), lora_B[name] (width, r).
    """

    def __init__(
        self,
        base: nn.Linear,
        sections: list[tuple[str, int]],
        adapted: tuple[str, ...],
        rank: int,
        scale: float,
        dropout: float,
        generator: torch.Generator,
    ) -> None:
        super().__init__()
        self.weight, self.bias = base.weight, base.bias
        self.in_features, self.out_features = base.in_features, base.out_features
        self.sections = sections
        self.scale = scale
        self.drop = nn.Dropout(dropout)
        self.lora_A = nn.ParameterDict()
        self.lora_B = nn.ParameterDict()
        bound = 1.0 / math.sqrt(self.in_features)
        device, dtype = base.weight.device, base.weight.dtype
        for name, width in sections:
            if name not in adapted:
                continue
            a = torch.empty(rank, self.in_features).uniform_(-bound, bound, generator=generator)
            self.lora_A[name] = nn.Parameter(a.to(device=device, dtype=dtype))
            self.lora_B[name] = nn.Parameter(torch.zeros(width, rank, device=device, dtype=dtype))

    def stacked(self) -> tuple[Tensor, Tensor]:
        """The adapters as one pair: A (R, in), the sections' A one above the other, and B
        (out, R) block-diagonal — section s's outputs read only its own r columns, and a
        section without an adapter reads none (R = r × the adapted sections). Two matmuls
        then serve every section (on a CPU a tiny model pays per kernel, not per flop)."""
        names = [name for name, _ in self.sections if name in self.lora_A]
        a = torch.cat([self.lora_A[name] for name in names])  # (R, in)
        blocks = [
            self.lora_B[name] if name in self.lora_A else a.new_zeros(width, 0)
            for name, width in self.sections
        ]  # (width, r) or (width, 0) each
        return a, torch.block_diag(*blocks)  # (R, in), (out, R)

    def forward(self, x: Tensor) -> Tensor:
        y = F.linear(x, self.weight, self.bias)  # (B, T, out)
        a, b = self.stacked()
        # (B, T, in) @ (in, R) -> (B, T, R); @ (R, out) -> (B, T, out)
        return y + self.scale * ((self.drop(x) @ a.T) @ b.T)

    @torch.no_grad()
    def merged_weight(self) -> Tensor:
        """W + (alpha / r) B A, every adapted section at once: (out, in)."""
        a, b = self.stacked()
        w = self.weight.detach().float() + self.scale * (b.float() @ a.float())  # (out, in)
        return w.to(self.weight.dtype)


class _Rows(nn.Module):
    """The base's first `weight.size(0)` rows, frozen, followed by `rows`, trainable."""

    def __init__(self, weight: nn.Parameter, rows: nn.Parameter) -> None:
        super().__init__()
        self.weight, self.rows = weight, rows

    def full(self) -> Tensor:
        return torch.cat([self.weight, self.rows], dim=0)  # (V, C)


class RowsEmbedding(_Rows):
    """A token embedding whose rows from `weight.size(0)` on are trainable."""

    def forward(self, idx: Tensor) -> Tensor:
        return F.embedding(idx, self.full())  # (B, T) -> (B, T, C)


class RowsHead(_Rows):
    """An LM head (no bias) whose rows from `weight.size(0)` on are trainable. The logits of
    the frozen rows and of the trainable ones are computed apart, so that no gradient of
    the frozen matrix is ever formed."""

    def forward(self, x: Tensor) -> Tensor:
        # (B, T, C) -> (B, T, V0) and (B, T, V - V0) -> (B, T, V)
        return torch.cat([F.linear(x, self.weight), F.linear(x, self.rows)], dim=-1)


# ------------------------------------------------------------------------ apply, merge


@dataclass
class Adapted:
    """What `apply_lora` did to a model (kept on it as `model.lora`)."""

    settings: LoraSettings
    rows_from: int  # the first embedding row that trains; vocab_size when none do
    handles: list[torch.utils.hooks.RemovableHandle]

    def record(self) -> dict[str, Any]:
        return {**self.settings.record(), "rows_from": self.rows_from}


def is_adapted(model: nn.Module) -> bool:
    return isinstance(getattr(model, "lora", None), Adapted)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters, each tensor counted once (a tied head too)."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


@torch.no_grad()
def apply_lora(
    model: GPT, settings: LoraSettings, *, rows_from: int | None = None, seed: int = 0
) -> Adapted:
    """Adapt `model` (a `tinygpt.core.model.GPT`) in place (module docstring): freeze every
    parameter, put adapters on `settings.targets` in every block, and give the embedding
    (and an untied head) trainable rows from `rows_from` on (None: no rows train). The same
    seed draws the same A matrices. Build the optimiser after this."""
    if is_adapted(model):
        raise TinyGPTError("this model already carries LoRA adapters; merge them first")
    config = model.config
    settings = check_settings(settings, config)
    rank, dropout = settings.rank, settings.dropout
    assert rank is not None and dropout is not None  # check_settings spelled them out
    for p in model.parameters():
        p.requires_grad_(False)
    generator = torch.Generator().manual_seed(seed)
    for block in model.block_modules():
        for path, sections in _sections(config).items():
            adapted = tuple(name for name, _ in sections if name in settings.targets)
            if not adapted:
                continue
            parent, leaf = path.split(".")
            owner = getattr(block, parent)
            wrapped = LoRALinear(
                getattr(owner, leaf),
                sections,
                adapted,
                rank,
                settings.scale,
                dropout,
                generator,
            )
            setattr(owner, leaf, wrapped)
    vocab = config.vocab_size
    rows_from = vocab if rows_from is None else rows_from
    if not 0 < rows_from <= vocab:
        raise TinyGPTError(f"rows_from {rows_from} is outside the vocabulary of {vocab} ids")
    if rows_from < vocab:
        tied = model.lm_head.weight is model.tok_emb.weight
        emb = model.tok_emb.weight
        frozen = nn.Parameter(emb[:rows_from].clone(), requires_grad=False)
        rows = nn.Parameter(emb[rows_from:].clone())
        swapped: nn.Module = model  # the new modules are not of the types GPT declares
        swapped.tok_emb = RowsEmbedding(frozen, rows)
        if tied:
            swapped.lm_head = RowsHead(frozen, rows)
        else:
            head = model.lm_head.weight
            swapped.lm_head = RowsHead(
                nn.Parameter(head[:rows_from].clone(), requires_grad=False),
                nn.Parameter(head[rows_from:].clone()),
            )
    handles = [
        model.register_state_dict_post_hook(_keep_trainable),
        model.register_load_state_dict_post_hook(_forgive_frozen),
    ]
    lora = Adapted(settings, rows_from, handles)
    model.lora = lora  # type: ignore[assignment]  # torch stubs: Module.__setattr__ takes any value
    return lora


def _trainable_names(model: nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters(remove_duplicate=False) if p.requires_grad}


def _keep_trainable(module: nn.Module, state: dict[str, Any], prefix: str, meta: Any) -> None:
    """state_dict() of an adapted model: only what trains (the base is not saved again)."""
    keep = {prefix + n for n in _trainable_names(module)}
    for key in [k for k in state if k.startswith(prefix) and k not in keep]:
        del state[key]


def _forgive_frozen(module: nn.Module, incompatible: Any) -> None:
    """load_state_dict() of an adapter: the frozen base is not in it, and stays as it is."""
    trainable = _trainable_names(module)
    incompatible.missing_keys[:] = [k for k in incompatible.missing_keys if k in trainable]


@torch.no_grad()
def merge_lora(model: GPT) -> GPT:
    """Fold the adapters and the trained rows into plain weights, in place: the model is a
    plain GPT again (every parameter trainable, `state_dict()` whole), and computes what the
    adapted model computed (up to float rounding)."""
    if not is_adapted(model):
        raise TinyGPTError("this model carries no LoRA adapters to merge")
    for block in model.block_modules():
        for path in _sections(model.config):
            parent, leaf = path.split(".")
            owner = getattr(block, parent)
            layer = getattr(owner, leaf)
            if isinstance(layer, LoRALinear):
                plain = nn.Linear(
                    layer.in_features,
                    layer.out_features,
                    bias=layer.bias is not None,
                    device="meta",
                )
                plain.weight = nn.Parameter(layer.merged_weight())
                if layer.bias is not None:
                    plain.bias = layer.bias
                setattr(owner, leaf, plain)
    tok_emb: nn.Module = model.tok_emb
    if isinstance(tok_emb, RowsEmbedding):
        lm_head = cast(RowsHead, model.lm_head)  # apply_lora gives both trainable rows
        tied = lm_head.rows is tok_emb.rows
        V, C = model.config.vocab_size, model.config.n_embd
        emb = nn.Embedding(V, C, device="meta")
        emb.weight = nn.Parameter(tok_emb.full().detach().clone())
        head = nn.Linear(C, V, bias=False, device="meta")
        if tied:
            head.weight = emb.weight
        else:
            head.weight = nn.Parameter(lm_head.full().detach().clone())
        model.tok_emb, model.lm_head = emb, head
    for handle in cast(Adapted, model.lora).handles:  # is_adapted checked its type
        handle.remove()
    del model.lora
    for p in model.parameters():
        p.requires_grad_(True)
    return model
