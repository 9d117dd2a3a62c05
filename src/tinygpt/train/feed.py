"""What a fine-tune is fed: its data (`open_data`: an examples folder, conversations
prepared into one, or text prepared with the base's tokenizer) and what the loop draws from
it (`build_feed`: the batch source, the evaluator, the sampler).

Preparing and reading the data is `tinygpt.data`'s, evaluating `tinygpt.infer.evaluate`'s;
this module only chooses between them. It knows nothing about the model or the loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tinygpt.core.config import RunConfig
from tinygpt.core.errors import TinyGPTError
from tinygpt.core.runtime import Runtime
from tinygpt.data.batches import ExampleBatches, RandomWindows
from tinygpt.data.examples import (
    CHAT_FORMATS,
    fit_to_context,
    is_examples,
    open_examples,
    prepare_examples,
    resolve_format,
)
from tinygpt.data.instructions import is_instruction_set
from tinygpt.data.prepare import open_dataset, prepare_dataset
from tinygpt.data.template import ChatTemplate, get_template
from tinygpt.data.tokenizer import Tokenizer, file_hash
from tinygpt.infer.loader import load_text_side
from tinygpt.infer.scoring import ExampleEvaluator, SplitEvaluator
from tinygpt.train.base import Base, Report
from tinygpt.train.samples import ChatSampler, TextSampler
from tinygpt.train.session import accumulation, check_data


@dataclass
class DataRequest:
    """The data a fine-tune is asked for: one of `data_dir` (an examples folder or prepared
    text), `input` (a file of conversations or text, read as `fmt`) or `corpus`."""

    data_dir: str | Path | None
    input: str | None
    corpus: str | None
    fmt: str = "auto"
    template: str | None = None  # the chat template's name; None: the base's, else default
    train_on_prompt: bool = False
    text_field: str = "text"
    errors: str = "strict"


def open_data(
    base: Base, config: RunConfig, request: DataRequest, report: Report | None
) -> tuple[str, Any, ChatTemplate | None]:
    """(format, opened data, template or None): an examples folder (`tinygpt.data.examples`) or
    a text dataset (`tinygpt.data.prepare`), made with the base's tokenizer."""
    data_dir, input, corpus = request.data_dir, request.input, request.corpus
    fmt, template = request.fmt, request.template
    given = [x for x in (data_dir, input, corpus) if x]
    if len(given) != 1:
        raise TinyGPTError(
            "give the data to fine-tune on: one of --data DIR, --input PATH or --corpus NAME"
        )
    if corpus is not None and is_instruction_set(corpus):  # questions, read as conversations
        input, corpus = corpus, None
        if fmt not in ("auto", "messages"):
            raise TinyGPTError(f"{input} holds messages records; drop --format {fmt}")
    _, base_template = load_text_side(base.run)
    base_hash = file_hash(base.run.tokenizer_path)
    if data_dir is not None and is_examples(data_dir):
        return _examples_folder(data_dir, fmt, template, base, base_hash)
    if data_dir is not None or corpus is not None:
        resolved = "text"
        if fmt not in ("auto", "text"):
            raise TinyGPTError(
                f"--format {fmt} needs instruction examples; {data_dir or corpus} is text"
            )
    else:
        assert input is not None  # exactly one of the three was given
        resolved = resolve_format(input, fmt, errors=request.errors)
    if resolved in CHAT_FORMATS:
        assert input is not None  # only a file given as --input is read as conversations
        name = template or (base_template.name if base_template else None) or "default"
        tmpl = get_template(name)
        examples = _conversations(input, resolved, tmpl, base, config, request.errors, report)
        return resolved, examples, tmpl
    if template is not None:
        raise TinyGPTError(
            "--template applies to conversations; text fine-tuning continues pre-training "
            "with the base's tokenizer (and keeps the base's template, if it has one)"
        )
    return "text", _text(data_dir, corpus or input, base, base_hash, config, request), base_template


def _examples_folder(
    data_dir: str | Path, fmt: str, template: str | None, base: Base, base_hash: str
) -> tuple[str, Any, ChatTemplate]:
    """An examples folder prepared before, checked against the request and the base."""
    examples = open_examples(data_dir)
    if fmt not in ("auto", examples.meta.get("data_format")):
        raise TinyGPTError(
            f"{data_dir} holds {examples.meta.get('data_format')} examples, not {fmt}; "
            "drop --format or prepare the data again"
        )
    if template is not None and template != examples.template:
        raise TinyGPTError(
            f"{data_dir} was prepared with template {examples.template!r}; drop --template"
            f" or prepare it again with --template {template}"
        )
    if examples.meta.get("base_tokenizer_hash") != base_hash:
        raise TinyGPTError(
            f"{data_dir} was prepared with another tokenizer than the base's; prepare it"
            f" with --tokenizer {base.run.path}"
        )
    return examples.meta["data_format"], examples, get_template(examples.template)


def _conversations(
    input: str,
    resolved: str,
    tmpl: ChatTemplate,
    base: Base,
    config: RunConfig,
    errors: str,
    report: Report | None,
) -> Any:
    """Conversations prepared into an examples folder (cached and reused), opened."""
    prepared = prepare_examples(
        input,
        None,
        tokenizer=base.run.tokenizer_path,
        template=tmpl.name,
        fmt=resolved,
        val_fraction=config.data.val_fraction,
        errors=errors,
        report=report,
    )
    if report is not None:
        verb = "reused" if prepared.reused else "prepared"
        splits = prepared.meta["splits"]
        report(
            f"{verb} {prepared.path}: {splits['train']['examples']} training and "
            f"{splits['val']['examples']} held-out {resolved} examples, template "
            f"{tmpl.name}"
            + (f", {prepared.meta['skipped']} records skipped" if prepared.meta["skipped"] else "")
        )
    return open_examples(prepared.path)


def _text(
    data_dir: str | Path | None,
    source: str | None,
    base: Base,
    base_hash: str,
    config: RunConfig,
    request: DataRequest,
) -> Any:
    """Text to continue pre-training on: a prepared folder made with the base's tokenizer, or
    `source` prepared with it (cached)."""
    if data_dir is not None:
        dataset = open_dataset(data_dir)
        if (dataset.meta.get("tokenizer_hash") or file_hash(dataset.tokenizer_path)) != base_hash:
            raise TinyGPTError(
                f"{data_dir} was prepared with another tokenizer than the base's; prepare the "
                f"text with --tokenizer {base.run.tokenizer_path}"
            )
    else:
        assert source is not None  # no folder given: a file or a corpus was
        dataset = open_dataset(
            prepare_dataset(
                source,
                None,
                tokenizer=str(base.run.tokenizer_path),
                val_fraction=config.data.val_fraction,
                text_field=request.text_field,
                errors=request.errors,
                progress=False,
            ).path
        )
    return dataset


@dataclass
class Feed:
    """What the loop is handed besides the model: data, evaluator, samples."""

    batches: RandomWindows | ExampleBatches
    evaluator: SplitEvaluator | ExampleEvaluator
    sampler: TextSampler | ChatSampler
    accum: int
    evaluated: str  # what the validation loss measures, in words
    notes: dict[str, Any]


def build_feed(
    data: Any,
    chat_data: bool,
    tokenizer: Tokenizer,
    template: ChatTemplate | None,
    config: RunConfig,
    rt: Runtime,
    train_on_prompt: bool,
    say: Report,
) -> Feed:
    """Batches, evaluator and sampler: whole examples (the context rule applied) or random
    windows of text, as pre-training draws them."""
    tc, block = config.train, config.model.block_size
    global_batch = tc.batch_size * rt.dist.world_size
    if not chat_data:
        check_data(len(data.train), len(data.val), block, global_batch)
        return Feed(
            batches=RandomWindows(data.train, block, global_batch, tc.seed, rt.dist, rt.device),
            evaluator=SplitEvaluator(
                data.val,
                block,
                batch_size=tc.eval_batch_size,
                windows=tc.eval_windows,
                device=rt.device,
                autocast=rt.autocast,
            ),
            sampler=TextSampler(tokenizer, tc),
            accum=accumulation(tc, global_batch * block),
            evaluated="the validation split",
            notes={},
        )
    if tc.tokens_per_step:
        raise TinyGPTError(
            "train.tokens_per_step does not apply to examples (each batch is as long as its"
            " longest example); set train.batch_size instead"
        )
    keep, dropped = fit_to_context(data.train, block)
    val_keep, val_dropped = fit_to_context(data.val, block)
    if dropped or val_dropped:
        say(
            f"dropped {dropped} training and {val_dropped} held-out examples longer than the"
            f" context ({block} tokens + 1) or with nothing to score"
        )
    if not len(keep) or not len(val_keep):
        which = "training" if not len(keep) else "held-out"
        longest = int(max(data.train.lengths.max(), data.val.lengths.max()))
        raise TinyGPTError(
            f"no {which} example fits the model's context of {block} tokens (the longest has"
            f" {longest}); shorten the examples or fine-tune a base with a longer context"
        )
    pad = tokenizer.eot_id
    split = data.train
    return Feed(
        batches=ExampleBatches(
            split.ids,
            split.mask,
            split.offsets,
            keep,
            global_batch,
            tc.seed,
            rt.dist,
            rt.device,
            pad_id=pad,
            train_on_prompt=train_on_prompt,
            block_size=block,
        ),  # fmt: skip
        evaluator=ExampleEvaluator(
            data.val,
            val_keep.tolist(),
            batch_size=tc.eval_batch_size,
            examples=tc.eval_windows,
            pad_id=pad,
            device=rt.device,
            autocast=rt.autocast,
        ),
        sampler=ChatSampler(data.val, tokenizer, template, tc),
        accum=1,
        evaluated=f"assistant tokens of {len(val_keep)} held-out examples",
        notes={"dropped_train": dropped, "dropped_val": val_dropped},
    )
