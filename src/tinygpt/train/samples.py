"""The samples written during and after training: `TextSampler` (text after a prompt, for
pre-training and text fine-tuning) and `ChatSampler` (the answer to a held-out prompt, for
fine-tuning on conversations). The loop calls them through `Hooks.sample`.

Generation is `tinygpt.infer.generate`'s; these only choose the prompt and the settings.
"""

from __future__ import annotations

from typing import cast

from tinygpt.core.config import SAMPLE_TEMPERATURE, SAMPLE_TOP_K, TrainConfig
from tinygpt.core.model import GPT
from tinygpt.data.examples import ExampleSplit
from tinygpt.data.template import ChatTemplate
from tinygpt.data.tokenizer import Tokenizer
from tinygpt.infer.generate import TextGenerator, usable_prompts


class TextSampler:
    """The samples written during and after training: `sample_tokens` tokens after
    `sample_prompt` (or a document start when the vocabulary cannot encode it), at
    `sample_temperature`."""

    def __init__(self, tokenizer: Tokenizer, tc: TrainConfig) -> None:
        self.tokenizer = tokenizer
        self.prompt = usable_prompts(tokenizer, [tc.sample_prompt])[0]
        self.tokens = tc.sample_tokens
        self.temperature = tc.sample_temperature
        self.seed = tc.seed

    def __call__(self, model: GPT) -> str:
        try:
            # One prompt, one sample: one text.
            text = cast(
                str,
                TextGenerator(model, self.tokenizer).generate(
                    self.prompt,
                    max_new_tokens=self.tokens,
                    temperature=self.temperature,
                    top_k=SAMPLE_TOP_K,
                    seed=self.seed,
                ),
            )
        finally:
            model.train()
        return self.prompt + text


class ChatSampler:
    """The samples written during and after fine-tuning on conversations: the model's answer
    to the first held-out example's prompt (its tokens up to the first scored one)."""

    def __init__(
        self,
        split: ExampleSplit,
        tokenizer: Tokenizer,
        template: ChatTemplate | None,
        tc: TrainConfig,
    ) -> None:
        ids, mask = split.example(0)
        first = int(mask.argmax()) if mask.any() else len(ids)
        self.prompt = ids[:first].tolist()
        self.tokenizer, self.template = tokenizer, template
        self.tokens, self.seed = tc.sample_tokens, tc.seed

    def __call__(self, model: GPT) -> str:
        context = model.config.block_size
        prompt = self.prompt[-(context - 1) :]
        try:
            gen = TextGenerator(model, self.tokenizer, self.template)
            pieces = gen._rows(
                [prompt],
                None,
                max_new_tokens=self.tokens,
                temperature=SAMPLE_TEMPERATURE,
                top_k=SAMPLE_TOP_K,
                seed=self.seed,
            )
            answer = "".join(p[0] for p in pieces)
        finally:
            model.train()
        return self.tokenizer.decode(prompt) + answer
