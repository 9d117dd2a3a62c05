"""Text generation: the decoding loop with a KV cache, sampling rules, streaming, `load`.

Owns: turning a model plus a prompt into new tokens (`generate_tokens`, `generate_ids`),
the sampling filters (temperature, top-k, top-p, repetition penalty), text streaming that
never splits a UTF-8 character, and `TextGenerator`, the Python API behind `tinygpt sample`
and `tinygpt.load(run_dir)`.

The token loop (`generate_tokens`) knows nothing about text or tokenizers: it sees ids and a
model. `TextGenerator` adds the tokenizer (prompt encoding, byte-exact decoding, stop strings).
It does not know how runs are stored; `load` asks `tinygpt.run.load_run` for that.

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

import codecs
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from tinygpt.config import SAMPLE_TEMPERATURE, SAMPLE_TOP_K, SAMPLING
from tinygpt.errors import TinyGPTError
from tinygpt.model import GPT
from tinygpt.numbers import check
from tinygpt.runtime import resolve_device

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


class TextGenerator:
    """A model and its tokenizer (and, for a fine-tuned run, its chat template), ready to
    continue prompts and to answer conversations.

    `generate(prompt, ...)` returns the new text (without the prompt): a string, or a list
    of `num_samples` strings when num_samples > 1. Given a list of prompts, it continues them
    all in one batch (left-padded; each row keeps its own positions) and returns a list with
    one answer per prompt. Greedy answers equal those of each prompt alone, except where the
    top two logits are closer than the last bits that a different batch shape changes in a
    CPU matmul (about 1e-5); sampled answers depend on the batch (the rows share one random
    generator). `stream(prompt, ...)` yields the new text of one prompt in pieces as it is
    produced. Sampling arguments for both:

    - max_new_tokens: upper bound on new tokens (default 256).
    - temperature: 0 for greedy decoding; below 1 sharper, above 1 flatter (default 0.8).
    - top_k: sample among the k most likely tokens only (default 200; None = all).
    - top_p: sample within the smallest set of tokens of total probability >= top_p.
    - repetition_penalty: > 1 discourages tokens already in prompt or output (default 1.0).
    - seed: makes the sample reproducible (a private generator; global RNG untouched).
    - stop: strings that end a sample (not included in it); end-of-text always ends it,
      and so does the template's end-of-turn token when there is a template
      (`stop_token_ids`).

    The prompt is text: a special-token string typed in it (`<|endoftext|>`, a chat marker)
    is encoded as its characters, as `tinygpt prepare` encodes it in training text (the rule
    in `tinygpt.chat`). An empty prompt starts from the end-of-text token, i.e. at a document
    boundary.

    Chat (a run with a template; `tinygpt.chat`): `chat(messages, ...)` returns the
    assistant's answer to a conversation that ends with a user message, `chat_stream`
    yields it in pieces; both take the sampling arguments above. The conversation is
    rendered with the template and the generation prompt; when it does not fit the context
    with room for the answer, its oldest exchanges are left out (`fit_history` says how
    many). The answer ends at the end-of-turn token, which is not part of it.
    """

    def __init__(self, model: GPT, tokenizer: Any, template: Any = None) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.template = template  # tinygpt.chat.ChatTemplate, or None
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
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def stop_token_ids(self) -> tuple[int, ...]:
        """The ids that end generation: end-of-text and, with a template, its end-of-turn
        token (what `tinygpt.engine.SamplingParams(stop_token_ids=...)` should be given)."""
        ids = [self.eot_id, self.end_of_turn_id]
        return tuple(dict.fromkeys(i for i in ids if i is not None))

    def encode_prompt(self, prompt: str) -> list[int]:
        ids = self.tokenizer.encode(prompt) if prompt else []
        if not ids:
            if self.eot_id is None:
                raise TinyGPTError("the prompt is empty and the tokenizer has no end-of-text")
            ids = [self.eot_id]
        return ids

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
        T = max(len(i) for i in ids)
        # Left padding: every row's last prompt token sits in the last column.
        prompt_t = torch.tensor([[0] * (T - len(i)) + i for i in ids], device=self.device)
        mask = None
        if any(len(i) < T for i in ids):
            mask = torch.tensor([[0] * (T - len(i)) + [1] * len(i) for i in ids])
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        rows = [RowText(self.tokenizer, stops) for _ in ids]
        ends = set(self.stop_token_ids)
        steps = generate_tokens(
            self.model,
            prompt_t,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            repetition_penalty=repetition_penalty,
            seed=seed,
            stop_ids=self.stop_token_ids,
            use_cache=use_cache,
            attention_mask=None if mask is None else mask.to(self.device),
        )
        try:
            for nxt in steps:
                pieces = []
                for row, token in zip(rows, nxt.tolist()):
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
        answers = [t[0] if num_samples == 1 else t for t in per_prompt]
        return answers[0] if isinstance(prompt, str) else answers

    def stream(
        self, prompt: str = "", *, stop: str | Sequence[str] | None = None, **sampling: Any
    ) -> Iterator[str]:
        ids = [self.encode_prompt(prompt)]
        for pieces in self._rows(ids, stop, **sampling):
            if pieces[0]:
                yield pieces[0]

    # --- chat --------------------------------------------------------------------------
    def _need_template(self) -> Any:
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
        min(max_new_tokens, context / 2) tokens (`tinygpt.chat.fit_history`)."""
        from tinygpt.chat import fit_history

        context = self.model.config.block_size
        budget = context - min(max_new_tokens, context // 2)
        return fit_history(self._need_template(), self.tokenizer, messages, budget)

    def chat_ids(self, messages: Sequence[dict[str, Any]], max_new_tokens: int = 256) -> list[int]:
        """The prompt ids of a conversation (ending with a user message): fitted to the
        context (`fit_history`), rendered with the template and its generation prompt."""
        kept, _ = self.fit_history(messages, max_new_tokens)
        ids, _ = self.template.encode(self.tokenizer, kept, add_generation_prompt=True)
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


def load(run_dir: str | Path, checkpoint: str = "best", device: str = "cpu") -> TextGenerator:
    """Load a trained run folder into a `TextGenerator` (see its docstring for the API),
    with the run's chat template when it has one."""
    from tinygpt.chat import load_template
    from tinygpt.run import load_run

    run = load_run(run_dir, checkpoint=checkpoint, device=resolve_device(device))
    return TextGenerator(run.model, run.tokenizer, load_template(run.run_dir))
