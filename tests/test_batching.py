"""Batches of different sequences: padding, per-row positions, a per-row KV cache.

Every test compares a batched computation with the same rows run one at a time, which is the
definition of getting batching right: padding must change nothing a real token sees.
"""

from __future__ import annotations

import pytest
import torch

from tinygpt.core.errors import TinyGPTError
from tinygpt.core.model import GPT, GPTConfig, padding_mask

VARIANTS = {
    "gpt2": dict(),
    "llama-gqa": dict(pos="rope", norm="rmsnorm", mlp="swiglu", bias=False, n_kv_head=2),
    "rope-mqa-qknorm": dict(pos="rope", n_kv_head=1, qk_norm=True, tie_weights=False),
    "learned-gqa": dict(n_kv_head=2, mlp="gelu"),
}
LENGTHS = [5, 11, 1, 8]  # prompt lengths of the rows of one batch
ATOL = 1e-5


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def model_of(kw: dict, attn: str = "sdpa", seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    base = dict(vocab_size=61, block_size=32, n_layer=2, n_head=4, n_embd=32, init_std=0.1)
    return GPT(GPTConfig(**{**base, **kw, "attn": attn})).eval()


def left_pad(rows: list[list[int]], pad: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) ids with `pad` before the shorter rows, and the (B, T) 0/1 mask."""
    T = max(len(r) for r in rows)
    ids = torch.tensor([[pad] * (T - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (T - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


def random_rows(lengths: list[int], seed: int = 1) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 61, (n,), generator=g).tolist() for n in lengths]


def alone(model: GPT, row: list[int]) -> torch.Tensor:
    """Logits of one sequence run by itself, (T, V)."""
    return model(torch.tensor([row]))[0][0]


def test_padding_mask_known_answer():
    real = torch.tensor([[False, False, True, True], [True, True, True, True]])
    m = padding_mask(real, 4)[:, 0].int().tolist()
    # Padding queries see only themselves; real queries see real keys up to themselves.
    assert m[0] == [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 1, 1]]
    assert m[1] == [[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]]
    # Fewer queries than keys (a past of 2): bottom-right aligned.
    assert padding_mask(real, 2)[0, 0].int().tolist() == [[0, 0, 1, 0], [0, 0, 1, 1]]


@pytest.mark.parametrize("attn", ["sdpa", "manual"])
@pytest.mark.parametrize("name", VARIANTS)
@torch.no_grad()
def test_left_padded_batch_equals_each_row_alone(name, attn):
    model = model_of(VARIANTS[name], attn)
    rows = random_rows(LENGTHS)
    ids, mask = left_pad(rows)
    logits, _ = model(ids, attention_mask=mask)
    for b, row in enumerate(rows):
        n = len(row)
        torch.testing.assert_close(logits[b, -n:], alone(model, row), atol=ATOL, rtol=ATOL)


@pytest.mark.parametrize("name", VARIANTS)
@torch.no_grad()
def test_explicit_positions_equal_the_default(name):
    model = model_of(VARIANTS[name])
    rows = random_rows(LENGTHS)
    ids, mask = left_pad(rows)
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    a, _ = model(ids, attention_mask=mask)
    b, _ = model(ids, attention_mask=mask, positions=positions)
    assert torch.equal(a, b)
    # Positions alone (no padding) change what a row computes: a shifted row is a
    # different input for learned and rotary positions alike.
    row = torch.tensor([rows[1]])
    shifted, _ = model(row, positions=torch.arange(3, 3 + row.size(1))[None])
    assert not torch.allclose(shifted, model(row)[0])


@pytest.mark.parametrize("attn", ["sdpa", "manual"])
@pytest.mark.parametrize("name", VARIANTS)
@torch.no_grad()
def test_cached_decoding_of_a_padded_batch_equals_full_passes(name, attn):
    """Prefill a left-padded batch in chunks (a chunk may hold only padding for a row), then
    decode one token per row per step: every row's logits equal one full pass over it."""
    model = model_of(VARIANTS[name], attn)
    prompts = random_rows(LENGTHS)
    ids, mask = left_pad(prompts)
    B, T = ids.shape
    cache = model.new_cache(B)
    chunks = [
        model(ids[:, s : s + 4], cache=cache, attention_mask=mask[:, s : s + 4])[0]
        for s in range(0, T, 4)
    ]
    prefill = torch.cat(chunks, dim=1)  # (B, T, V)
    assert cache.lens.tolist() == LENGTHS
    new = random_rows([6] * B, seed=2)
    steps = [model(torch.tensor([[r[i]] for r in new]), cache=cache)[0] for i in range(6)]
    decoded = torch.cat(steps, dim=1)  # (B, 6, V)
    assert cache.lens.tolist() == [n + 6 for n in LENGTHS]
    for b, prompt in enumerate(prompts):
        full = alone(model, prompt + new[b])
        n = len(prompt)
        torch.testing.assert_close(prefill[b, -n:], full[:n], atol=ATOL, rtol=ATOL)
        torch.testing.assert_close(decoded[b], full[n:], atol=ATOL, rtol=ATOL)


@pytest.mark.parametrize("name", VARIANTS)
@torch.no_grad()
def test_manual_attention_equals_sdpa_with_masks(name):
    sdpa, manual = model_of(VARIANTS[name], "sdpa"), model_of(VARIANTS[name], "manual")
    ids, mask = left_pad(random_rows(LENGTHS))
    torch.testing.assert_close(
        sdpa(ids, attention_mask=mask)[0] * mask[..., None],
        manual(ids, attention_mask=mask)[0] * mask[..., None],
        atol=ATOL,
        rtol=ATOL,
    )
    outs = []
    for model in (sdpa, manual):
        cache = model.new_cache(ids.size(0))
        model(ids, cache=cache, attention_mask=mask)
        outs.append(model(ids[:, -3:], cache=cache)[0])  # rows at different lengths
    torch.testing.assert_close(outs[0], outs[1], atol=ATOL, rtol=ATOL)


@pytest.mark.parametrize("name", ["gpt2", "llama-gqa"])
@torch.no_grad()
def test_a_row_of_padding_only_produces_no_nan(name):
    model = model_of(VARIANTS[name])
    rows = random_rows([6, 4])
    ids, mask = left_pad([*rows, [1]])
    mask[2] = 0  # the third row is all padding
    logits, _ = model(ids, attention_mask=mask)
    assert torch.isfinite(logits).all()
    for b, row in enumerate(rows):
        torch.testing.assert_close(logits[b, -len(row) :], alone(model, row), atol=ATOL, rtol=ATOL)
    cache = model.new_cache(3)
    cached, _ = model(ids, cache=cache, attention_mask=mask)
    assert torch.isfinite(cached).all()
    assert cache.lens.tolist() == [6, 4, 0]  # padding never enters the cache
    step, _ = model(torch.tensor([[3], [4], [5]]), cache=cache)
    assert torch.isfinite(step).all()
    torch.testing.assert_close(step[2, 0], alone(model, [5])[0], atol=ATOL, rtol=ATOL)


@pytest.mark.parametrize("name", ["gpt2", "llama-gqa"])
@torch.no_grad()
def test_rows_join_and_leave_a_running_batch(name):
    """Continuous batching at the model level: row 1 joins after row 0 has decoded a few
    steps (prefilled through a view of its row), then both decode together; then row 0 leaves
    and row 1 is moved into its place. Every logit equals a full pass over that row."""
    model = model_of(VARIANTS[name])
    a, b = random_rows([7, 3], seed=3)
    cache = model.new_cache(2)
    logits_a = [model(torch.tensor([a[:4]]), cache=cache.narrow(0, 1))[0][0]]
    logits_a += [model(torch.tensor([[t]]), cache=cache.narrow(0, 1))[0][0] for t in a[4:6]]
    logits_b = [model(torch.tensor([b[:2]]), cache=cache.narrow(1, 1))[0][0]]
    assert cache.lens.tolist() == [6, 2]
    with pytest.raises(TinyGPTError, match="hold different lengths"):
        _ = cache.pos
    both, _ = model(torch.tensor([[a[6]], [b[2]]]), cache=cache)  # one step, two positions
    logits_a.append(both[0])
    logits_b.append(both[1])
    torch.testing.assert_close(torch.cat(logits_a), alone(model, a), atol=ATOL, rtol=ATOL)
    torch.testing.assert_close(torch.cat(logits_b), alone(model, b), atol=ATOL, rtol=ATOL)
    cache.copy_row(1, 0)  # row 0 leaves; row 1 moves into its slot
    nxt, _ = model(torch.tensor([[9]]), cache=cache.narrow(0, 1))
    torch.testing.assert_close(nxt[0, 0], alone(model, [*b, 9])[-1], atol=ATOL, rtol=ATOL)
    cache.reset(torch.tensor([True, False]))
    assert cache.lens.tolist() == [0, 3]


def test_uniform_rows_keep_the_plain_path():
    model = model_of({})
    cache = model.new_cache(2)
    with torch.no_grad():
        model(torch.zeros(2, 5, dtype=torch.long), cache=cache)
    assert cache.pos == 5 and cache._writes is None  # a slice write, no mask
    assert cache.prepare(1, None) == (5, None)


def test_bad_masks_and_positions():
    model = model_of({}).eval()
    ids = torch.zeros(2, 4, dtype=torch.long)
    with pytest.raises(TinyGPTError, match=r"attention_mask has shape \(2, 3\)"):
        model(ids, attention_mask=torch.ones(2, 3))
    with pytest.raises(TinyGPTError, match=r"positions has shape \(4,\)"):
        model(ids, positions=torch.arange(4))
    with pytest.raises(TinyGPTError, match=r"positions must lie in \[0, 32\).*got 30 to 33"):
        model(ids, positions=torch.arange(30, 34).expand(2, 4))
    cache = model.new_cache(2)
    model(torch.zeros(2, 30, dtype=torch.long), cache=cache, attention_mask=torch.ones(2, 30))
    with pytest.raises(TinyGPTError, match=r"sequence of 33 tokens is longer than"):
        model(torch.zeros(2, 3, dtype=torch.long), cache=cache, attention_mask=torch.ones(2, 3))


def test_padded_forward_exports_with_symbolic_batch_and_time():
    """torch.export (what the ONNX exporter builds on) traces the masked path: nothing in it
    reads tensor values into Python, and the batch and time axes stay symbolic."""

    class Wrapped(torch.nn.Module):
        def __init__(self, model: GPT) -> None:
            super().__init__()
            self.model = model

        def forward(self, ids, mask, positions):
            return self.model(ids, attention_mask=mask, positions=positions)[0]

    model = Wrapped(model_of(VARIANTS["llama-gqa"]))
    ids, mask = left_pad(random_rows([3, 5, 2]))
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    B, T = torch.export.Dim("B", min=2), torch.export.Dim("T", min=2, max=32)
    dims = {0: B, 1: T}
    program = torch.export.export(model, (ids, mask, positions), dynamic_shapes=(dims,) * 3)
    ids2, mask2 = left_pad(random_rows([7, 1], seed=5))
    positions2 = (mask2.cumsum(1) - 1).clamp(min=0)
    with torch.no_grad():
        torch.testing.assert_close(
            program.module()(ids2, mask2, positions2), model(ids2, mask2, positions2)
        )
