"""Text generation: the decoding loop with a KV cache, sampling rules, streaming, `load`.

Owns: turning a model plus a prompt into new tokens (`generate_tokens`, `generate_ids`),
the sampling filters (temperature, top-k, top-p, repetition penalty), and `TextGenerator`,
the Python API behind `tinygpt sample` and `tinygpt.load(run_dir)` for PyTorch models.

The token loop (`generate_tokens`) knows nothing about text or tokenizers: it sees ids and a
model. `TextGenerator` adds the tokenizer through `tinygpt.infer.textgen` (prompt encoding,
UTF-8-safe streaming, stop strings: the torch-free text side, which the ONNX backend
`tinygpt.infer.onnx_runtime` shares). It does not know how runs are stored; `load` asks
`tinygpt.infer.loader.load_run` for that.

How the cache is used. The first step feeds the prompt (prefill, optionally in chunks of
`prefill_chunk` tokens onto the cache); every later step feeds only the newest token (decode).
When the sequence grows past the model's context (block_size), the window slides: the cache
is emptied and refilled with the last block_size tokens, so each step sees exactly the
tokens the no-cache path sees (it feeds the last block_size tokens every step). The two
paths therefore give the same greedy tokens for learned and rotary positions alike.

Different prompts in one batch are left-padded (`attention_mask`, 1 for real tokens): every
row keeps its own positions, cache length and window, so each row is continued as it would
be alone. Rows then advance together, one token per step, through one forward pass.

Example (a trained run folder):

    import tinygpt
    gen = tinygpt.load("runs/shakespeare")
    print(gen.generate("ROMEO:", max_new_tokens=50, seed=1))
    for piece in gen.stream("JULIET:", temperature=0.7):
        print(piece, end="", flush=True)
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from tinygpt.core.errors import TinyGPTError
from tinygpt.core.model import GPT
from tinygpt.core.runtime import resolve_device
from tinygpt.infer.loader import load_run
from tinygpt.infer.textgen import (  # also importable from here
    BaseTextGenerator,
    RowText,
    StreamDecoder,
    check_sampling,
    usable_prompts,
)

__all__ = [
    "RowText",
    "StreamDecoder",
    "TextGenerator",
    "apply_repetition_penalty",
    "check_sampling",
    "filter_logits",
    "generate_ids",
    "generate_tokens",
    "load",
    "sample_next",
    "usable_prompts",
]

# -------------------------------------------------------------------------------- sampling


def apply_repetition_penalty(logits: Tensor, seen: Tensor, penalty: float) -> Tensor:
    """Discourage tokens already in `seen` (B, L): positive logits are divided by `penalty`,
    negative ones multiplied (Keskar et al. 2019, CTRL; the rule transformers uses).

    >>> apply_repetition_penalty(torch.tensor([[2.0, -1.0, 3.0]]), torch.tensor([[0, 1]]), 2.0)
    tensor([[ 1., -2.,  3.]])
    """
    if penalty == 1.0:
        return logits
    scores = logits.gather(1, seen)  # (B, L)
    scores = torch.where(scores > 0, scores / penalty, scores * penalty)
    return logits.scatter(1, seen, scores)


def filter_logits(logits: Tensor, top_k: int | None = None, top_p: float | None = None) -> Tensor:
    """Set to -inf every logit outside the top k, and outside the nucleus of mass top_p
    (the smallest set of most likely tokens whose probabilities sum to at least top_p;
    Holtzman et al. 2019). logits (B, V) -> (B, V).

    >>> filter_logits(torch.tensor([[1.0, 3.0, 2.0]]), top_k=2)
    tensor([[-inf, 3., 2.]])
    """
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)  # (B, V)
        probs = torch.softmax(sorted_logits, dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs  # mass of the more likely tokens
        # A token is dropped once the tokens before it already reach top_p; the most likely
        # token is always kept because the mass before it is 0.
        drop_sorted = mass_before >= top_p
        drop = drop_sorted.scatter(1, order, drop_sorted)  # back to vocabulary order
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_next(
    logits: Tensor,
    seen: Tensor,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    repetition_penalty: float = 1.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Choose the next token of each row: logits (B, V), seen (B, L) -> ids (B,)."""
    logits = apply_repetition_penalty(logits, seen, repetition_penalty)
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = filter_logits(logits / temperature, top_k, top_p)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


# ------------------------------------------------------------------------------ token loop


@torch.inference_mode()
def generate_tokens(
    model: GPT,
    prompt: Tensor,
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    repetition_penalty: float = 1.0,
    seed: int | None = None,
    eot_id: int | None = None,
    use_cache: bool = True,
    prefill_chunk: int | None = None,
    attention_mask: Tensor | None = None,
    stop_ids: Sequence[int] = (),
) -> Iterator[Tensor]:
    """Yield the next token of every row, (B,), up to max_new_tokens times.

    prompt: (B, T) ids, T >= 1. attention_mask (B, T), for prompts of different lengths:
    left padding, i.e. each row is zeros (padding) then ones (its prompt, at least one token).
    A row ends at `eot_id` or any of `stop_ids` (a chat template's end-of-turn token); an
    ended row keeps yielding the id that ended it, and the loop ends early once every row
    has ended. `seed` seeds a private torch.Generator, so the global random state is neither
    used nor changed (the rows of one batch share it).
    """
    check_sampling(
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        repetition_penalty=repetition_penalty,
        seed=seed,
    )
    if prompt.dim() != 2 or prompt.size(1) == 0:
        raise TinyGPTError("the prompt must hold at least one token; give a non-empty prompt")
    if prefill_chunk is not None and prefill_chunk < 1:
        raise TinyGPTError(f"prefill_chunk must be at least 1, got {prefill_chunk}")
    device = prompt.device
    B, T0 = prompt.shape
    bs = model.config.block_size
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    pad = _left_padding(attention_mask, B, T0)  # (B,) padding columns of each row

    # One buffer for prompt + output: no concatenation per step. Row b's tokens are the
    # columns [pad[b], L); its padding holds copies of its first token, so that the
    # repetition penalty sees only the row's own tokens (attention never sees padding).
    tokens = torch.empty(B, T0 + max_new_tokens, dtype=torch.long, device=device)  # (B, L_max)
    tokens[:, :T0] = prompt
    if any(pad):
        first = prompt.gather(1, torch.tensor(pad, device=device)[:, None])  # (B, 1)
        tokens[:, :T0] = torch.where(_real_columns(pad, 0, T0, device), prompt, first)
    L = T0
    cache = model.new_cache(B, bs) if use_cache else None
    window = list(pad)  # column of each row's first cached token
    cached = [0] * B  # tokens of each row in the cache (what cache.lens holds)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    ends = ([eot_id] if eot_id is not None else []) + list(stop_ids)
    ends_t = torch.tensor(ends, dtype=torch.long, device=device)
    ended = torch.zeros(B, dtype=torch.long, device=device)  # the id each ended row repeats

    for _ in range(max_new_tokens):
        if cache is None:
            start = max(0, L - bs)  # the last block_size columns
            mask = _real_columns(pad, start, L, device) if any(pad) else None
            logits, _ = model(tokens[:, start:L], attention_mask=mask, last_only=True)
        else:
            full = [b for b in range(B) if L - window[b] > bs]
            if full:  # context full: slide these rows' windows, refill their cache rows
                for b in full:
                    window[b], cached[b] = L - bs, 0
                cache.reset(torch.tensor(full, device=device))
            todo = [w + c for w, c in zip(window, cached)]  # first column not yet cached
            start = min(todo)
            mask = _real_columns(todo, start, L, device) if max(todo) > start else None
            step = prefill_chunk or L - start
            for s in range(start, L, step):
                e = min(s + step, L)
                part = None if mask is None else mask[:, s - start : e - start]
                if part is not None and bool(part.all()):
                    part = None
                logits, _ = model(tokens[:, s:e], cache=cache, attention_mask=part, last_only=True)
            cached = [L - w for w in window]
        nxt = sample_next(
            logits[:, -1],
            tokens[:, :L],
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            repetition_penalty=repetition_penalty,
            generator=generator,
        )  # (B,)
        if ends:
            nxt = torch.where(done, ended, nxt)
            ended = torch.where(done, ended, nxt)
            done |= torch.isin(nxt, ends_t)
        tokens[:, L] = nxt
        L += 1
        yield nxt
        if ends and bool(done.all()):
            return


def _left_padding(mask: Tensor | None, B: int, T: int) -> list[int]:
    """Padding columns per row of a left-padded (B, T) 0/1 mask; all zeros for None."""
    if mask is None:
        return [0] * B
    if tuple(mask.shape) != (B, T):
        raise TinyGPTError(
            f"attention_mask has shape {tuple(mask.shape)} but the prompt has {(B, T)}"
        )
    pad = (mask == 0).sum(1)  # (B,)
    left = torch.equal(mask.bool(), _real_columns(pad.tolist(), 0, T, mask.device))
    if not left or bool((pad == T).any()):
        raise TinyGPTError(
            "attention_mask must be left padding: in each row zeros, then ones, with at "
            "least one token of prompt"
        )
    return pad.tolist()


def _real_columns(first: list[int], start: int, end: int, device: torch.device) -> Tensor:
    """(B, end - start) bool: True in columns [first[b], end) of row b."""
    cols = torch.arange(start, end, device=device)  # (T,)
    return cols >= torch.tensor(first, device=device)[:, None]  # (B, T)


def generate_ids(
    model: GPT,
    prompt_ids: Sequence[int],
    *,
    max_new_tokens: int,
    num_samples: int = 1,
    eot_id: int | None = None,
    stop_ids: Sequence[int] = (),
    **sampling: Any,
) -> list[list[int]]:
    """New token ids for `num_samples` continuations of one prompt (rows of one batch),
    each cut before its first end-of-text token (or any of `stop_ids`)."""
    device = next(model.parameters()).device
    prompt = torch.tensor([list(prompt_ids)] * num_samples, dtype=torch.long, device=device)
    steps = list(
        generate_tokens(
            model,
            prompt,
            max_new_tokens=max_new_tokens,
            eot_id=eot_id,
            stop_ids=stop_ids,
            **sampling,
        )
    )
    if not steps:
        return [[] for _ in range(num_samples)]
    out = torch.stack(steps, dim=1).tolist()  # (B, steps)
    ends = set(stop_ids) | ({eot_id} if eot_id is not None else set())
    if ends:
        out = [row[: next((i for i, t in enumerate(row) if t in ends), len(row))] for row in out]
    return out


# ---------------------------------------------------------------------------------- text


class TextGenerator(BaseTextGenerator):
    """A PyTorch model and its tokenizer (and chat template), ready to continue prompts and
    answer conversations: `generate`, `stream`, `chat`, `chat_stream` (see
    `tinygpt.infer.textgen.BaseTextGenerator` for the arguments).

    Greedy answers of a batch of prompts equal those of each prompt alone, except where the
    top two logits are closer than the last bits that a different batch shape changes in a
    CPU matmul (about 1e-5); sampled answers depend on the batch (the rows share one random
    generator).
    """

    def __init__(self, model: GPT, tokenizer: Any, template: Any = None) -> None:
        super().__init__(tokenizer, template)
        self.model = model.eval()
        self.block_size = model.config.block_size

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def token_steps(
        self,
        ids: list[list[int]],
        *,
        max_new_tokens: int,
        temperature: float,
        top_k: int | None,
        top_p: float | None,
        repetition_penalty: float,
        seed: int | None,
        stop_ids: tuple[int, ...] = (),
        use_cache: bool = True,
    ) -> Iterator[list[int]]:
        T = max(len(i) for i in ids)
        # Left padding: every row's last prompt token sits in the last column.
        prompt_t = torch.tensor([[0] * (T - len(i)) + i for i in ids], device=self.device)
        mask = None
        if any(len(i) < T for i in ids):
            mask = torch.tensor([[0] * (T - len(i)) + [1] * len(i) for i in ids])
        steps = generate_tokens(
            self.model,
            prompt_t,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            repetition_penalty=repetition_penalty,
            seed=seed,
            stop_ids=stop_ids or self.stop_token_ids,
            use_cache=use_cache,
            attention_mask=None if mask is None else mask.to(self.device),
        )
        try:
            for nxt in steps:
                yield nxt.tolist()
        finally:
            steps.close()


def load(run_dir: str | Path, checkpoint: str = "best", device: str = "cpu") -> TextGenerator:
    """Load a trained run folder into a `TextGenerator` (see its docstring for the API),
    with the run's chat template when it has one."""
    run = load_run(run_dir, checkpoint=checkpoint, device=resolve_device(device))
    return TextGenerator(run.model, run.tokenizer, run.template)
