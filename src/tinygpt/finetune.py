"""Fine-tuning's changes to a trained model and its data, applied from outside the model.

Owns: growing a model's vocabulary for special tokens its tokenizer lacks
(`grow_vocabulary`, `add_special_tokens`), checking that a character-level tokenizer can
encode new data (`check_encodable`), and turning a loss mask over token ids into next-token
targets (`masked_targets`). Knows nothing about chat formats (`tinygpt.chat` renders and
masks conversations), files, or the training loop; `model.py` never learns that its
vocabulary grew.

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
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from tinygpt.errors import TinyGPTError

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
    model: Any, new_vocab_size: int, seed: int = 0, *, noise: float = DEFAULT_NOISE
) -> None:
    """Give `model` (a `tinygpt.model.GPT`) `new_vocab_size` token ids, in place.

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
    model: Any,
    tokenizer: Any,
    tokens: Sequence[str],
    seed: int = 0,
    *,
    noise: float = DEFAULT_NOISE,
) -> Any:
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


def check_encodable(tokenizer: Any, texts: Iterable[str]) -> Counter[str]:
    """Characters of `texts` that a character-level tokenizer has never seen, with counts.

    Byte-level BPE encodes anything: the result is empty. A character tokenizer with an
    unknown token (`<unk>`) reads each unseen character as that token: the result says how
    many, for the caller to report. Without one, unseen characters are an error that gives
    their count and the most frequent of them; train the base on text that holds them, or
    with `--unk`.

    >>> from tinygpt.tokenizer import CharTokenizer
    >>> check_encodable(CharTokenizer(["a", "b"], unk=True), ["abc", "cd"])
    Counter({'c': 2, 'd': 1})
    """
    known = getattr(tokenizer, "stoi", None)
    unseen: Counter[str] = Counter()
    if known is None:
        return unseen
    for text in texts:
        unseen.update(c for c in text if c not in known)
    if unseen and getattr(tokenizer, "unk_id", None) is None:
        examples = ", ".join(f"{c!r} (U+{ord(c):04X}) x{n}" for c, n in unseen.most_common(5))
        raise TinyGPTError(
            f"the data holds {sum(unseen.values())} characters ({len(unseen)} distinct) that "
            f"this character-level tokenizer has never seen, e.g. {examples}; it has no <unk> "
            "token to read them as, so pre-train the base on text that holds them (or with "
            "--unk), or remove them from the data"
        )
    return unseen


def masked_targets(ids: Sequence[int], mask: Sequence[int]) -> list[int]:
    """Next-token targets for `ids[:-1]`: the model reads ids[:t + 1] and is scored on
    ids[t + 1], so target t is ids[t + 1] where mask[t + 1] is set and -1 (ignored by the
    loss) elsewhere. The first id is never a target.

    >>> masked_targets([5, 6, 7, 8], [0, 0, 1, 1])
    [-1, 7, 8]
    """
    if len(ids) != len(mask):
        raise TinyGPTError(f"{len(ids)} ids but {len(mask)} mask entries; they must match")
    return [i if m else -1 for i, m in zip(ids[1:], mask[1:])]
