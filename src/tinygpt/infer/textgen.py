"""The text side of generation, shared by every backend and free of torch.

Owns: checking sampling options (`check_sampling`), turning token ids into text pieces that
never split a UTF-8 character (`StreamDecoder`), finding stop strings while holding back text
that may still become one (`RowText`), choosing prompts a tokenizer can encode
(`usable_prompts`), and `BaseTextGenerator`: prompts in, text or a stream of pieces out.

It knows nothing about models or tensors. A backend subclasses `BaseTextGenerator` and
supplies `token_steps`, the token loop: `tinygpt.infer.generate.TextGenerator` runs a PyTorch model
with its KV cache, `tinygpt.infer.onnx_runtime.OnnxGenerator` an exported ONNX graph with
onnxruntime and NumPy. Importing this module imports neither torch nor NumPy, so a
deployment of an ONNX export never loads torch.
"""

from __future__ import annotations

import codecs
from collections.abc import Generator, Iterator, Sequence
from typing import Any

from tinygpt.core.config import SAMPLE_TEMPERATURE, SAMPLE_TOP_K, SAMPLING
from tinygpt.core.errors import TinyGPTError
from tinygpt.core.numbers import check
from tinygpt.data.template import ChatTemplate, fit_history
from tinygpt.data.tokenizer import Tokenizer


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
    """Refuse sampling settings outside `tinygpt.core.config.SAMPLING` (None means unset)."""
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


def usable_prompts(tokenizer: Tokenizer, prompts: Sequence[str]) -> list[str]:
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

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        return self._decoder.decode(self.tokenizer.token_bytes(token_id))

    def flush(self) -> str:
        return self._decoder.decode(b"", final=True)


class RowText:
    """The text of one row as it grows: decodes, finds stop strings, and releases only text
    that can no longer turn out to be the start of a stop string."""

    def __init__(self, tokenizer: Tokenizer, stop: Sequence[str]) -> None:
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
    """A tokenizer and a token loop (and, for a fine-tuned model, its chat template), ready to
    continue prompts and to answer conversations.

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
    - seed: makes the sample reproducible (a private generator per row; global RNG
      untouched). Every backend samples by `tinygpt.infer.sampler`, so a seed gives the
      same text from a run, its ONNX export and the serving engine.
    - stop: strings that end a sample (not included in it); end-of-text always ends it,
      and so does the template's end-of-turn token when there is a template
      (`stop_token_ids`).

    The prompt is text: a special-token string typed in it (`<|endoftext|>`, a chat marker)
    is encoded as its characters, as `tinygpt prepare` encodes it in training text (the rule
    in `tinygpt.data.template`). An empty prompt starts from the end-of-text token, i.e. at a document
    boundary.

    Chat (a model with a template; `tinygpt.data.template`): `chat(messages, ...)` returns the
    assistant's answer to a conversation that ends with a user message, `chat_stream`
    yields it in pieces; both take the sampling arguments above. The conversation is
    rendered with the template and the generation prompt; when it does not fit the context
    with room for the answer, its oldest exchanges are left out (`fit_history` says how
    many). The answer ends at the end-of-turn token, which is not part of it.

    A subclass supplies `block_size` and `token_steps`: given the prompts' ids, yield one new
    token per row per step (a row that has produced a stop id keeps yielding one), stopping
    early once every row has.
    """

    block_size: int  # the model's context

    def __init__(self, tokenizer: Tokenizer, template: ChatTemplate | None = None) -> None:
        self.tokenizer = tokenizer
        self.template = template
        self.eot_id: int | None = getattr(tokenizer, "eot_id", None)
        self.end_of_turn_id: int | None = None
        if template is not None:
            self.end_of_turn_id = tokenizer.special_tokens.get(template.end_of_turn)
            if self.end_of_turn_id is None:
                raise TinyGPTError(
                    f"the tokenizer lacks {template.end_of_turn!r}, the end-of-turn token of "
                    f"template {template.name!r}; the run's tokenizer and template disagree"
                )

    @property
    def stop_token_ids(self) -> tuple[int, ...]:
        """The ids that end generation: end-of-text and, with a template, its end-of-turn
        token (what `tinygpt.infer.engine.SamplingParams(stop_token_ids=...)` should be given)."""
        ids = [self.eot_id, self.end_of_turn_id]
        return tuple(dict.fromkeys(i for i in ids if i is not None))

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
        stop_ids: tuple[int, ...] = (),
        use_cache: bool = True,
    ) -> Generator[list[int], None, None]:
        """Yield the next token id of every row (prompt ids `ids`, one list per row)."""
        raise NotImplementedError

    def _rows(
        self,
        ids: list[list[int]],
        stop: str | Sequence[str] | None,
        max_new_tokens: int = 256,
        temperature: float = SAMPLE_TEMPERATURE,
        top_k: int | None = SAMPLE_TOP_K,
        top_p: float | None = None,
        repetition_penalty: float = 1.0,
        seed: int | None = None,
        use_cache: bool = True,
    ) -> Iterator[list[str]]:
        """Yield, per step, the text piece each row of prompt `ids` releases ("" for none)."""
        check_sampling(
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            repetition_penalty=repetition_penalty,
            seed=seed,
        )
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        rows = [RowText(self.tokenizer, stops) for _ in ids]
        ends = set(self.stop_token_ids)
        steps = self.token_steps(
            ids,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            repetition_penalty=repetition_penalty,
            seed=seed,
            stop_ids=self.stop_token_ids,
            use_cache=use_cache,
        )
        try:
            for nxt in steps:
                pieces = []
                for row, token in zip(rows, nxt):
                    if row.done:
                        pieces.append("")
                    elif token in ends:
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
        check("num_samples", num_samples, SAMPLING["num_samples"])
        ids = [self.encode_prompt(p) for p in prompts for _ in range(num_samples)]
        texts = [""] * len(ids)
        for pieces in self._rows(ids, stop, **sampling):
            texts = [t + p for t, p in zip(texts, pieces)]
        per_prompt = [texts[i : i + num_samples] for i in range(0, len(texts), num_samples)]
        answers: list[str] | list[list[str]] = (
            [t[0] for t in per_prompt] if num_samples == 1 else per_prompt
        )
        return answers[0] if isinstance(prompt, str) else answers

    def stream(
        self, prompt: str = "", *, stop: str | Sequence[str] | None = None, **sampling: Any
    ) -> Iterator[str]:
        ids = [self.encode_prompt(prompt)]
        for pieces in self._rows(ids, stop, **sampling):
            if pieces[0]:
                yield pieces[0]

    # --- chat --------------------------------------------------------------------------
    def _need_template(self) -> ChatTemplate:
        if self.template is None:
            raise TinyGPTError(
                "this model has no chat template (it was only pre-trained); fine-tune it on "
                "conversations first (tinygpt finetune), or continue text with generate()"
            )
        return self.template

    def fit_history(
        self, messages: Sequence[dict[str, Any]], max_new_tokens: int = 256
    ) -> tuple[list[dict[str, Any]], int]:
        """(messages to send, how many were left out): the conversation, without its oldest
        exchanges when its prompt would leave less room for the answer than
        min(max_new_tokens, context / 2) tokens (`tinygpt.data.template.fit_history`)."""
        context = self.block_size
        budget = context - min(max_new_tokens, context // 2)
        return fit_history(self._need_template(), self.tokenizer, messages, budget)

    def chat_ids(self, messages: Sequence[dict[str, Any]], max_new_tokens: int = 256) -> list[int]:
        """The prompt ids of a conversation (ending with a user message): fitted to the
        context (`fit_history`), rendered with the template and its generation prompt."""
        kept, _ = self.fit_history(messages, max_new_tokens)
        ids, _ = self._need_template().encode(self.tokenizer, kept, add_generation_prompt=True)
        return ids

    def chat(
        self,
        messages: Sequence[dict[str, Any]],
        *,
        stop: str | Sequence[str] | None = None,
        **sampling: Any,
    ) -> str:
        """The assistant's answer to `messages` (class docstring)."""
        return "".join(self.chat_stream(messages, stop=stop, **sampling))

    def chat_stream(
        self,
        messages: Sequence[dict[str, Any]],
        *,
        stop: str | Sequence[str] | None = None,
        **sampling: Any,
    ) -> Iterator[str]:
        """The assistant's answer to `messages`, in pieces as it is generated."""
        ids = self.chat_ids(messages, sampling.get("max_new_tokens", 256))
        for pieces in self._rows([ids], stop, **sampling):
            if pieces[0]:
                yield pieces[0]
