"""The loss of a model on tokens, computed one way everywhere, and bits per byte.

**The loss.** `evaluate()` scores a 1-D array of token ids with a model whose context is
`block_size`:

- Default (`stride=None`): non-overlapping windows of `block_size` tokens cover the whole
  sequence, the last partial window included; inside a window, position t predicts token
  t+1. Every token after the very first is scored exactly once, each with the context that
  its window gives it (between 0 and block_size−1 earlier tokens).
- `stride=S` (1 ≤ S ≤ block_size): sliding windows advanced by S tokens; each window scores
  only its last S targets (the first window scores all of its own), so every token is still
  scored once but with at least block_size−S tokens of context — closer to the model's
  best, and slower.

Training uses it through `SplitEvaluator`: a cheap fixed estimate (`val_loss_est`, a spread
of `eval_windows` windows) during training and the full split at the end (`val_loss`).
Fine-tuning on conversations uses `ExampleEvaluator`: each held-out example on its own row,
with only the tokens its loss mask marks counted.

**Bits per byte.** The summed negative log-likelihood of the scored targets, in nats,
divided by ln 2 and by the number of UTF-8 bytes those same targets decode to:
bpb = nll / ln 2 / bytes. A tokenizer with long tokens has a high loss per token but few
tokens per byte, so bpb compares char-level and BPE models on the same text. An end-of-text
target stands for no bytes, yet its loss still counts: predicting where a document ends is
part of modelling the text.

This module knows nothing about run folders, files, optimisers or argument parsing: what
`tinygpt eval` scores and writes is `tinygpt.infer.evaluate`'s.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from tinygpt.core.errors import TinyGPTError
from tinygpt.data.tokenizer import Tokenizer

LN2 = math.log(2.0)


@dataclass
class EvalResult:
    """Summed negative log-likelihood (nats) over `tokens` scored targets."""

    nll: float
    tokens: int
    first: int = 1  # index in the sequence of the first scored target
    last: int = 0  # one past the index of the last scored target

    @property
    def loss(self) -> float:
        return self.nll / self.tokens if self.tokens else float("nan")

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss) if self.tokens else float("nan")


def windows(n: int, block_size: int, stride: int | None = None) -> Iterator[tuple[int, int, int]]:
    """Yield `(start, end, score_from)` windows over a sequence of `n` tokens.

    `stride` must have passed `check_stride`. The window's inputs are tokens[start:end], targets tokens[start+1:end+1]; targets at
    positions >= score_from (relative to start) are scored.

    >>> list(windows(10, 4))
    [(0, 4, 0), (4, 8, 0), (8, 9, 0)]
    >>> list(windows(10, 4, stride=2))
    [(0, 4, 0), (2, 6, 2), (4, 8, 2), (5, 9, 3)]
    """
    last_target = n - 1  # inputs may go up to n-2, the last target is n-1
    if last_target <= 0:
        return
    if stride is None or stride >= block_size:
        for start in range(0, last_target, block_size):
            yield start, min(start + block_size, last_target), 0
        return
    yield 0, min(block_size, last_target), 0
    scored_to = min(block_size, last_target)  # targets up to this input index are scored
    while scored_to < last_target:
        end = min(scored_to + stride, last_target)
        start = max(0, end - block_size)
        yield start, end, scored_to - start
        scored_to = end


def check_stride(stride: int | None, block_size: int) -> None:
    """The one check of a sliding-window stride: None, or 1..block_size."""
    if stride is not None and not 1 <= stride <= block_size:
        raise TinyGPTError(
            f"--stride {stride} must be between 1 and the model's context ({block_size})"
        )


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    tokens: np.ndarray | torch.Tensor,
    block_size: int,
    *,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    stride: int | None = None,
    max_tokens: int | None = None,
    window_ids: list[int] | None = None,
    autocast: Callable[[], AbstractContextManager] | None = None,
) -> EvalResult:
    """Sum the cross-entropy of `model` over `tokens` (see the module docstring).

    `max_tokens` caps the sequence length evaluated (its first `max_tokens` tokens);
    `window_ids` restricts the default windows to these indices (a fixed subset).
    """
    if batch_size < 1:
        raise TinyGPTError(f"the evaluation batch size must be at least 1, got {batch_size}")
    check_stride(stride, block_size)
    if max_tokens is not None and max_tokens < 1:
        raise TinyGPTError(f"--max-tokens {max_tokens} must be at least 1")
    seq = tokens[: max_tokens + 1] if max_tokens else tokens
    n = len(seq)
    spans = list(windows(n, block_size, stride))
    if window_ids is not None:
        spans = [spans[i] for i in window_ids if i < len(spans)]
    was_training = model.training
    model.eval()
    nll = 0.0
    count = 0
    ctx = autocast or nullcontext
    try:
        # Full windows are batched together; the final partial window runs on its own.
        full = [s for s in spans if s[1] - s[0] == block_size]
        partial = [s for s in spans if s[1] - s[0] != block_size]
        groups = [full[i : i + batch_size] for i in range(0, len(full), batch_size)]
        groups += [[s] for s in partial]
        for group in groups:
            x = torch.stack([_as_tensor(seq, s, e) for s, e, _ in group]).to(device)
            y = torch.stack([_as_tensor(seq, s + 1, e + 1) for s, e, _ in group]).to(device)
            for row, (_, _, frm) in enumerate(group):
                y[row, :frm] = -1  # context only, scored by an earlier window
            with ctx():
                logits, _ = model(x)
            loss = F.cross_entropy(
                logits.float().reshape(-1, logits.size(-1)),
                y.reshape(-1),
                ignore_index=-1,
                reduction="sum",
            )
            nll += loss.item()
            count += int((y != -1).sum())
    finally:
        model.train(was_training)
    first = 1
    last = max((e for _, e, _ in spans), default=0) + 1 if spans else 0
    return EvalResult(nll=nll, tokens=count, first=first, last=last)


def _as_tensor(seq: np.ndarray | torch.Tensor, start: int, end: int) -> torch.Tensor:
    chunk = seq[start:end]
    if isinstance(chunk, torch.Tensor):
        return chunk.long()
    return torch.from_numpy(np.asarray(chunk, dtype=np.int64))


def spread_windows(n_tokens: int, block_size: int, count: int) -> list[int]:
    """Indices of `count` default windows spread evenly over a sequence (a fixed subset)."""
    total = max(0, (n_tokens - 2) // block_size + 1) if n_tokens > 1 else 0
    if total <= count:
        return list(range(total))
    return (
        sorted({round(i * (total - 1) / (count - 1)) for i in range(count)}) if count > 1 else [0]
    )


class SplitEvaluator:
    """The validation loss during training: `estimate` scores a fixed spread of
    `eval_windows` windows (cheap, the same windows every time, so estimates compare);
    `final` scores the whole split. The fine-tuning loop hands `fit` a different evaluator
    with the same two methods."""

    def __init__(
        self,
        tokens: np.ndarray,
        block_size: int,
        *,
        batch_size: int,
        windows: int,
        device: str,
        autocast: Callable[[], AbstractContextManager] | None = None,
    ) -> None:
        self.tokens = tokens
        self.block_size = block_size
        self.batch_size = batch_size
        self.device = device
        self.autocast = autocast
        self.window_ids = spread_windows(len(tokens), block_size, windows)

    def _run(self, model: torch.nn.Module, window_ids: list[int] | None) -> EvalResult:
        return evaluate(
            model,
            self.tokens,
            self.block_size,
            batch_size=self.batch_size,
            device=self.device,
            window_ids=window_ids,
            autocast=self.autocast,
        )

    def estimate(self, model: torch.nn.Module) -> float:
        return self._run(model, self.window_ids).loss

    def final(self, model: torch.nn.Module) -> EvalResult:
        return self._run(model, None)


@torch.no_grad()
def evaluate_examples(
    model: torch.nn.Module,
    split: Any,
    indices: Sequence[int],
    *,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    autocast: Callable[[], AbstractContextManager] | None = None,
    pad_id: int = 0,
) -> EvalResult:
    """Sum the cross-entropy of `model` over the scored tokens (the assistant's, by the
    examples' loss masks) of the examples `indices` of `split` (a
    `tinygpt.data.examples.ExampleSplit`), each example on its own row with its own context.

    Examples are batched in order of length, padded on the right; padding and the tokens the
    mask leaves out are not scored."""
    if batch_size < 1:
        raise TinyGPTError(f"the evaluation batch size must be at least 1, got {batch_size}")
    lengths = split.lengths
    order = sorted(indices, key=lambda i: int(lengths[i]))
    was_training = model.training
    model.eval()
    ctx = autocast or nullcontext
    nll, count = 0.0, 0
    try:
        for g in range(0, len(order), batch_size):
            group = order[g : g + batch_size]
            T = max(int(lengths[i]) for i in group) - 1
            x = torch.full((len(group), T), pad_id, dtype=torch.long)  # (B, T)
            y = torch.full((len(group), T), -1, dtype=torch.long)  # (B, T)
            for r, i in enumerate(group):
                ids, mask = split.example(i)
                n = len(ids) - 1
                x[r, :n] = torch.from_numpy(ids[:-1])
                y[r, :n] = torch.from_numpy(np.where(mask[1:] > 0, ids[1:], -1))
            x, y = x.to(device), y.to(device)
            with ctx():
                logits, _ = model(x)
            loss = F.cross_entropy(
                logits.float().reshape(-1, logits.size(-1)),
                y.reshape(-1),
                ignore_index=-1,
                reduction="sum",
            )
            nll += loss.item()
            count += int((y != -1).sum())
    finally:
        model.train(was_training)
    return EvalResult(nll=nll, tokens=count)


class ExampleEvaluator:
    """The validation loss of a fine-tune: the assistant tokens of held-out examples (the
    same interface as `SplitEvaluator`). `estimate` scores a fixed spread of `examples`
    of them, `final` all of them. The score follows the examples' masks even when training
    scores the prompt too (`--train-on-prompt`), so that losses compare across both."""

    def __init__(
        self,
        split: Any,
        indices: Sequence[int],
        *,
        batch_size: int,
        examples: int,
        device: str,
        autocast: Callable[[], AbstractContextManager] | None = None,
        pad_id: int = 0,
    ) -> None:
        self.split = split
        self.indices = list(indices)
        self.batch_size = batch_size
        self.device = device
        self.autocast = autocast
        self.pad_id = pad_id
        n = len(self.indices)
        if n <= examples:
            self.subset = self.indices
        else:
            picks = sorted({round(i * (n - 1) / max(examples - 1, 1)) for i in range(examples)})
            self.subset = [self.indices[i] for i in picks]

    def _run(self, model: torch.nn.Module, indices: Sequence[int]) -> EvalResult:
        return evaluate_examples(
            model,
            self.split,
            indices,
            batch_size=self.batch_size,
            device=self.device,
            autocast=self.autocast,
            pad_id=self.pad_id,
        )

    def estimate(self, model: torch.nn.Module) -> float:
        return self._run(model, self.subset).loss

    def final(self, model: torch.nn.Module) -> EvalResult:
        return self._run(model, self.indices)


# ------------------------------------------------------------------------ bits per byte


def token_byte_lengths(tokenizer: Tokenizer) -> np.ndarray:
    """UTF-8 length of every token id, (V,) int64; special tokens have length 0.

    >>> from tinygpt.data.tokenizer import CharTokenizer
    >>> token_byte_lengths(CharTokenizer(["a", "é"])).tolist()  # a, é, <|endoftext|>
    [1, 2, 0]
    """
    return np.array(
        [len(tokenizer.token_bytes(i)) for i in range(tokenizer.vocab_size)], dtype=np.int64
    )


def count_bytes(tokens: np.ndarray | Sequence[int], lengths: np.ndarray) -> int:
    """Total UTF-8 bytes of `tokens` given per-token `lengths`."""
    ids = np.asarray(tokens, dtype=np.int64)
    return int(lengths[ids].sum()) if ids.size else 0


def bits_per_byte(nll_nats: float, n_bytes: int) -> float:
    """nll (nats, summed) / ln 2 / bytes; nan when there are no bytes.

    >>> round(bits_per_byte(math.log(4) * 3, 3), 6)  # three bytes, each 1 in 4 likely
    2.0
    """
    return nll_nats / LN2 / n_bytes if n_bytes else float("nan")


@dataclass
class LossResult:
    """The numbers `tinygpt eval --json` prints (and `results.json` holds)."""

    val_loss: float
    val_ppl: float
    val_bpb: float
    nll: float  # summed, nats
    tokens: int  # scored targets
    bytes: int  # UTF-8 bytes of the scored targets
    checkpoint: str = ""
    step: int = 0
    data: str = ""
    stride: int | None = None
    max_tokens: int | None = None
    lines: int | None = None  # with --per-line: how many lines were scored

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def score_tokens(
    model: Any,
    tokens: np.ndarray,
    tokenizer: Tokenizer,
    block_size: int,
    *,
    batch_size: int = 32,
    device: str = "cpu",
    stride: int | None = None,
    max_tokens: int | None = None,
) -> LossResult:
    """Loss, perplexity and bits per byte of `model` on `tokens` (see the module docstring).

    The targets `evaluate` scores are tokens[first:last]; their bytes are the denominator.
    """
    if len(tokens) < 2:
        raise TinyGPTError(
            f"the evaluation text has {len(tokens)} token(s); at least 2 are needed (one to"
            " read, one to predict); give more text"
        )
    result = evaluate(
        model,
        tokens,
        block_size,
        batch_size=batch_size,
        device=device,
        stride=stride,
        max_tokens=max_tokens,
    )
    n_bytes = count_bytes(tokens[result.first : result.last], token_byte_lengths(tokenizer))
    return LossResult(
        val_loss=result.loss,
        val_ppl=result.perplexity,
        val_bpb=bits_per_byte(result.nll, n_bytes),
        nll=result.nll,
        tokens=result.tokens,
        bytes=n_bytes,
        stride=stride,
        max_tokens=max_tokens,
    )


def score_lines(
    model: Any,
    lines: Sequence[str],
    tokenizer: Tokenizer,
    block_size: int,
    *,
    batch_size: int = 32,
    device: str = "cpu",
) -> LossResult:
    """Per-line perplexity, as held-out sentences are scored: each line on its own, preceded
    by end-of-text (its only context) and followed by it; every token of the line and the
    closing end-of-text is scored. The loss, perplexity and bits per byte are corpus-level:
    summed over all those tokens, divided once.

    Lines that fit the context (with both end-of-text tokens) run as rows of one batch,
    right-padded with unscored targets; a longer line is scored alone in windows
    (`evaluate`), every token once.
    """
    if not lines:
        raise TinyGPTError("--per-line found no lines of text to score; give a file of lines")
    eot = tokenizer.eot_id
    seqs = [[eot, *tokenizer.encode(line), eot] for line in lines]
    lengths = token_byte_lengths(tokenizer)
    nll, count, n_bytes = 0.0, 0, 0
    short = [s for s in seqs if len(s) <= block_size + 1]
    for seq in (s for s in seqs if len(s) > block_size + 1):
        result = evaluate(model, np.asarray(seq), block_size, batch_size=batch_size, device=device)
        nll, count = nll + result.nll, count + result.tokens
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for i in range(0, len(short), batch_size):
                group = short[i : i + batch_size]
                T = max(len(s) for s in group) - 1
                x = torch.zeros(len(group), T, dtype=torch.long)
                y = torch.full((len(group), T), -1, dtype=torch.long)
                for row, seq in enumerate(group):
                    x[row, : len(seq) - 1] = torch.tensor(seq[:-1])
                    y[row, : len(seq) - 1] = torch.tensor(seq[1:])
                logits, _ = model(x.to(device))
                nll += F.cross_entropy(
                    logits.float().reshape(-1, logits.size(-1)),
                    y.to(device).reshape(-1),
                    ignore_index=-1,
                    reduction="sum",
                ).item()
                count += int((y != -1).sum())
    finally:
        model.train(was_training)
    n_bytes = sum(count_bytes(s[1:], lengths) for s in seqs)
    loss = nll / count
    return LossResult(
        val_loss=loss,
        val_ppl=math.exp(loss),
        val_bpb=bits_per_byte(nll, n_bytes),
        nll=nll,
        tokens=count,
        bytes=n_bytes,
        lines=len(seqs),
    )
