"""Optimisers written in plain tensor operations: AdamW and Muon.

Why not `torch.optim`? Two reasons, both measured on a 2-core CPU:

- Constructing any `torch.optim.Optimizer` imports `torch._dynamo` (about 1.7 s), which is
  about 3 % of a one-minute training budget and buys nothing when nothing is compiled.
- Muon is not in every torch release we support.

Both classes keep the parts of the `torch.optim` interface that training uses:
`param_groups` (a list of dicts with "params", "lr" and hyper-parameters), `state`,
`step()`, `zero_grad()`, `state_dict()` and `load_state_dict()`. The state-dict layout is
torch's (parameters numbered in group order), so a checkpoint is plain tensors and numbers
and loads with `weights_only=True`. `tests/test_optim.py` checks `AdamW` against
`torch.optim.AdamW` step by step.

**AdamW** (Loshchilov & Hutter): Adam on the gradient, with the weight decay applied to the
weights directly (`p -= lr·wd·p`) rather than folded into the gradient.

**Muon** (Keller Jordan, 2024): for a weight matrix, keep a Nesterov momentum of the
gradient, then replace it by the nearest semi-orthogonal matrix (all singular values ≈ 1),
computed with five Newton–Schulz iterations of a quintic polynomial, and step along that.
Every direction of the matrix then moves by the same amount, which makes small models learn
in noticeably fewer steps. Muon is for the hidden matrices only: embeddings, the output
head and the norm gains are kept on AdamW in groups marked `"algorithm": "adamw"`.

`build_optimizer` picks between them for training (the setting `train.optimizer`), and puts
the parameters into groups. This module knows nothing about the schedule or the loop.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch

from tinygpt.core.config import TrainConfig

# Coefficients of the quintic Newton–Schulz iteration x ← a·x + b·x³ + c·x⁵, chosen (by
# Muon's author) to push every singular value in (0, 1] quickly towards 1.
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def orthogonalize(g: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """Approximately U·Vᵀ for g = U·S·Vᵀ: g with its singular values pushed towards 1.

    The singular values land in roughly [0.7, 1.2] rather than exactly 1 — close enough for
    an update direction and far cheaper than an SVD.
    """
    a, b, c = NS_COEFFICIENTS
    x = g.float()
    tall = x.size(-2) > x.size(-1)
    if tall:  # iterate on the smaller Gram matrix
        x = x.mT
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + 1e-7)  # spectral norm ≤ Frobenius norm ≤ 1
    for _ in range(steps):
        gram = x @ x.mT
        poly = b * gram + c * (gram @ gram)
        x = a * x + poly @ x
    if tall:
        x = x.mT
    return x.to(g.dtype)


class _Optimizer:
    """The bookkeeping shared by the optimisers: groups, state, zeroing and state dicts."""

    defaults: dict[str, Any]

    def __init__(self, params: Iterable[Any], defaults: dict[str, Any]) -> None:
        self.defaults = defaults
        groups = list(params)
        if not groups:
            raise ValueError("the optimiser got no parameters")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        self.param_groups: list[dict[str, Any]] = []
        for group in groups:
            self.param_groups.append({**defaults, **group, "params": list(group["params"])})
        self.state: dict[torch.Tensor, dict[str, Any]] = {}

    def _params(self) -> list[torch.Tensor]:
        return [p for g in self.param_groups for p in g["params"]]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self._params():
            if p.grad is None:
                continue
            if set_to_none:
                p.grad = None
            else:
                p.grad.detach_().zero_()

    def state_dict(self) -> dict[str, Any]:
        """torch's layout: state keyed by the parameter's position across all groups."""
        index = {id(p): i for i, p in enumerate(self._params())}
        groups = []
        for g in self.param_groups:
            packed = {k: v for k, v in g.items() if k != "params"}
            packed["params"] = [index[id(p)] for p in g["params"]]
            groups.append(packed)
        state = {index[id(p)]: dict(s) for p, s in self.state.items()}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        groups = state_dict["param_groups"]
        if len(groups) != len(self.param_groups) or any(
            len(a["params"]) != len(b["params"]) for a, b in zip(groups, self.param_groups)
        ):
            raise ValueError(
                "the saved optimiser state does not match this model's parameter groups"
                " (was it saved by another optimiser or model shape?)"
            )
        params = self._params()
        for saved, group in zip(groups, self.param_groups):
            group.update({k: v for k, v in saved.items() if k != "params"})
        self.state = {}
        for i, s in state_dict["state"].items():
            p = params[int(i)]
            # Copies: a state dict loaded into two optimisers must not be shared by them.
            # Step counts stay on the CPU; moments go to their parameter's device.
            self.state[p] = {
                k: (v.detach().to(p.device if v.dim() else "cpu", copy=True))
                if isinstance(v, torch.Tensor)
                else v
                for k, v in s.items()
            }

    def step(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError


def _adamw_group(group: dict[str, Any], state: dict[torch.Tensor, dict[str, Any]]) -> None:
    """One AdamW step for the parameters of `group` that have a gradient (foreach kernels)."""
    params = [p for p in group["params"] if p.grad is not None]
    if not params:
        return
    grads = [p.grad for p in params]
    beta1, beta2 = group["betas"]
    lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]
    for p in params:
        if p not in state:
            state[p] = {
                "step": torch.zeros((), dtype=torch.float32),
                "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format),
            }
    states = [state[p] for p in params]
    exp_avg = [s["exp_avg"] for s in states]
    exp_avg_sq = [s["exp_avg_sq"] for s in states]
    for s in states:
        s["step"] += 1
    # All parameters of a group advance together, so one step count serves the group.
    step = float(states[0]["step"])
    if wd:
        torch._foreach_mul_(params, 1 - lr * wd)
    torch._foreach_lerp_(exp_avg, grads, 1 - beta1)
    torch._foreach_mul_(exp_avg_sq, beta2)
    torch._foreach_addcmul_(exp_avg_sq, grads, grads, 1 - beta2)
    bias1 = 1 - beta1**step
    bias2_sqrt = math.sqrt(1 - beta2**step)
    denom = torch._foreach_sqrt(exp_avg_sq)
    torch._foreach_div_(denom, bias2_sqrt)
    torch._foreach_add_(denom, eps)
    torch._foreach_addcdiv_(params, exp_avg, denom, -lr / bias1)


class AdamW(_Optimizer):
    """AdamW with decoupled weight decay; the same arithmetic as `torch.optim.AdamW`."""

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
    ) -> None:
        super().__init__(
            params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay}
        )

    @torch.no_grad()
    def step(self) -> None:
        for group in self.param_groups:
            _adamw_group(group, self.state)


class Muon(_Optimizer):
    """Muon for 2-D hidden matrices; groups with `"algorithm": "adamw"` get AdamW instead.

    Muon's learning rate is in units of the update's RMS size per element after the shape
    correction `sqrt(max(1, rows/cols))`; 0.02–0.05 is typical, far above AdamW's.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 0.02,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_steps: int = 5,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "nesterov": nesterov,
            "ns_steps": ns_steps,
            "weight_decay": weight_decay,
            "betas": betas,
            "eps": eps,
            "algorithm": "muon",
        }
        super().__init__(params, defaults)
        for group in self.param_groups:
            if group["algorithm"] == "muon":
                bad = [tuple(p.shape) for p in group["params"] if p.dim() != 2]
                if bad:
                    raise ValueError(
                        f"Muon updates 2-D matrices only, got shapes {bad}; put vectors and"
                        ' embeddings in a group with "algorithm": "adamw"'
                    )

    @torch.no_grad()
    def step(self) -> None:
        for group in self.param_groups:
            if group["algorithm"] == "adamw":
                _adamw_group(group, self.state)
                continue
            self._muon_group(group)

    def _muon_group(self, group: dict[str, Any]) -> None:
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            return
        lr, wd, mu = group["lr"], group["weight_decay"], group["momentum"]
        grads = [p.grad for p in params]
        for p in params:
            if p not in self.state:
                self.state[p] = {"momentum_buffer": torch.zeros_like(p)}
        bufs = [self.state[p]["momentum_buffer"] for p in params]
        torch._foreach_lerp_(bufs, grads, 1 - mu)
        directions = torch._foreach_lerp(grads, bufs, mu) if group["nesterov"] else bufs
        if wd:
            torch._foreach_mul_(params, 1 - lr * wd)
        # Matrices of one shape (the same layer type in every block) are orthogonalised as
        # one batch: a dozen small matrix products cost more in overhead than in arithmetic.
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i, p in enumerate(params):
            by_shape.setdefault(tuple(p.shape), []).append(i)
        for (rows, cols), idx in by_shape.items():
            update = orthogonalize(torch.stack([directions[i] for i in idx]), group["ns_steps"])
            scale = max(1.0, rows / cols) ** 0.5
            torch._foreach_add_([params[i] for i in idx], list(update.unbind(0)), alpha=-lr * scale)


def build_optimizer(model: torch.nn.Module, tc: TrainConfig, device: str) -> Any:
    """The optimiser `tc.optimizer` names, over the parameters with `requires_grad`, with
    weight decay on matrices only.

    adamw: AdamW on everything; decay on matrices (embeddings and linear weights), not on
    biases and norm gains — decaying those hurts and buys no regularisation. On CUDA this is
    torch's fused kernel; elsewhere `AdamW` (above), the same arithmetic in foreach
    kernels without torch.optim's start-up cost.
    muon: `Muon` (above) on the 2-D weights inside the blocks, at `muon_lr`; AdamW
    on the embeddings, the output head and the vectors, at `lr`. Each group carries
    `lr_scale`, its learning rate over `lr`, so one schedule drives both.
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    betas = (tc.beta1, tc.beta2)
    if tc.optimizer == "muon":
        hidden = [p for n, p in named if n.startswith("blocks.") and p.dim() == 2]
        seen = {id(p) for p in hidden}
        rest = [p for _, p in named if id(p) not in seen]
        muon = {
            "params": hidden,
            "algorithm": "muon",
            "lr": tc.muon_lr,
            "lr_scale": tc.muon_lr / tc.lr,
            "weight_decay": tc.weight_decay,
        }
        groups = [muon, *_decay_groups(rest, tc.weight_decay, algorithm="adamw")]
        groups = [g for g in groups if g["params"]]
        return Muon(groups, lr=tc.lr, momentum=tc.muon_momentum, betas=betas, eps=tc.eps)
    groups = _decay_groups([p for _, p in named], tc.weight_decay)
    if device.startswith("cuda"):
        return torch.optim.AdamW(groups, lr=tc.lr, betas=betas, eps=tc.eps, fused=True)
    return AdamW(groups, lr=tc.lr, betas=betas, eps=tc.eps)


def _decay_groups(params: Sequence[torch.Tensor], weight_decay: float, **extra: Any) -> list[dict]:
    """Two parameter groups: matrices with weight decay, vectors without."""
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay, **extra},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0, **extra},
    ]
