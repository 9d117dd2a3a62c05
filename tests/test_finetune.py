"""Vocabulary growth from outside the model, the char-level encodability check, and the
shift of a loss mask onto next-token targets."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tinygpt.core.errors import TinyGPTError
from tinygpt.core.model import GPT, GPTConfig
from tinygpt.core.surgery import add_special_tokens, grow_vocabulary
from tinygpt.data.template import get_template
from tinygpt.data.tokenizer import CharTokenizer, train_tokenizer
from tinygpt.train.finetune import check_encodable, masked_targets
from tokenizer_text import corpus

V = 40


def tiny(tie: bool = True, seed: int = 0, **kw) -> GPT:
    torch.manual_seed(seed)
    cfg = dict(vocab_size=V, block_size=16, n_layer=2, n_head=2, n_embd=16, tie_weights=tie)
    return GPT(GPTConfig(**{**cfg, **kw})).eval()


def snapshot(model: GPT) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("tie", [True, False])
def test_old_rows_are_bit_identical_and_new_rows_sit_near_the_mean(tie):
    model = tiny(tie)
    before = snapshot(model)
    grow_vocabulary(model, V + 4, seed=1)
    emb, head = model.tok_emb.weight, model.lm_head.weight
    assert emb.shape == (V + 4, 16) and head.shape == (V + 4, 16)
    assert model.config.vocab_size == V + 4
    assert model.tok_emb.num_embeddings == model.lm_head.out_features == V + 4
    assert torch.equal(emb[:V], before["tok_emb.weight"])
    assert torch.equal(head[:V], before["lm_head.weight"])
    assert (head is emb) == tie
    for name, value in model.state_dict().items():
        if name not in ("tok_emb.weight", "lm_head.weight"):
            assert torch.equal(value, before[name]), name
    for w in (emb, head):
        old = w[:V]
        new = w[V:]
        # Each new row is the mean plus noise a tenth of the spread: far closer to the
        # mean than the old rows are, and all of them different.
        assert (new - old.mean(0)).norm(dim=1).max() < 0.3 * (old - old.mean(0)).norm(dim=1).min()
        assert torch.cdist(new, new).add(torch.eye(4)).min() > 0
    assert set(map(id, model.parameters())) >= {id(emb), id(head)}


def test_same_seed_same_rows_other_seed_other_rows():
    rows = []
    for seed in (3, 3, 4):
        model = tiny()
        grow_vocabulary(model, V + 2, seed=seed)
        rows.append(model.tok_emb.weight[V:].detach().clone())
    assert torch.equal(rows[0], rows[1]) and not torch.equal(rows[0], rows[2])


@pytest.mark.parametrize("tie", [True, False])
def test_old_tokens_logits_are_unchanged_and_only_the_softmax_moves(tie):
    """What is invariant: on text of old tokens the hidden states are the same, so the
    logits of the old tokens are too. The new tokens add terms to the softmax's sum, so the
    log-probabilities of old tokens drop, each by the same amount at a position:
    log(1 + sum_new exp(z) / sum_old exp(z)). The mean start keeps that drop small."""
    model = tiny(tie)
    idx = torch.randint(0, V, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before, loss_before = model(idx, idx.roll(-1, 1))
        grow_vocabulary(model, V + 3, seed=0)
        after, loss_after = model(idx, idx.roll(-1, 1))
    assert after.shape == (2, 12, V + 3)
    # Same hidden states; the head's matmul over a wider matrix may sum in another order.
    torch.testing.assert_close(after[..., :V], before, rtol=0, atol=1e-6)
    drop = F.log_softmax(before, -1) - F.log_softmax(after, -1)[..., :V]  # (B, T, V)
    expected = torch.log1p(
        torch.exp(after[..., V:]).sum(-1) / torch.exp(after[..., :V]).sum(-1)
    )  # (B, T)
    torch.testing.assert_close(drop, expected[..., None].expand_as(drop), rtol=0, atol=1e-5)
    assert 0 < float(loss_after - loss_before) < 0.2
    # A new token starts as likely as an average one, not more.
    probs = after.softmax(-1)
    assert float(probs[..., V:].max()) < float(probs[..., :V].max(-1).values.min())


def test_new_tokens_are_distinguishable_and_trainable():
    model = tiny()
    grow_vocabulary(model, V + 2, seed=0)
    a = torch.tensor([[1, 2, V, 3]])
    b = torch.tensor([[1, 2, V + 1, 3]])
    with torch.no_grad():
        la, _ = model(a)
        lb, _ = model(b)
    assert torch.equal(la[:, :2], lb[:, :2]) and not torch.allclose(la[:, 2:], lb[:, 2:])
    model.train()
    _, loss = model(a, torch.tensor([[2, V, V + 1, 3]]))
    loss.backward()
    grad = model.tok_emb.weight.grad
    assert grad.shape == (V + 2, 16) and grad[V:].abs().sum(1).min() > 0


def test_grown_model_saves_and_loads_through_its_config():
    model = tiny(tie=False)
    grow_vocabulary(model, V + 5, seed=2)
    fresh = GPT(model.config)
    fresh.load_state_dict(model.state_dict())
    idx = torch.tensor([[0, V + 4, 3]])
    torch.testing.assert_close(fresh.eval()(idx)[0], model(idx)[0], rtol=0, atol=0)


def test_grow_refuses_to_shrink_and_keeps_same_size():
    model = tiny()
    weight = model.tok_emb.weight
    grow_vocabulary(model, V)
    assert model.tok_emb.weight is weight
    with pytest.raises(TinyGPTError, match="cannot shrink the vocabulary from 40 to 39"):
        grow_vocabulary(model, V - 1)


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_add_special_tokens_grows_tokenizer_and_model_together(kind):
    docs = corpus(20_000, seed=1)
    if kind == "char":
        base = CharTokenizer.train(docs)
    else:
        base = train_tokenizer("bpe", docs, vocab_size=300, backend="hf")
    model = tiny(vocab_size=base.vocab_size)
    old = model.tok_emb.weight.detach().clone()
    specials = get_template("default").special_tokens
    tok = add_special_tokens(model, base, specials, seed=0)
    assert tok.vocab_size == base.vocab_size + 4 == model.config.vocab_size
    assert [tok.special_tokens[s] for s in specials] == list(range(base.vocab_size, tok.vocab_size))
    assert torch.equal(model.tok_emb.weight[: base.vocab_size], old)
    text = docs[0]
    assert tok.encode(text) == base.encode(text)
    # Again: nothing is missing, nothing changes.
    assert add_special_tokens(model, tok, specials) is tok
    assert model.config.vocab_size == tok.vocab_size


def test_add_special_tokens_resets_padding_rows_it_takes():
    """A model padded past its tokenizer (50304 rows for GPT-2's 50257 ids, say) gives the
    first new tokens rows no text trained; they start like grown rows, from the mean."""
    base = CharTokenizer.train(["abcdefghij"])  # 11 ids
    model = tiny(vocab_size=14)  # 3 rows of padding
    with torch.no_grad():
        model.tok_emb.weight[11:] = 50.0  # what an untrained padding row might hold
    before = model.tok_emb.weight[:11].detach().clone()
    tok = add_special_tokens(model, base, ["<a>", "<b>", "<c>", "<d>", "<e>"], seed=0)
    assert tok.vocab_size == 16 == model.config.vocab_size
    w = model.tok_emb.weight.detach()
    assert torch.equal(w[:11], before)
    assert w[11:].abs().max() < 1.0
    assert torch.cdist(w[11:], w[11:]).add(torch.eye(5)).min() > 0


def test_add_special_tokens_refuses_a_mismatched_model():
    base = CharTokenizer.train(["abcdefghij"])
    with pytest.raises(TinyGPTError, match="11 ids but the model only 5 rows"):
        add_special_tokens(tiny(vocab_size=5), base, ["<x>"])


def test_check_encodable():
    bpe = train_tokenizer("bpe", ["hello world"], vocab_size=260)
    assert check_encodable(bpe, ["anything ✓ 😀"]) == {}
    seen = ["hello world"]
    assert check_encodable(CharTokenizer.train(seen), ["hello", "old"]) == {}
    with_unk = CharTokenizer.train(seen, unk=True)
    unseen = check_encodable(with_unk, ["hello ✓", "Ğ ✓"])
    assert unseen == {"✓": 2, "Ğ": 1}
    assert with_unk.encode("Ğ") == [with_unk.unk_id]  # what those characters become
    with pytest.raises(TinyGPTError) as exc:
        check_encodable(CharTokenizer.train(seen), ["hello ✓", "Ğ ✓ ✓"])
    msg = str(exc.value)
    assert "4 characters (2 distinct)" in msg and "'✓' (U+2713) x3" in msg and "'Ğ'" in msg
    assert "no <unk> token" in msg


def test_masked_targets():
    assert masked_targets([1, 2, 3, 4, 5], [1, 0, 1, 1, 0]) == [-1, 3, 4, -1]
    assert masked_targets([7], [1]) == []
    with pytest.raises(TinyGPTError, match="3 ids but 2 mask entries"):
        masked_targets([1, 2, 3], [1, 1])


@pytest.mark.parametrize("pos", ["learned", "rope"])
def test_a_shorter_context_keeps_the_first_positions(pos):
    from tinygpt.core.surgery import shorten_context

    model = tiny(pos=pos)
    idx = torch.randint(0, V, (2, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before, _ = model(idx)
        shorten_context(model, 10)
        after, _ = model(idx)
    assert model.config.block_size == 10
    torch.testing.assert_close(after, before, rtol=0, atol=0)
    if pos == "learned":
        assert model.pos_emb.weight.shape == (10, 16)
        assert "pos_emb.weight" in dict(model.named_parameters())
    with pytest.raises(TinyGPTError, match="only keep or shorten"):
        shorten_context(model, 11)
