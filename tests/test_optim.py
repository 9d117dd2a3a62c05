"""The optimisers of `tinygpt.train.optim` against their library twins and their own contracts."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch

from tinygpt.core.config import TrainConfig
from tinygpt.core.model import GPT, GPTConfig
from tinygpt.train.optim import AdamW, Muon, build_optimizer, orthogonalize


def _net(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(8, 24), torch.nn.GELU(), torch.nn.LayerNorm(24), torch.nn.Linear(24, 4)
    )


def _groups(net: torch.nn.Module) -> list[dict]:
    params = list(net.parameters())
    return [
        {"params": [p for p in params if p.dim() == 2], "weight_decay": 0.1},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]


def _train(net: torch.nn.Module, opt, steps: int, seed: int = 1, lr_at=None) -> None:
    gen = torch.Generator().manual_seed(seed)
    for i in range(steps):
        if lr_at:
            for g in opt.param_groups:
                g["lr"] = lr_at(i)
        x = torch.randn(16, 8, generator=gen)
        opt.zero_grad()
        net(x).pow(2).mean().backward()
        opt.step()


def _same(a: torch.nn.Module, b: torch.nn.Module, atol: float = 0.0) -> bool:
    return all(
        torch.allclose(p, q, rtol=0, atol=atol) for p, q in zip(a.parameters(), b.parameters())
    )


# ------------------------------------------------------------------------------- AdamW


def test_adamw_matches_torch_adamw_step_by_step():
    ours, theirs = _net(), _net()
    opt_a = AdamW(_groups(ours), lr=3e-3, betas=(0.9, 0.99), weight_decay=0.1)
    opt_b = torch.optim.AdamW(_groups(theirs), lr=3e-3, betas=(0.9, 0.99), foreach=True)
    schedule = lambda i: 3e-3 * (1 + i) / 30  # noqa: E731 - a changing lr is part of the test
    _train(ours, opt_a, 30, lr_at=schedule)
    _train(theirs, opt_b, 30, lr_at=schedule)
    assert _same(ours, theirs, atol=1e-7)


def test_adamw_state_dict_is_torchs_layout_both_ways():
    """A state saved by ours continues in torch's AdamW, and the other way round."""
    base = _net()
    opt = AdamW(_groups(base), lr=1e-2, betas=(0.9, 0.99))
    _train(base, opt, 5)
    saved = copy.deepcopy(opt.state_dict())

    theirs = copy.deepcopy(base)
    opt_t = torch.optim.AdamW(_groups(theirs), lr=1e-2, betas=(0.9, 0.99), foreach=True)
    opt_t.load_state_dict(saved)
    ours = copy.deepcopy(base)
    opt_o = AdamW(_groups(ours), lr=1e-2, betas=(0.9, 0.99))
    opt_o.load_state_dict(opt_t.state_dict())  # torch's own dict, with its extra keys
    _train(theirs, opt_t, 5, seed=2)
    _train(ours, opt_o, 5, seed=2)
    assert _same(ours, theirs, atol=1e-7)


def test_zero_grad_and_parameters_without_gradients():
    net = _net()
    opt = AdamW(net.parameters(), lr=1e-2)
    frozen = net[0].bias.detach().clone()
    net(torch.randn(4, 8)).sum().backward()
    net[0].bias.grad = None  # a parameter without a gradient is left alone
    opt.step()
    assert torch.equal(net[0].bias, frozen)
    opt.zero_grad(set_to_none=False)
    assert all(p.grad is None or not p.grad.any() for p in net.parameters())
    opt.zero_grad()
    assert all(p.grad is None for p in net.parameters())


def test_load_state_dict_from_another_model_is_refused():
    opt = AdamW(_groups(_net()), lr=1e-2)
    other = AdamW([{"params": list(_net().parameters())}], lr=1e-2)
    with pytest.raises(ValueError, match="does not match"):
        opt.load_state_dict(other.state_dict())


# -------------------------------------------------------------------------------- Muon


@pytest.mark.parametrize("shape", [(16, 16), (48, 16), (16, 40), (3, 24, 8)])
def test_orthogonalize_approaches_the_polar_factor(shape):
    """Newton–Schulz against the SVD: U·Vᵀ, with singular values pushed into ~[0.7, 1.2]."""
    g = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    o = orthogonalize(g)
    assert o.shape == g.shape
    s = torch.linalg.svdvals(o)
    assert s.min() > 0.6 and s.max() < 1.25
    u, _, vh = torch.linalg.svd(g, full_matrices=False)
    polar = u @ vh
    cos = (o * polar).sum((-2, -1)) / (o.norm(dim=(-2, -1)) * polar.norm(dim=(-2, -1)))
    assert cos.min() > 0.97


def _reference_muon_step(p, grad, buf, lr, mu, wd):
    """One Muon step on one matrix, spelt out."""
    buf.mul_(mu).add_(grad, alpha=1 - mu)
    direction = mu * buf + (1 - mu) * grad  # Nesterov
    update = orthogonalize(direction)
    scale = max(1.0, p.size(0) / p.size(1)) ** 0.5
    return p * (1 - lr * wd) - lr * scale * update


def test_muon_step_matches_the_spelt_out_rule():
    torch.manual_seed(0)
    mats = [torch.nn.Parameter(torch.randn(*s)) for s in [(24, 8), (24, 8), (8, 8)]]
    opt = Muon([{"params": mats, "weight_decay": 0.1}], lr=0.02, momentum=0.9)
    expected = [m.detach().clone() for m in mats]
    bufs = [torch.zeros_like(m) for m in mats]
    for _ in range(3):
        grads = [torch.randn_like(m) for m in mats]
        for m, g in zip(mats, grads):
            m.grad = g.clone()
        opt.step()
        for i, g in enumerate(grads):
            expected[i] = _reference_muon_step(expected[i], g, bufs[i], 0.02, 0.9, 0.1)
    for m, e in zip(mats, expected):
        torch.testing.assert_close(m.detach(), e, rtol=1e-5, atol=1e-6)


def test_muon_refuses_vectors_and_adamw_groups_match_adamw():
    with pytest.raises(ValueError, match="2-D matrices only"):
        Muon([torch.nn.Parameter(torch.ones(4))])
    a, b = _net(), _net()
    opt_m = Muon([{"params": list(a.parameters()), "algorithm": "adamw", "weight_decay": 0.1}],
                 lr=1e-2, betas=(0.9, 0.99))  # fmt: skip
    opt_a = AdamW(list(b.parameters()), lr=1e-2, betas=(0.9, 0.99), weight_decay=0.1)
    _train(a, opt_m, 5)
    _train(b, opt_a, 5)
    assert _same(a, b)


def test_muon_state_dict_round_trip_continues_exactly():
    straight = GPT(GPTConfig(vocab_size=13, block_size=8, n_layer=2, n_head=2, n_embd=16))
    resumed = copy.deepcopy(straight)
    tc = TrainConfig(optimizer="muon", lr=1e-2, muon_lr=0.02)

    def run(model, opt, steps, seed):
        gen = torch.Generator().manual_seed(seed)
        for _ in range(steps):
            x = torch.randint(0, 13, (4, 8), generator=gen)
            opt.zero_grad()
            model(x, x)[1].backward()
            opt.step()

    opt_s = build_optimizer(straight, tc, "cpu")
    run(straight, opt_s, 3, 0)
    run(straight, opt_s, 3, 1)
    opt_r = build_optimizer(resumed, tc, "cpu")
    run(resumed, opt_r, 3, 0)
    saved = copy.deepcopy(opt_r.state_dict())
    opt_r2 = build_optimizer(resumed, tc, "cpu")
    opt_r2.load_state_dict(saved)
    run(resumed, opt_r2, 3, 1)
    assert _same(straight, resumed)


def test_build_optimizer_puts_block_matrices_on_muon():
    model = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=8, bias=True))
    opt = build_optimizer(model, TrainConfig(optimizer="muon", lr=1e-3, muon_lr=0.05), "cpu")
    muon, adam_mat, adam_vec = opt.param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    assert muon["algorithm"] == "muon" and muon["lr_scale"] == pytest.approx(50.0)
    assert all(names[id(p)].startswith("blocks.") and p.dim() == 2 for p in muon["params"])
    assert {names[id(p)] for p in adam_mat["params"]} == {"tok_emb.weight", "pos_emb.weight"}
    assert all(p.dim() == 1 for p in adam_vec["params"]) and adam_vec["weight_decay"] == 0.0
    n_groups = sum(len(g["params"]) for g in opt.param_groups)
    assert n_groups == len(list(model.parameters()))


def test_building_the_optimiser_does_not_import_dynamo():
    """torch.optim's constructor imports torch._dynamo (seconds of start-up); ours must not."""
    code = (
        "import sys, torch\n"
        "from tinygpt.core.config import TrainConfig\n"
        "from tinygpt.core.model import GPT, GPTConfig\n"
        "from tinygpt.train.optim import build_optimizer\n"
        "m = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8))\n"
        "for name in ('adamw', 'muon'):\n"
        "    o = build_optimizer(m, TrainConfig(optimizer=name), 'cpu')\n"
        "    m(torch.zeros(1, 8, dtype=torch.long))[0].sum().backward()\n"
        "    torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)\n"
        "    o.step()\n"
        "print(any(k.startswith('torch._dynamo') for k in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("name", ["adamw", "muon"])
def test_grad_scaler_drives_our_optimisers(name):
    """fp16 training steps through torch's GradScaler: scaling, unscaling and skipping a step
    with an inf gradient work on our optimisers as on torch's (the CPU scaler runs the same
    code as the CUDA one)."""
    cfg = GPTConfig(vocab_size=13, block_size=8, n_layer=1, n_head=2, n_embd=16)
    plain, scaled = GPT(cfg), GPT(cfg)
    scaled.load_state_dict(plain.state_dict())
    tc = TrainConfig(optimizer=name, lr=1e-2)
    opt_p, opt_s = build_optimizer(plain, tc, "cpu"), build_optimizer(scaled, tc, "cpu")
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    x = torch.randint(0, 13, (4, 8), generator=torch.Generator().manual_seed(0))
    for _ in range(3):
        plain(x, x)[1].backward()
        opt_p.step()
        opt_p.zero_grad()
        scaler.scale(scaled(x, x)[1]).backward()
        scaler.unscale_(opt_s)
        scaler.step(opt_s)
        scaler.update()
        opt_s.zero_grad()
    assert _same(plain, scaled, atol=1e-5)
    before = [p.detach().clone() for p in scaled.parameters()]
    scaler.scale(scaled(x, x)[1]).backward()
    next(scaled.parameters()).grad[0, 0] = float("inf")
    scaler.step(opt_s)  # an inf gradient: the step is skipped and the scale backs off
    scaler.update()
    assert all(torch.equal(a, b) for a, b in zip(before, scaled.parameters()))
    assert scaler.get_scale() < 1024.0
