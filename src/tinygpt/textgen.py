"""The text side of generation, shared by every backend and free of torch.

Owns: checking sampling options (`check_sampling`), turning token ids into text pieces that
never split a UTF-8 character (`StreamDecoder`), finding stop strings while holding back text
that may still become one (`RowText`), choosing prompts a tokenizer can encode
(`usable_prompts`), and `BaseTextGenerator`: prompts in, text or a stream of pieces out.

It knows nothing about models or tensors. A backend subclasses `BaseTextGenerator` and
supplies `token_steps`, the token loop: `tinygpt.generate.TextGenerator` runs a PyTorch model
with its KV cache, `tinygpt.onnx_runtime.OnnxGenerator` an exported ONNX graph with
onnxruntime and NumPy. Importing this module imports neither torch nor NumPy, so a
deployment of an ONNX export never loads torch.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterator, Sequence
from typing import Any

from tinygpt.config import SAMPLE_TEMPERATURE, SAMPLE_TOP_K, SAMPLING
from tinygpt.errors import TinyGPTError
from tinygpt.numbers import check


def check_sampling(
    *,
    max_new_tokens: int,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    repetition_penalty: float,
    num_samples: int = 1,
    seed: int | None = None,
) -> None:
    """Refuse sampling settings outside `tinygpt.config.SAMPLING` (None means unset)."""
    given = dict(
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        repetition_penalty=repetition_penalty,
        num_samples=num_samples,
        seed=seed,
    )
    for name, value in given.items():
        if value is not None:
            check(name, value, SAMPLING[name])


def usable_prompts(tokenizer: Any, prompts: Sequence[str]) -> list[str]:
    """The prompts `tokenizer` can encode, in order; [""] (a document start) when none can.

    A char-level vocabulary may lack a prompt's characters ("\n" included), so the samples
    written during training and evaluation fall back to starting a fresh document.
    """
    usable = []
    for prompt in prompts:
        try:
            tokenizer.encode(prompt)
        except TinyGPTError:
            continue
        usable.append(prompt)
    return usable or [""]


class StreamDecoder:
    """Token ids in, text out, never splitting a UTF-8 character across pieces.

    A byte-level token may end in the middle of a multi-byte character; the incremental
    decoder keeps those bytes until the character is complete. Invalid bytes become U+FFFD.
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        return self._decoder.decode(self.tokenizer.token_bytes(token_id))

    def flush(self) -> str:
        return self._decoder.decode(b"", final=True)


class RowText:
    """The text of one row as it grows: decodes, finds stop strings, and releases only text
    that can no longer turn out to be the start of a stop string."""

    def __init__(self, tokenizer: Any, stop: Sequence[str]) -> None:
        self.decoder = StreamDecoder(tokenizer)
        self.stop = [s for s in stop if s]
        self.longest = max((len(s) for s in self.stop), default=0)
        self.text = ""
        self.sent = 0
        self.done = False

    def push(self, token_id: int) -> str:
        before = len(self.text)
        self.text += self.decoder.push(token_id)
        if self.stop:
            start = max(0, before - self.longest + 1)
            hits = [i for i in (self.text.find(s, start) for s in self.stop) if i >= 0]
            if hits:
                self.text = self.text[: min(hits)]
                return self.finish(flush=False)
        safe = len(self.text) - self._held_back()
        piece, self.sent = self.text[self.sent : safe], max(self.sent, safe)
        return piece

    def _held_back(self) -> int:
        """Length of the longest tail of the text that begins some stop string."""
        for n in range(min(self.longest - 1, len(self.text) - self.sent), 0, -1):
            tail = self.text[-n:]
            if any(s.startswith(tail) for s in self.stop):
                return n
        return 0

    def finish(self, flush: bool = True) -> str:
        """End the row; `flush` releases bytes of an unfinished character as U+FFFD."""
        if not self.done:
            self.done = True
            if flush:
                self.text += self.decoder.flush()
        piece, self.sent = self.text[self.sent :], len(self.text)
        return piece


class BaseTextGenerator:
    """A tokenizer and a token loop, ready to continue prompts.

    `generate(prompt, ...)` returns the new text (without the prompt): a string, or a list
    of `num_samples` strings when num_samples > 1. Given a list of prompts, it continues them
    all in one batch (left-padded; each row keeps its own positions) and returns a list with
    one answer per prompt. `stream(prompt, ...)` yields the new text of one prompt in pieces
    as it is produced. Sampling arguments for both:

    - max_new_tokens: upper bound on new tokens (default 256).
    - temperature: 0 for greedy decoding; below 1 sharper, above 1 flatter (default 0.8).
    - top_k: sample among the k most likely tokens only (default 200; None = all).
    - top_p: sample within the smallest set of tokens of total probability >= top_p.
    - repetition_penalty: > 1 discourages tokens already in prompt or output (default 1.0).
    - seed: makes the sample reproducible (a private generator; global RNG untouched).
    - stop: strings that end a sample (not included in it); end-of-text always ends it.

    The prompt is text: a special-token string typed in it (`<|endoftext|>`, a chat marker)
    is encoded as its characters, as `tinygpt prepare` encodes it in training text (the rule
    in `tinygpt.chat`). An empty prompt starts from the end-of-text token, i.e. at a document
    boundary.

    A subclass supplies `token_steps`: given the prompts' ids, yield one new token per row
    per step (a row that has produced end-of-text keeps yielding it), stopping early once
    every row has.
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.eot_id: int | None = getattr(tokenizer, "eot_id", None)

    def encode_prompt(self, prompt: str) -> list[int]:
        ids = self.tokenizer.encode(prompt) if prompt else []
        if not ids:
            if self.eot_id is None:
                raise TinyGPTError("the prompt is empty and the tokenizer has no end-of-text")
            ids = [self.eot_id]
        return ids

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
        use_cache: bool = True,
    ) -> Iterator[list[int]]:
        """Yield the next token id of every row (prompt ids `ids`, one list per row)."""
        raise NotImplementedError

    def _rows(
        self,
        prompts: list[str],
        num_samples: int,
        stop: str | Sequence[str] | None,
        max_new_tokens: int = 256,
        temperature: float = SAMPLE_TEMPERATURE,
        top_k: int | None = SAMPLE_TOP_K,
        top_p: float | None = None,
        repetition_penalty: float = 1.0,
        seed: int | None = None,
        use_cache: bool = True,
    ) -> Iterator[list[str]]:
        """Yield, per step, the text piece each row releases ("" for none); the rows are
        num_samples rows for each prompt in turn."""
        check_sampling(
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            repetition_penalty=repetition_penalty,
            num_samples=num_samples,
            seed=seed,
        )
        ids = [self.encode_prompt(p) for p in prompts for _ in range(num_samples)]
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        rows = [RowText(self.tokenizer, stops) for _ in ids]
        steps = self.token_steps(
            ids,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            repetition_penalty=repetition_penalty,
            seed=seed,
            use_cache=use_cache,
        )
        try:
            for nxt in steps:
                pieces = []
                for row, token in zip(rows, nxt):
                    if row.done:
                        pieces.append("")
                    elif token == self.eot_id:
                        pieces.append(row.finish())
                    else:
                        pieces.append(row.push(token))
                yield pieces
                if all(row.done for row in rows):
                    return
        finally:
            steps.close()
        yield [row.finish() for row in rows]

    def generate(
        self,
        prompt: str | Sequence[str] = "",
        *,
        num_samples: int = 1,
        stop: str | Sequence[str] | None = None,
        **sampling: Any,
    ) -> str | list[str] | list[list[str]]:
        """The new text of `prompt` (see the class docstring). For a list of prompts: a list
        with, per prompt, its text (or a list of num_samples texts)."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts:
            raise TinyGPTError("no prompts were given; pass a string or a non-empty list")
        texts = [""] * (len(prompts) * num_samples)
        for pieces in self._rows(prompts, num_samples, stop, **sampling):
            texts = [t + p for t, p in zip(texts, pieces)]
        per_prompt = [texts[i : i + num_samples] for i in range(0, len(texts), num_samples)]
        answers = [t[0] if num_samples == 1 else t for t in per_prompt]
        return answers[0] if isinstance(prompt, str) else answers

    def stream(
        self, prompt: str = "", *, stop: str | Sequence[str] | None = None, **sampling: Any
    ) -> Iterator[str]:
        for pieces in self._rows([prompt], 1, stop, **sampling):
            if pieces[0]:
                yield pieces[0]
