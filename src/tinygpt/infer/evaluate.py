"""Evaluation: the loss of a model on tokens, computed one way everywhere, and what
`tinygpt eval` reports on top of it.

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

**Bits per byte.** The summed negative log-likelihood of the scored targets, in nats,
divided by ln 2 and by the number of UTF-8 bytes those same targets decode to:
bpb = nll / ln 2 / bytes. A tokenizer with long tokens has a high loss per token but few
tokens per byte, so bpb compares char-level and BPE models on the same text. An end-of-text
target stands for no bytes, yet its loss still counts: predicting where a document ends is
part of modelling the text.

**Which text.** The run's validation split (the dataset recorded in the run folder), another
prepared folder (its tokenizer must be the run's), or any text source that
`tinygpt.data.corpora.iter_documents` reads, encoded with the run's tokenizer, every document
followed by one end-of-text token (as `tinygpt prepare` lays them out). A run fine-tuned on
conversations is scored on the assistant tokens of its held-out examples instead
(`score_examples`; `ExampleEvaluator` is the same during fine-tuning): each example on its
own row, with only the tokens its loss mask marks counted, and bits per byte over the bytes
of those tokens.

**Generation quality.** A prompt set is a JSONL file of `{"prompt", "reference"}` lines;
`make_prompts` cuts one from a token split (the first K tokens of a window as prompt, the
next M as reference). Continuations are scored against the references with sacrebleu's
corpus BLEU and chrF (0..100; identical text scores 100).

Results go to the run's `eval/` folder (`tinygpt.core.run`): `results.json` (the last loss
evaluation), `generations.jsonl`, `prompts.jsonl` and `scores.json`. This module knows
nothing about optimisers, argument parsing or report layout.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from tinygpt.core.config import SAMPLE_TEMPERATURE, SAMPLE_TOP_K
from tinygpt.core.errors import TinyGPTError
from tinygpt.core.files import (
    atomic_write_json,
    atomic_write_text,
    read_jsonl,
    require_file,
    require_folder,
)

LN2 = math.log(2.0)
# The fixed prompts of `--samples`: a document start, then openings that suit prose,
# verse or dialogue in either built-in language.
SAMPLE_PROMPTS = ["\n", "The ", "ROMEO:\n", "Bir "]


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
    autocast: Callable[[], object] | None = None,
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
        autocast: Callable[[], object] | None = None,
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
    autocast: Callable[[], object] | None = None,
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
        autocast: Callable[[], object] | None = None,
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


def token_byte_lengths(tokenizer: Any) -> np.ndarray:
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
    tokenizer: Any,
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


# --------------------------------------------------------------------------- which text


def score_lines(
    model: Any,
    lines: Sequence[str],
    tokenizer: Any,
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


def read_lines(path: str | Path, errors: str = "strict") -> list[str]:
    """The non-blank lines of a text file (line breaks removed)."""
    from tinygpt.core.files import read_text

    path = Path(path)
    if errors == "replace":
        text = require_file(path, "input file").read_bytes().decode("utf-8", errors="replace")
    else:
        text = read_text(path, "input file")
    return [line for line in text.splitlines() if line.strip()]


def encode_documents(documents: Iterable[str], tokenizer: Any) -> np.ndarray:
    """Token ids of `documents`, each followed by one end-of-text token, as (N,) int64."""
    ids: list[int] = []
    chars = 0
    for doc in documents:
        chars += len(doc)
        ids.extend(tokenizer.encode(doc))
        ids.append(tokenizer.eot_id)
    if chars == 0:
        raise TinyGPTError("the evaluation text is empty; give a file or folder that holds text")
    return np.asarray(ids, dtype=np.int64)


def open_checked_dataset(data_dir: str | Path, run_dir: str | Path) -> Any:
    """A prepared dataset folder whose tokenizer is the run's (same file hash)."""
    from tinygpt.core.run import RunDir
    from tinygpt.data.prepare import open_dataset
    from tinygpt.data.tokenizer import file_hash

    run = RunDir(run_dir)
    data_dir = require_folder(
        data_dir,
        "dataset folder",
        "give --data DIR (a folder made by `tinygpt prepare`) or --input PATH",
    )
    dataset = open_dataset(data_dir)
    theirs = dataset.meta.get("tokenizer_hash") or file_hash(dataset.tokenizer_path)
    if theirs != file_hash(run.tokenizer_path):
        raise TinyGPTError(
            f"{data_dir} was prepared with another tokenizer than the run {run.path}; prepare"
            f" the text with --tokenizer {run.tokenizer_path}, or use --input PATH"
        )
    return dataset


def resolve_eval_tokens(
    run_dir: str | Path,
    tokenizer: Any,
    *,
    data: str | Path | None = None,
    input: str | None = None,
    split: str = "val",
    text_field: str = "text",
    errors: str = "strict",
) -> tuple[np.ndarray, str]:
    """(tokens, description) for the text asked for; the run's validation split by default.

    `text_field` and `errors` say how to read `input` (JSONL field; bytes that are not UTF-8).
    """
    if data and input:
        raise TinyGPTError("give either --data DIR or --input PATH, not both")
    if input:
        from tinygpt.data.sources import iter_documents

        docs = iter_documents(input, text_field=text_field, errors=errors)
        return encode_documents(docs, tokenizer), f"input {input}"
    if data is None:
        from tinygpt.core.run import RunDir

        data = RunDir(run_dir).dataset_dir()
        if data is None or not Path(data).is_dir():
            where = f" ({data})" if data else ""
            raise TinyGPTError(
                f"the dataset the run was trained on{where} is gone; evaluate on a prepared"
                " folder with --data DIR or on any text with --input PATH"
            )
    dataset = open_checked_dataset(data, run_dir)
    tokens = dataset.val if split == "val" else dataset.train
    return tokens, f"{split} split of {dataset.path}"


def evaluate_run(
    run_dir: str | Path,
    *,
    checkpoint: str = "best",
    data: str | Path | None = None,
    input: str | None = None,
    text_field: str = "text",
    errors: str = "strict",
    stride: int | None = None,
    max_tokens: int | None = None,
    device: str = "cpu",
    batch_size: int = 32,
    save: bool = True,
    per_line: bool = False,
) -> LossResult:
    """Load a run and score it (module docstring); with `save`, write RUN/eval/results.json.
    `per_line` scores each line of the text file `input` on its own (`score_lines`)."""
    from tinygpt.core.run import RunDir
    from tinygpt.core.runtime import resolve_device
    from tinygpt.data.prepare import largest_id
    from tinygpt.infer.loader import load_run

    run_dir = RunDir(run_dir).require().path
    if per_line and (not input or data):
        raise TinyGPTError("--per-line scores the lines of a text file: give --input FILE")
    run = load_run(run_dir, checkpoint=checkpoint, device=resolve_device(device))
    device_of_model = str(next(run.model.parameters()).device)
    block = run.config.model.block_size
    if per_line:
        if stride is not None or max_tokens is not None:
            raise TinyGPTError("--per-line scores whole lines: drop --stride and --max-tokens")
        lines = read_lines(input, errors)
        result = score_lines(
            run.model, lines, run.tokenizer, block, batch_size=batch_size, device=device_of_model
        )
        result.data = f"{len(lines)} lines of {input}"
    examples = None if input else _examples_of(run_dir, data)
    if examples is not None:
        if stride is not None or max_tokens is not None:
            raise TinyGPTError(
                "--stride and --max-tokens apply to text; held-out examples are scored whole"
            )
        result = score_examples(
            run.model, examples, run.tokenizer, block, batch_size=batch_size, device=device_of_model
        )
    if per_line or examples is not None:
        result.checkpoint, result.step = run.checkpoint_dir.name, run.step
        if save:
            RunDir(run_dir).write_eval("results.json", result.to_dict())
        return result
    tokens, what = resolve_eval_tokens(
        run_dir, run.tokenizer, data=data, input=input, text_field=text_field, errors=errors
    )
    vocab = run.config.model.vocab_size
    if len(tokens) and largest_id(tokens) >= vocab:
        raise TinyGPTError(
            f"the {what} holds token id {largest_id(tokens):,}, beyond the model's vocabulary"
            f" of {vocab:,}; the dataset is damaged or was made with another tokenizer"
        )
    result = score_tokens(
        run.model,
        tokens,
        run.tokenizer,
        run.config.model.block_size,
        batch_size=batch_size,
        device=str(next(run.model.parameters()).device),
        stride=stride,
        max_tokens=max_tokens,
    )
    result.checkpoint = run.checkpoint_dir.name
    result.step = run.step
    result.data = what
    if save:
        RunDir(run_dir).write_eval("results.json", result.to_dict())
    return result


def _examples_of(run_dir: str | Path, data: str | Path | None) -> Any:
    """The examples folder to score: `data` when it is one; without `data`, the one a
    fine-tuned run was trained on (None when the text to score is not examples)."""
    from tinygpt.core.run import RunDir
    from tinygpt.data.examples import is_examples, open_examples
    from tinygpt.data.tokenizer import file_hash

    path = Path(data) if data else RunDir(run_dir).dataset_dir()
    if path is None or not is_examples(path):
        return None
    examples = open_examples(path)
    if examples.meta.get("tokenizer_hash") != file_hash(RunDir(run_dir).tokenizer_path):
        raise TinyGPTError(
            f"{path} was prepared with another tokenizer than the run {run_dir}; prepare the"
            f" examples with --tokenizer {run_dir}"
        )
    return examples


def score_examples(
    model: Any,
    examples: Any,
    tokenizer: Any,
    block_size: int,
    *,
    batch_size: int = 16,
    device: str = "cpu",
) -> LossResult:
    """Loss, perplexity and bits per byte of `model` on the assistant tokens of the held-out
    examples of an examples folder (`tinygpt.data.examples.open_examples`); examples longer than
    the context are left out, as fine-tuning leaves them out."""
    from tinygpt.data.examples import fit_to_context

    split = examples.val
    keep, dropped = fit_to_context(split, block_size)
    if not len(keep):
        raise TinyGPTError(
            f"none of the {len(split)} held-out examples of {examples.path} fits the model's"
            f" context of {block_size} tokens"
        )
    result = evaluate_examples(
        model, split, keep.tolist(), batch_size=batch_size, device=device,
        pad_id=tokenizer.eot_id,
    )  # fmt: skip
    lengths = token_byte_lengths(tokenizer)
    n_bytes = 0
    for i in keep.tolist():
        ids, mask = split.example(i)
        n_bytes += count_bytes(ids[1:][mask[1:] > 0], lengths)
    left_out = f", {dropped} longer than the context left out" if dropped else ""
    return LossResult(
        val_loss=result.loss,
        val_ppl=result.perplexity,
        val_bpb=bits_per_byte(result.nll, n_bytes),
        nll=result.nll,
        tokens=result.tokens,
        bytes=n_bytes,
        data=f"assistant tokens of {len(keep)} held-out examples of {examples.path}{left_out}",
    )


# ------------------------------------------------------------------------ prompt sets


def make_prompts(
    tokens: np.ndarray, tokenizer: Any, prompt_tokens: int, reference_tokens: int, count: int = 20
) -> list[dict[str, str]]:
    """`count` prompt/reference pairs cut from windows spread evenly over `tokens`.

    Each window holds `prompt_tokens` then `reference_tokens` tokens; windows that contain
    an end-of-text token are skipped, since their reference would belong to another
    document.
    """
    if prompt_tokens < 1 or reference_tokens < 1 or count < 1:
        raise TinyGPTError(
            f"--make-prompts K,M needs K >= 1 and M >= 1 (got {prompt_tokens},"
            f" {reference_tokens}), and at least one prompt"
        )
    span = prompt_tokens + reference_tokens
    n = len(tokens)
    if n < span:
        raise TinyGPTError(
            f"the split has {n} tokens, fewer than one prompt plus reference ({span});"
            " choose smaller K,M"
        )
    eot = tokenizer.eot_id
    starts = np.linspace(0, n - span, num=max(count * 4, 1), dtype=np.int64)
    out: list[dict[str, str]] = []
    for s in dict.fromkeys(starts.tolist()):
        window = np.asarray(tokens[s : s + span], dtype=np.int64)
        if (window == eot).any():
            continue
        prompt = tokenizer.decode(window[:prompt_tokens].tolist())
        reference = tokenizer.decode(window[prompt_tokens:].tolist())
        out.append({"prompt": prompt, "reference": reference})
        if len(out) == count:
            break
    if not out:
        raise TinyGPTError(
            "every window of the split crosses a document boundary; choose smaller K,M"
        )
    return out


def write_prompts(path: str | Path, records: Sequence[dict[str, str]]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(r, ensure_ascii=False) for r in records]
    return atomic_write_text(path, "\n".join(lines) + "\n")


def read_prompts(path: str | Path) -> list[dict[str, str]]:
    """Read a prompts JSONL file; every line needs string fields `prompt` and `reference`."""
    path = require_file(path, "prompts file")
    out = []
    for lineno, record in read_jsonl(path):
        if not isinstance(record, dict) or not all(
            isinstance(record.get(k), str) for k in ("prompt", "reference")
        ):
            raise TinyGPTError(
                f'{path}:{lineno}: each line must be {{"prompt": "...", "reference": "..."}}'
                " with text values"
            )
        out.append({"prompt": record["prompt"], "reference": record["reference"]})
    if not out:
        raise TinyGPTError(f"prompts file {path} holds no prompts")
    return out


def text_scores(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Corpus BLEU and chrF (sacrebleu, 0..100) of hypotheses against one reference each."""
    try:
        import sacrebleu
    except ImportError:
        raise TinyGPTError(
            "BLEU and chrF need the sacrebleu package: pip install 'tinygpt[eval]'"
        ) from None
    if len(hypotheses) != len(references):
        raise TinyGPTError(f"{len(hypotheses)} generations for {len(references)} references")
    bleu = sacrebleu.corpus_bleu(list(hypotheses), [list(references)])
    chrf = sacrebleu.corpus_chrf(list(hypotheses), [list(references)])
    return {"bleu": float(bleu.score), "chrf": float(chrf.score)}


def evaluate_generation(
    generator: Any,
    prompts: Sequence[dict[str, str]],
    out_dir: str | Path,
    *,
    max_new_tokens: int | None = None,
    temperature: float = 0.0,
    top_k: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Continue every prompt, score against the references, write generations and scores.

    `max_new_tokens` defaults to the reference's length in tokens (per prompt), so a
    continuation is compared with a reference of the same size. Greedy by default
    (temperature 0); a positive temperature samples with `seed`.
    """
    out_dir = Path(out_dir)
    rows = []
    for i, rec in enumerate(prompts):
        budget = max_new_tokens
        if budget is None:
            budget = max(1, len(generator.tokenizer.encode(rec["reference"])))
        text = generator.generate(
            rec["prompt"],
            max_new_tokens=budget,
            temperature=temperature,
            top_k=top_k,
            seed=seed + i,
        )
        rows.append({**rec, "generation": text})
    scores = text_scores([r["generation"] for r in rows], [r["reference"] for r in rows])
    scores.update(
        prompts=len(rows),
        temperature=temperature,
        top_k=top_k,
        seed=seed,
        max_new_tokens=max_new_tokens,
    )
    write_prompts(out_dir / "generations.jsonl", rows)
    atomic_write_json(out_dir / "scores.json", scores)
    return scores


def write_samples(
    generator: Any,
    run_dir: str | Path,
    n: int,
    *,
    prompts: Sequence[str] = SAMPLE_PROMPTS,
    max_new_tokens: int = 200,
    temperature: float = SAMPLE_TEMPERATURE,
    top_k: int | None = SAMPLE_TOP_K,
    seed: int = 0,
    label: str = "eval",
) -> list[Path]:
    """`n` samples, cycling through `prompts`, as RUN/samples/<label>-NN.txt (prompt + text).

    Prompts with characters the tokenizer cannot encode are skipped (`usable_prompts`).
    """
    from tinygpt.core.run import RunDir
    from tinygpt.infer.generate import usable_prompts

    if n < 1:
        raise TinyGPTError(f"--samples {n} must be at least 1")
    usable = usable_prompts(generator.tokenizer, prompts)
    paths = []
    for i in range(n):
        prompt = usable[i % len(usable)]
        text = generator.generate(
            prompt,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            seed=seed + i,
        )
        paths.append(RunDir(run_dir).write_sample(f"{label}-{i + 1:02d}", prompt + text))
    return paths


def evaluate_run_generation(
    run_dir: str | Path,
    *,
    checkpoint: str = "best",
    prompts_file: str | Path | None = None,
    make: tuple[int, int] | None = None,
    num_prompts: int = 20,
    samples: int = 0,
    data: str | Path | None = None,
    input: str | None = None,
    text_field: str = "text",
    errors: str = "strict",
    temperature: float = 0.0,
    top_k: int | None = None,
    seed: int = 0,
    device: str = "cpu",
    report: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """What `eval --prompts/--make-prompts/--samples` does to a run.

    With `prompts_file` (JSONL) or `make` = (K, M) — prompts cut from the evaluation text,
    written to eval/prompts.jsonl — continuations are scored with BLEU and chrF
    (`evaluate_generation`); `samples` > 0 writes that many samples to samples/. Returns the
    figures; `report` receives a line for each file written.
    """
    from tinygpt.core.run import RunDir
    from tinygpt.core.runtime import resolve_device
    from tinygpt.infer.generate import TextGenerator
    from tinygpt.infer.loader import load_run

    say = report or (lambda line: None)
    if prompts_file and make:
        raise TinyGPTError("give either --prompts FILE or --make-prompts K,M, not both")
    if samples < 0:
        raise TinyGPTError(f"--samples {samples} must be 0 or more")
    run_dir = RunDir(run_dir).require()
    prompts = read_prompts(prompts_file) if prompts_file else None
    run = load_run(run_dir.path, checkpoint=checkpoint, device=resolve_device(device))
    if make:
        tokens, _ = resolve_eval_tokens(
            run_dir.path,
            run.tokenizer,
            data=data,
            input=input,
            text_field=text_field,
            errors=errors,
        )
        prompts = make_prompts(tokens, run.tokenizer, make[0], make[1], num_prompts)
        path = write_prompts(run_dir.eval_file("prompts.jsonl"), prompts)
        say(f"wrote {len(prompts)} prompts to {path}")
    gen = TextGenerator(run.model, run.tokenizer)
    out: dict[str, Any] = {}
    if prompts is not None:
        scores = evaluate_generation(
            gen, prompts, run_dir.eval_dir, temperature=temperature, top_k=top_k, seed=seed
        )
        out.update(bleu=scores["bleu"], chrf=scores["chrf"], prompts=scores["prompts"])
        say(
            f"BLEU {scores['bleu']:.2f}  chrF {scores['chrf']:.2f} (sacrebleu, 0-100) over"
            f" {scores['prompts']} prompts; generations in {run_dir.eval_file('generations.jsonl')}"
        )
    if samples:
        paths = write_samples(
            gen,
            run_dir.path,
            samples,
            temperature=temperature or SAMPLE_TEMPERATURE,
            top_k=top_k,
            seed=seed,
        )
        out["samples"] = [str(p) for p in paths]
        say(f"wrote {len(paths)} samples to {run_dir.samples_dir}")
    return out
