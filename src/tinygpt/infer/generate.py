"""Text generation: the decoding loop with a KV cache, streaming, `load`.

Owns: turning a model plus a prompt into new tokens (`generate_tokens`, `generate_ids`) and
`TextGenerator`, the Python API behind `tinygpt sample` and `tinygpt.load(run_dir)` for
PyTorch models. How a token is chosen (temperature, top-k, top-p, repetition penalty, the
seed) and where the window slides are `tinygpt.infer.sampler`'s rules, shared with the
serving engine and the ONNX backend.

The token loop (`generate_tokens`) knows nothing about text or tokenizers: it sees ids and a
model. `TextGenerator` adds the tokenizer through `tinygpt.infer.textgen` (prompt encoding,
UTF-8-safe streaming, stop strings: the torch-free text side, which the ONNX backend
`tinygpt.infer.onnx_runtime` shares). It does not know how runs are stored; `load` asks
`tinygpt.infer.loader.load_run` for that.

How the cache is used. The first step feeds the prompt (prefill, optionally in chunks of
`prefill_chunk` tokens onto the cache); every later step feeds only the newest token (decode).
When the sequence grows past the model's context (block_size), the window slides
(`tinygpt.infer.sampler.window_start`): the cache is emptied and refilled with the last
block_size tokens, so each step sees exactly the tokens the no-cache path sees (it feeds the
last block_size tokens every step). The two paths therefore give the same greedy tokens for
learned and rotary positions alike.

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

from collections.abc import Generator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from tinygpt.core.errors import TinyGPTError
from tinygpt.core.model import GPT
from tinygpt.core.runtime import resolve_device
from tinygpt.data.template import ChatTemplate
from tinygpt.data.tokenizer import Tokenizer
from tinygpt.infer.loader import load_run
from tinygpt.infer.sampler import row_generators, sample_rows, window_start
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
    "check_sampling",
    "generate_ids",
    "generate_tokens",
    "load",
    "usable_prompts",
]

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
    vocab: int | None = None,
) -> Generator[Tensor, None, None]:
    """Yield the next token of every row, (B,), up to max_new_tokens times.

    prompt: (B, T) ids, T >= 1. attention_mask (B, T), for prompts of different lengths:
    left padding, i.e. each row is zeros (padding) then ones (its prompt, at least one token).
    A row ends at `eot_id` or any of `stop_ids` (a chat template's end-of-turn token); an
    ended row keeps yielding the id that ended it, and the loop ends early once every row
    has ended. Tokens are chosen by `tinygpt.infer.sampler.sample_token`, row b drawing from
    its own generator (`row_generators(seed, B)[b]`), so the global random state is neither
    used nor changed. `vocab` limits the choice to ids below it (a model whose vocabulary is
    padded past its tokenizer's never picks an id the tokenizer cannot decode).
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
    pad = _left_padding(attention_mask, B, T0)  # (B,) padding columns of each row
    tokens = _token_buffer(prompt, pad, max_new_tokens)  # (B, T0 + max_new_tokens)
    L = T0
    window = _Window(model, pad, use_cache=use_cache, prefill_chunk=prefill_chunk)
    rngs = row_generators(seed, B)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    ends = ([eot_id] if eot_id is not None else []) + list(stop_ids)
    ends_t = torch.tensor(ends, dtype=torch.long, device=device)
    ended = torch.zeros(B, dtype=torch.long, device=device)  # the id each ended row repeats

    for _ in range(max_new_tokens):
        logits = window.logits(tokens, L)[:, :vocab]  # (B, V) of each row's last position
        if repetition_penalty != 1.0:  # each row's own tokens, without its padding
            seen = [row[p:] for row, p in zip(tokens[:, :L].cpu().numpy(), pad)]
        else:
            seen = [()] * B
        picked = sample_rows(
            logits.float().cpu().numpy(),
            seen,
            rngs,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            repetition_penalty=repetition_penalty,
        )
        nxt = torch.tensor(picked, dtype=torch.long, device=device)  # (B,)
        if ends:
            nxt = torch.where(done, ended, nxt)
            ended = torch.where(done, ended, nxt)
            done |= torch.isin(nxt, ends_t)
        tokens[:, L] = nxt
        L += 1
        yield nxt
        if ends and bool(done.all()):
            return


def _token_buffer(prompt: Tensor, pad: list[int], max_new_tokens: int) -> Tensor:
    """One buffer for prompt + output, (B, T0 + max_new_tokens): no concatenation per step.

    Row b's tokens are the columns [pad[b], L); its padding holds copies of its first token
    (attention never sees padding; the loop hands the sampler only the row's own columns).
    """
    B, T0 = prompt.shape
    tokens = torch.empty(B, T0 + max_new_tokens, dtype=torch.long, device=prompt.device)
    tokens[:, :T0] = prompt
    if any(pad):
        first = prompt.gather(1, torch.tensor(pad, device=prompt.device)[:, None])  # (B, 1)
        tokens[:, :T0] = torch.where(_real_columns(pad, 0, T0, prompt.device), prompt, first)
    return tokens


class _Window:
    """What the model sees of each row at each step, and the forward pass that shows it.

    Without a cache every step feeds each row's last block_size columns (its window by
    `window_start`). With one, only the columns not yet cached are fed: the whole prompt
    first (in `prefill_chunk` pieces), then the newest token; a row whose window slides
    has its cache row emptied and refilled from its window's first column.
    """

    def __init__(
        self, model: GPT, pad: list[int], *, use_cache: bool, prefill_chunk: int | None
    ) -> None:
        self.model, self.pad, self.chunk = model, pad, prefill_chunk
        self.bs = model.config.block_size
        self.cache = model.new_cache(len(pad), self.bs) if use_cache else None
        self.start = list(pad)  # column of each row's first token in its window
        self.cached = [0] * len(pad)  # tokens of each row in the cache (cache.lens)

    def logits(self, tokens: Tensor, L: int) -> Tensor:
        """(B, V): the logits of column L - 1 of every row, having seen columns [.., L)."""
        device = tokens.device
        if self.cache is None:  # the last block_size columns; padding masked out
            first = window_start(0, L, self.bs)
            mask = _real_columns(self.pad, first, L, device) if any(self.pad) else None
            logits, _ = self.model(tokens[:, first:L], attention_mask=mask, last_only=True)
            return logits[:, -1]
        moved = [window_start(s, L, self.bs) for s in self.start]
        slid = [b for b, (old, new) in enumerate(zip(self.start, moved)) if new != old]
        if slid:  # context full: these rows' windows slide, their cache rows are refilled
            for b in slid:
                self.start[b], self.cached[b] = moved[b], 0
            self.cache.reset(torch.tensor(slid, device=device))
        todo = [s + c for s, c in zip(self.start, self.cached)]  # first column not yet cached
        first = min(todo)
        mask = _real_columns(todo, first, L, device) if max(todo) > first else None
        step = self.chunk or L - first
        for s in range(first, L, step):
            e = min(s + step, L)
            part = None if mask is None else mask[:, s - first : e - first]
            if part is not None and bool(part.all()):
                part = None
            logits, _ = self.model(
                tokens[:, s:e], cache=self.cache, attention_mask=part, last_only=True
            )
        self.cached = [L - s for s in self.start]
        return logits[:, -1]


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
    CPU matmul (about 1e-5). Row r of a batch samples with the seed's child r
    (`tinygpt.infer.sampler.row_generators`): the first row gets what its prompt gets alone
    (and from the serving engine and an ONNX export, with the same seed), the other rows
    their own reproducible samples.
    """

    def __init__(
        self, model: GPT, tokenizer: Tokenizer, template: ChatTemplate | None = None
    ) -> None:
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
    ) -> Generator[list[int], None, None]:
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
            vocab=self.tokenizer.vocab_size,
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
