"""Model surgery for a model that starts from a trained one: more token ids, a shorter context.

`grow_vocabulary` gives a `tinygpt.core.model.GPT` rows for new token ids (a chat template's
special tokens its tokenizer lacks), `add_special_tokens` does that for a tokenizer and its
model together, and `shorten_context` cuts the position tables to a shorter context. Each
changes the model in place, from outside: `model.py` never learns that its vocabulary grew.
Fine-tuning (`tinygpt.train.finetune`) uses them, and so does the run loader to rebuild a
LoRA run's model on its base.

New rows of the embedding (and of an untied head) start at the mean of the existing rows plus
a little Gaussian noise. The mean (Hewitt 2021, "Initializing new word embeddings for
pretrained language models") keeps the model's predictions on old text close to what they
were: a new token's logit starts near the average logit instead of at a random value that
might be large. The noise (per dimension, a `noise` fraction of the spread of the existing
rows along it) makes the new tokens differ from one another, so the model can tell
`<|user|>` from `<|assistant|>` from the first step, and lets their gradients differ.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Protocol, TypeVar

import torch
from torch import Tensor, nn

from tinygpt.core.errors import TinyGPTError
from tinygpt.core.model import GPT

_Tok = TypeVar("_Tok", bound="SpecialTokens")


class SpecialTokens(Protocol):
    """What `add_special_tokens` needs of a tokenizer (a `tinygpt.data.tokenizer.Tokenizer`,
    which this layer cannot import)."""

    @property
    def vocab_size(self) -> int: ...

    def with_special_tokens(self: _Tok, tokens: Iterable[str]) -> _Tok: ...


DEFAULT_NOISE = 0.1


def _fresh_rows(weight: Tensor, rows: int, generator: torch.Generator, noise: float) -> Tensor:
    """`rows` new rows for `weight` (V, C): its column means plus noise scaled by its column
    standard deviations. Drawn on the CPU, so a seed gives the same rows on every device."""
    w = weight.detach().float().cpu()
    mean, std = w.mean(dim=0), w.std(dim=0)  # (C,), (C,)
    eps = torch.randn(rows, w.size(1), generator=generator)  # (rows, C)
    return (mean + noise * std * eps).to(device=weight.device, dtype=weight.dtype)


def _grown(weight: Tensor, new_rows: Tensor) -> nn.Parameter:
    """A parameter holding `weight`'s rows (bit for bit) followed by `new_rows`."""
    return nn.Parameter(
        torch.cat([weight.detach(), new_rows], dim=0), requires_grad=weight.requires_grad
    )


@torch.no_grad()
def grow_vocabulary(
    model: GPT, new_vocab_size: int, seed: int = 0, *, noise: float = DEFAULT_NOISE
) -> None:
    """Give `model` (a `tinygpt.core.model.GPT`) `new_vocab_size` token ids, in place.

    The token embedding and the LM head gain rows; the existing rows are kept bit for bit;
    the new ones start at the mean of the existing rows plus noise (module docstring). Tied
    weights stay one tensor; `model.config.vocab_size` becomes `new_vocab_size`. The same
    seed gives the same new rows. Build the optimizer after this: it must see the new
    parameters.
    """
    emb, head = model.tok_emb, model.lm_head
    old = emb.weight.size(0)
    if new_vocab_size < old:
        raise TinyGPTError(
            f"cannot shrink the vocabulary from {old} to {new_vocab_size} ids; the model's "
            "existing tokens keep their rows"
        )
    if new_vocab_size == old:
        return
    if getattr(head, "bias", None) is not None:
        raise TinyGPTError("the LM head has a bias; growing its vocabulary is not supported")
    tied = head.weight is emb.weight
    generator = torch.Generator().manual_seed(seed)
    n = new_vocab_size - old
    emb.weight = _grown(emb.weight, _fresh_rows(emb.weight, n, generator, noise))
    emb.num_embeddings = new_vocab_size
    if tied:
        head.weight = emb.weight
    else:
        head.weight = _grown(head.weight, _fresh_rows(head.weight, n, generator, noise))
    head.out_features = new_vocab_size
    model.config = dataclasses.replace(model.config, vocab_size=new_vocab_size)


@torch.no_grad()
def add_special_tokens(
    model: GPT,
    tokenizer: _Tok,
    tokens: Sequence[str],
    seed: int = 0,
    *,
    noise: float = DEFAULT_NOISE,
) -> _Tok:
    """The tokenizer with `tokens` as special tokens (those it lacks get new ids after its
    last), and `model` given rows for them; returns the new tokenizer.

    Usually the new ids lie past the model's last row and `grow_vocabulary` adds them. A model
    whose vocabulary was padded past its tokenizer's (an imported one may be) already has rows
    for some of them, rows no text ever trained; those are reset the same way (mean of the
    rows of the tokenizer's existing ids, plus noise), so that every new token starts alike.
    """
    rows = model.tok_emb.weight.size(0)
    if tokenizer.vocab_size > rows:
        raise TinyGPTError(
            f"the tokenizer has {tokenizer.vocab_size} ids but the model only {rows} rows; "
            "they do not belong together"
        )
    grown = tokenizer.with_special_tokens(tokens)
    if grown is tokenizer:
        return tokenizer
    old_ids = tokenizer.vocab_size
    reused = range(old_ids, min(grown.vocab_size, rows))
    if len(reused):
        generator = torch.Generator().manual_seed(seed)
        weights = [model.tok_emb.weight]
        if model.lm_head.weight is not model.tok_emb.weight:
            weights.append(model.lm_head.weight)
        for w in weights:
            w[old_ids : old_ids + len(reused)] = _fresh_rows(
                w[:old_ids], len(reused), generator, noise
            )
        seed += 1  # the rows grown below draw other noise
    grow_vocabulary(model, max(rows, grown.vocab_size), seed, noise=noise)
    return grown


@torch.no_grad()
def shorten_context(model: GPT, block_size: int) -> None:
    """Give `model` a context of `block_size` tokens (no longer than its own), in place: a
    learned position table keeps its first `block_size` rows; rotary tables are cut the same
    way (they depend only on the position)."""
    old = model.config.block_size
    if block_size > old:
        raise TinyGPTError(
            f"model.block_size {block_size} is longer than the base's context ({old}); "
            "fine-tuning can only keep or shorten it"
        )
    if block_size == old:
        return
    if model.pos_emb is not None:
        table = model.pos_emb.weight
        model.pos_emb = nn.Embedding(block_size, table.size(1), device=table.device)
        model.pos_emb.weight = nn.Parameter(
            table.detach()[:block_size].clone(), requires_grad=table.requires_grad
        )
    if getattr(model, "rope_cos", None) is not None:
        model.rope_cos = model.rope_cos[:block_size]
        model.rope_sin = model.rope_sin[:block_size]
    model.config = dataclasses.replace(model.config, block_size=block_size)
