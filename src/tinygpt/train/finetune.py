"""Fine-tuning: a trained model adapted to instructions or to more text, through the one
training loop.

Owns `finetune()` — the set-up around `tinygpt.train.loop.fit` for a model that starts from a
base: finding the base (a run folder, or a Hugging Face folder imported on the fly), the
settings (the base's model, the `finetune` preset's training settings), the data (an
examples folder, `tinygpt.data.examples`, or text prepared with the base's tokenizer), the
batch source and evaluator, and the record of where the run started — and the changes to
a trained model and its data applied from outside the model: growing its vocabulary for
special tokens its tokenizer lacks (`grow_vocabulary`, `add_special_tokens`), a shorter
context (`shorten_context`), checking that a character-level tokenizer can encode new data
(`check_encodable`), and turning a loss mask over token ids into next-token targets
(`masked_targets`). Chat formats are `tinygpt.data.template`'s, records and their folder
`tinygpt.data.examples`'; the loop is `tinygpt.train.loop`'s and is not repeated here; `model.py`
never learns that its vocabulary grew.

What comes from where:

- **Model**: the base's settings and weights. Only `model.dropout` and a shorter
  `model.block_size` may be overridden; the vocabulary grows by the template's missing
  special tokens.
- **Training**: the `finetune` preset (AdamW, a lower learning rate, a budget of a few
  epochs), then dotted overrides and budgets. Nothing of the base's training settings
  carries over (its optimiser, Muon or not, included).
- **Data**: `--format text` continues pre-training on anything `tinygpt prepare` reads, with
  the base's tokenizer, through the pre-training source (random windows). The conversation
  formats are prepared into an examples folder (cached and reused) and drawn whole,
  shuffled and padded (`tinygpt.data.batches.ExampleBatches`); by default only the assistant's
  tokens are scored (`train_on_prompt` scores all), and validation always scores the
  assistant's tokens of the held-out examples (`tinygpt.infer.scoring.ExampleEvaluator`).

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
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tinygpt.core.errors import TinyGPTError
from tinygpt.core.surgery import add_special_tokens, shorten_context
from tinygpt.data.examples import check_encodable as check_encodable  # its home; named here too


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


# ------------------------------------------------------------------------- the set-up

log = logging.getLogger("tinygpt.train.loop")  # fit's logger: one train.log per run
MODEL_SETTINGS = ("dropout", "block_size")  # the model settings a fine-tune may change
Report = Callable[[str], None]


@dataclass
class Base:
    """Where a fine-tune starts: a run folder (for a Hugging Face folder, the run it was
    imported into) and one of its checkpoints."""

    given: str  # as the user gave it
    run: Any  # tinygpt.core.run.RunDir
    checkpoint: Path
    kind: str  # "run" or "hf"

    def record(self) -> dict[str, Any]:
        """What run.json keeps of the base ("finetune" record)."""
        from tinygpt.core.checkpoint import WEIGHTS, read_state
        from tinygpt.core.files import sha256_file
        from tinygpt.data.tokenizer import file_hash

        return {
            "base": str(Path(self.given).resolve()),
            "base_kind": self.kind,
            "base_run": str(self.run.path.resolve()),
            "checkpoint": self.checkpoint.name,
            "step": int(read_state(self.checkpoint).get("step", 0)),
            "weights_sha256": sha256_file(self.checkpoint / WEIGHTS),
            "tokenizer_hash": file_hash(self.run.tokenizer_path),
        }


def resolve_base(base: str | Path, checkpoint: str = "best", report: Report | None = None) -> Base:
    """The base of a fine-tune: a run folder, or a local Hugging Face folder (GPT-2, Llama
    or Qwen3 family, byte-level BPE or character tokenizer) imported into a cached run
    folder the first time (`tinygpt.export.hf_run.import_hf`) and reused while its files are
    unchanged."""
    from tinygpt.core.run import CONFIG, RunDir

    path = Path(base).expanduser()
    if not path.is_dir():
        raise TinyGPTError(
            f"base {base} does not exist; give a run folder (tinygpt train --out) or a local"
            " Hugging Face model folder"
        )
    run = RunDir(path)
    if run.is_run():
        return Base(str(base), run, run.resolve_checkpoint(checkpoint), "run")
    if not (path / "config.json").is_file():
        raise TinyGPTError(
            f"base {base} is neither a run folder (no {CONFIG}) nor a Hugging Face model folder"
            " (no config.json); give a folder that `tinygpt train` or `save_pretrained` wrote"
        )
    imported = _import_cached(path, report)
    return Base(str(base), imported, imported.resolve_checkpoint(checkpoint), "hf")


def _import_cached(hf_dir: Path, report: Report | None) -> Any:
    from tinygpt.core.run import RunDir
    from tinygpt.data.corpora import cache_dir
    from tinygpt.export.hf_run import import_hf

    files = sorted(p for p in hf_dir.iterdir() if p.is_file())
    stamp = [str(hf_dir.resolve())] + [
        [p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files
    ]
    key = hashlib.sha256(json.dumps(stamp).encode()).hexdigest()[:24]
    dest = cache_dir() / "imported" / key
    run = RunDir(dest)
    if run.is_run() and run.checkpoints():
        return run
    shutil.rmtree(dest, ignore_errors=True)
    import_hf(hf_dir, dest)
    if report is not None:
        report(f"imported {hf_dir} into {dest}")
    return run


def finetune_config(
    base_config: Any,
    overrides: Any = (),
    *,
    budgets: Mapping[str, Any] | None = None,
    settings: Mapping[str, Any] | None = None,
    resume_run: str | Path | None = None,
    preset: str = "finetune",
) -> Any:
    """The configuration of a fine-tune: the base's model settings (`model.dropout` and a
    shorter `model.block_size` may be overridden, nothing else), the `finetune` preset's
    training settings with the dotted `overrides`, `settings` and `budgets` on top
    (`tinygpt.core.resolution.resolve_config`); a LoRA fine-tune starts from `finetune-lora`.
    Resuming (`resume_run`) starts from the run's own config.toml and changes no model
    setting."""
    from tinygpt.core.config import RunConfig, parse_overrides
    from tinygpt.core.resolution import resolve_config

    parsed = parse_overrides(overrides)
    model_over = parsed.pop("model", {})
    for name in model_over:
        if name not in MODEL_SETTINGS:
            raise TinyGPTError(
                f"model.{name} comes from the base model and cannot change when fine-tuning;"
                " only model.dropout and a shorter model.block_size can"
            )
    if resume_run is not None and model_over:
        raise TinyGPTError(
            "a resumed fine-tune keeps its model settings; drop the --model.* overrides"
        )
    rest = {f"{sec}.{k}": v for sec, values in parsed.items() for k, v in values.items()}
    config = resolve_config(
        None if resume_run is not None else preset,
        None,
        rest,
        settings=settings,
        budgets=budgets,
        resume_run=resume_run,
    )
    if resume_run is None:
        model = dataclasses.asdict(base_config.model)
        model.update(model_over)
        config.model = RunConfig.from_dict({"model": model}, origin="override").model
        if config.model.block_size > base_config.model.block_size:
            raise TinyGPTError(
                f"model.block_size {config.model.block_size} is longer than the base's context"
                f" ({base_config.model.block_size}); fine-tuning can only keep or shorten it"
            )
    return config


@dataclass
class FinetuneResult:
    """How a fine-tune went: the loop's result, and the held-out loss before training."""

    train: Any  # tinygpt.train.loop.TrainResult
    val_loss_before: float | None
    evaluated: str  # what the validation loss is measured on
    template: str | None
    trainable: int = 0  # parameters that trained
    total: int = 0  # parameters of the model as trained (a LoRA run's adapters included)
    lora: str | None = None  # the LoRA settings in words; None for a full fine-tune


class ChatSampler:
    """The samples written during and after fine-tuning on conversations: the model's answer
    to the first held-out example's prompt (its tokens up to the first scored one)."""

    def __init__(self, split: Any, tokenizer: Any, template: Any, tc: Any) -> None:
        ids, mask = split.example(0)
        first = int(mask.argmax()) if mask.any() else len(ids)
        self.prompt = ids[:first].tolist()
        self.tokenizer, self.template = tokenizer, template
        self.tokens, self.seed = tc.sample_tokens, tc.seed

    def __call__(self, model: torch.nn.Module) -> str:
        from tinygpt.core.config import SAMPLE_TEMPERATURE, SAMPLE_TOP_K
        from tinygpt.infer.generate import TextGenerator

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


def _data(
    base: Base,
    config: Any,
    *,
    data_dir: str | Path | None,
    input: str | None,
    corpus: str | None,
    fmt: str,
    template: str | None,
    text_field: str,
    errors: str,
    report: Report | None,
) -> tuple[str, Any, Any]:
    """(format, opened data, template or None): an examples folder (`tinygpt.data.examples`) or
    a text dataset (`tinygpt.data.prepare`), made with the base's tokenizer."""
    from tinygpt.data.examples import (
        CHAT_FORMATS,
        is_examples,
        open_examples,
        prepare_examples,
        resolve_format,
    )
    from tinygpt.data.template import get_template
    from tinygpt.data.tokenizer import file_hash
    from tinygpt.infer.loader import load_text_side

    given = [x for x in (data_dir, input, corpus) if x]
    if len(given) != 1:
        raise TinyGPTError(
            "give the data to fine-tune on: one of --data DIR, --input PATH or --corpus NAME"
        )
    from tinygpt.data.instructions import is_instruction_set

    if corpus is not None and is_instruction_set(corpus):  # questions, read as conversations
        input, corpus = corpus, None
        if fmt not in ("auto", "messages"):
            raise TinyGPTError(f"{input} holds messages records; drop --format {fmt}")
    _, base_template = load_text_side(base.run)
    base_hash = file_hash(base.run.tokenizer_path)
    if data_dir is not None and is_examples(data_dir):
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
    if data_dir is not None or corpus is not None:
        resolved = "text"
        if fmt not in ("auto", "text"):
            raise TinyGPTError(
                f"--format {fmt} needs instruction examples; {data_dir or corpus} is text"
            )
    else:
        resolved = resolve_format(input, fmt, errors=errors)
    if resolved in CHAT_FORMATS:
        name = template or (base_template.name if base_template else None) or "default"
        tmpl = get_template(name)
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
                + (
                    f", {prepared.meta['skipped']} records skipped"
                    if prepared.meta["skipped"]
                    else ""
                )
            )
        return resolved, open_examples(prepared.path), tmpl
    if template is not None:
        raise TinyGPTError(
            "--template applies to conversations; text fine-tuning continues pre-training "
            "with the base's tokenizer (and keeps the base's template, if it has one)"
        )
    from tinygpt.data.prepare import open_dataset, prepare_dataset

    if data_dir is not None:
        dataset = open_dataset(data_dir)
        if (dataset.meta.get("tokenizer_hash") or file_hash(dataset.tokenizer_path)) != base_hash:
            raise TinyGPTError(
                f"{data_dir} was prepared with another tokenizer than the base's; prepare the "
                f"text with --tokenizer {base.run.tokenizer_path}"
            )
    else:
        dataset = open_dataset(
            prepare_dataset(
                corpus or input,
                None,
                tokenizer=str(base.run.tokenizer_path),
                val_fraction=config.data.val_fraction,
                text_field=text_field,
                errors=errors,
                progress=False,
            ).path
        )
    return "text", dataset, base_template


def finetune(
    base: str | Path | None,
    *,
    out_dir: str | Path,
    data_dir: str | Path | None = None,
    input: str | None = None,
    corpus: str | None = None,
    checkpoint: str = "best",
    fmt: str = "auto",
    template: str | None = None,
    train_on_prompt: bool = False,
    resume: bool = False,
    overrides: Any = (),
    budgets: Mapping[str, Any] | None = None,
    settings: Mapping[str, Any] | None = None,
    text_field: str = "text",
    errors: str = "strict",
    command: list[str] | None = None,
    progress: bool = True,
    report: Report | None = None,
    force: bool = False,
    lora: Any = None,
) -> FinetuneResult:
    """Fine-tune `base` (a run folder or a local Hugging Face folder; its `checkpoint`) on
    `data_dir` (an examples folder or a prepared text folder), `input` (a JSONL/JSON file of
    conversations, or text; read as `fmt`) or `corpus` into the run folder `out_dir`, through
    `tinygpt.train.loop.fit` (module docstring). `overrides` are dotted settings, `budgets` the
    command line's budgets, `settings` dedicated flags (`{"train.seed": 3}`); `report`
    receives notes (skipped records, dropped examples, the vocabulary's growth).

    `lora` (a `tinygpt.core.lora.LoraSettings`) trains low-rank adapters beside the frozen base
    instead of every weight (`tinygpt.core.lora`); the run then stores only the adapter and a
    pointer to its base.

    `resume=True` continues the fine-tune in `out_dir` from its latest checkpoint (the base,
    when given, must be the one the run started from; LoRA settings, when given, the run's
    own). `force` fine-tunes into a folder that holds other files."""
    from tinygpt.core.lora import apply_lora, count_parameters
    from tinygpt.core.model import GPT
    from tinygpt.core.run import RunDir
    from tinygpt.core.runtime import Runtime, check_model_fits, seed_all
    from tinygpt.data.tokenizer import file_hash, load_tokenizer
    from tinygpt.infer.loader import base_record, build_adapted, write_adapter_record
    from tinygpt.train.loop import Hooks, build_optimizer, fit, restore, resume_point

    t_start = time.perf_counter()
    say = report or (lambda line: None)
    run = RunDir(out_dir)
    run.check_out(force=force)
    if int(os.environ.get("RANK", "0")) == 0:
        run.remove_leftovers()
    record: dict[str, Any] | None = None
    if resume:
        record = run.finetune_record() if run.is_run() else None
        if run.is_run() and run.read_info().get("merged"):
            raise TinyGPTError(
                f"{run.path} is a merged copy of a LoRA run and cannot be resumed; resume the"
                f" LoRA run it came from ({run.read_info()['merged'].get('from')})"
            )
        if record is None or not run.checkpoints():
            raise TinyGPTError(
                f"--resume: {run.path} holds no checkpoint of a fine-tune to continue; start"
                " it without --resume"
            )
        if base is not None and Path(base).resolve() != Path(record["base"]):
            raise TinyGPTError(
                f"{run.path} was fine-tuned from {record['base']}, not {base}; give that base"
                " (or none) to resume it"
            )
        base = record["base"]
        checkpoint = record["checkpoint"]
    if base is None:
        raise TinyGPTError(
            "give the base model to fine-tune: a run folder or a Hugging Face folder"
        )
    start = resume_point(run, "yes" if resume else None)
    if resume:
        lora = _resumed_lora(run, lora)
    based = resolve_base(base, checkpoint, say)
    base_config = based.run.read_config()
    config = finetune_config(
        base_config,
        overrides,
        budgets=budgets,
        settings=settings,
        resume_run=run.path if resume else None,
        preset="finetune-lora" if lora is not None else "finetune",
    )
    if lora is not None:  # bad settings fail before any data is prepared
        lora = lora.resolved(config.model)
    tc = config.train
    if not tc.has_budget:
        raise TinyGPTError(
            "no training budget: give --max-steps, --max-tokens, --max-time or --max-epochs"
        )
    if resume:  # the data the run was trained on, unless given anew
        recorded = run.dataset_dir()
        if data_dir is None and input is None and corpus is None and recorded is not None:
            if not recorded.is_dir():
                raise TinyGPTError(
                    f"the data the run was fine-tuned on ({recorded}) is gone; give its new"
                    " place with --data DIR"
                )
            data_dir = recorded
        train_on_prompt = bool(record.get("train_on_prompt", False)) or train_on_prompt
        if fmt == "auto":
            fmt = record.get("format", "auto")
        if fmt != "text":
            template = template or record.get("template")
    resolved, data, tmpl = _data(
        based,
        config,
        data_dir=data_dir,
        input=input,
        corpus=corpus,
        fmt=fmt,
        template=template,
        text_field=text_field,
        errors=errors,
        report=report,
    )
    chat_data = resolved != "text"
    if resume and file_hash(run.tokenizer_path) != file_hash(data.tokenizer_path):
        raise TinyGPTError(
            f"the data {data.path} was made with another tokenizer than the run {run.path};"
            " resume with the data the run was fine-tuned on"
        )
    config.data = dataclasses.replace(
        config.data,
        source=str(input or corpus or data.meta.get("source") or data.path),
        dir=str(data.path),
        tokenizer=str(based.run.tokenizer_path),
    )
    if not chat_data:
        from tinygpt.data.prepare import check_fits

        check_fits(data, config.model.vocab_size, "the base")
    rt = Runtime.start(tc)
    try:
        check_model_fits(config.model, rt.device, training=True)
        seed_all(tc.seed)
        tokenizer = load_tokenizer(data.tokenizer_path)
        adapted = None
        if resume and lora is not None:
            model, notes = build_adapted(run, config.model, tc.seed), {}
            adapted = model.lora
        elif resume:
            model, notes = GPT(config.model), {}
        else:
            model, notes = _start_model(based, base_config, config, tmpl if chat_data else None,
                                        tokenizer, data.path, say)  # fmt: skip
            config.model = model.config
            if lora is not None:
                rows_from = notes.get("rows_from")
                adapted = apply_lora(model, lora, rows_from=rows_from, seed=tc.seed)
        notes.pop("rows_from", None)
        trainable, total = count_parameters(model)
        if adapted is not None:
            rows = config.model.vocab_size - adapted.rows_from
            say(
                f"LoRA {adapted.settings.describe()}"
                + (f", and the {rows} new token rows" if rows else "")
                + f": {trainable:,} trainable parameters of {total:,}"
                f" ({100 * trainable / total:.2f} %)"
            )
            notes["lora"] = {**adapted.record(), "trainable_parameters": trainable}
        model.to(rt.device)
        rt.set_precision(tc.precision, config.model)
        optimizer = build_optimizer(model, tc, rt.device)
        feed = _feed(data, chat_data, tokenizer, tmpl, config, rt, train_on_prompt, say)
        notes.update(feed.notes)
        state = None
        if start is not None:
            state = restore(run, start, model, optimizer, feed.batches, rt)
        before = None
        if state is None:  # the same measure as after training: every held-out example
            before = feed.evaluator.final(model).loss
            say(f"held-out loss before fine-tuning: {before:.4f} ({feed.evaluated})")
        if rt.dist.is_main:
            ft = record if resume else {
                **based.record(),
                "format": resolved,
                "template": tmpl.name if tmpl is not None else None,
                "train_on_prompt": train_on_prompt,
                "context": config.model.block_size,
                "val_loss_before": before,
                **notes,
            }  # fmt: skip
            _begin_run(run, config, data, tmpl, model, rt, ft, state, command)
            if adapted is not None and state is None:
                base_rec = base_record(
                    run.path, based.run.path, based.checkpoint, ft["weights_sha256"]
                )
                write_adapter_record(run, adapted, base_rec, (trainable, total))
            log.info(
                "fine-tune %s of %s (%s): %s parameters, %s trainable, %s data, device %s",
                run.path, based.given, based.checkpoint.name, f"{total:,}", f"{trainable:,}",
                resolved, rt.device,
            )  # fmt: skip
    except BaseException:
        rt.close(ok=False)
        raise
    result = fit(
        model,
        feed.batches,
        optimizer,
        tc,
        run,
        evaluator=feed.evaluator,
        rt=rt,
        state=state,
        accum=feed.accum,
        hooks=Hooks(sample=feed.sampler),
        progress=progress,
        config=config.to_dict(),
        started=t_start,
    )
    if resume and record is not None:
        before = record.get("val_loss_before")
    return FinetuneResult(
        result,
        before,
        feed.evaluated,
        tmpl.name if tmpl is not None else None,
        trainable=trainable,
        total=total,
        lora=adapted.settings.describe() if adapted is not None else None,
    )


def _resumed_lora(run: Any, given: Any) -> Any:
    """The LoRA settings a resumed fine-tune continues with: the run's own (None for a full
    fine-tune). Settings given anew must be those; LoRA on a full fine-tune is refused."""
    from tinygpt.core.lora import LoraSettings
    from tinygpt.infer.loader import read_adapter_record

    if not run.is_lora():
        if given is not None:
            raise TinyGPTError(
                f"{run.path} is a full fine-tune, not a LoRA one; resume it without --lora"
            )
        return None
    own = LoraSettings.from_record(read_adapter_record(run))
    if given is not None and not given.agrees_with(own):
        raise TinyGPTError(
            f"{run.path} was fine-tuned with LoRA {own.describe()}; a resumed fine-tune"
            " keeps its settings: drop the --lora flags or give those"
        )
    return own


def _start_model(
    based: Base,
    base_config: Any,
    config: Any,
    template: Any,
    tokenizer: Any,
    data_path: Path,
    say: Report,
) -> tuple[Any, dict[str, Any]]:
    """The base's model with its weights, `config`'s dropout and context, and rows for the
    template's special tokens (checked against the data's tokenizer); the notes for run.json
    (and `rows_from`, the first new row, for LoRA)."""
    from tinygpt.core.model import GPT
    from tinygpt.infer.loader import load_base_weights, load_tokenizer

    shape = {"block_size": base_config.model.block_size, "vocab_size": base_config.model.vocab_size}
    model = GPT(dataclasses.replace(config.model, **shape))
    load_base_weights(model, based.run, based.checkpoint)
    shorten_context(model, config.model.block_size)
    notes: dict[str, Any] = {}
    if template is None:
        return model, notes
    base_tok = load_tokenizer(based.run)
    grown = add_special_tokens(model, base_tok, template.special_tokens, seed=config.train.seed)
    if (grown.vocab_size, grown.special_tokens) != (tokenizer.vocab_size, tokenizer.special_tokens):
        raise TinyGPTError(
            f"the tokenizer of {data_path} is not the base's grown by template "
            f"{template.name!r}; prepare the data again with --tokenizer {based.run.path}"
        )
    added = [t for t in template.special_tokens if t not in base_tok.special_tokens]
    if added:
        notes["added_tokens"] = added
        notes["rows_from"] = base_tok.vocab_size  # the rows a LoRA fine-tune trains
        say(
            f"added {len(added)} special tokens ({' '.join(added)}): the vocabulary grows from"
            f" {base_config.model.vocab_size} to {model.config.vocab_size} ids"
        )
    return model, notes


@dataclass
class _Feed:
    """What the loop is handed besides the model: data, evaluator, samples."""

    batches: Any
    evaluator: Any
    sampler: Any
    accum: int
    evaluated: str  # what the validation loss measures, in words
    notes: dict[str, Any]


def _feed(
    data: Any,
    chat_data: bool,
    tokenizer: Any,
    template: Any,
    config: Any,
    rt: Any,
    train_on_prompt: bool,
    say: Report,
) -> _Feed:
    """Batches, evaluator and sampler: whole examples (the context rule applied) or random
    windows of text, as pre-training draws them."""
    from tinygpt.data.batches import ExampleBatches, RandomWindows
    from tinygpt.data.examples import fit_to_context
    from tinygpt.infer.scoring import ExampleEvaluator, SplitEvaluator
    from tinygpt.train.loop import TextSampler, accumulation, check_data

    tc, block = config.train, config.model.block_size
    global_batch = tc.batch_size * rt.dist.world_size
    eval_kw = dict(batch_size=tc.eval_batch_size, device=rt.device, autocast=rt.autocast)
    if not chat_data:
        check_data(len(data.train), len(data.val), block, global_batch)
        return _Feed(
            batches=RandomWindows(data.train, block, global_batch, tc.seed, rt.dist, rt.device),
            evaluator=SplitEvaluator(data.val, block, windows=tc.eval_windows, **eval_kw),
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
    return _Feed(
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
            data.val, val_keep.tolist(), examples=tc.eval_windows, pad_id=pad, **eval_kw
        ),
        sampler=ChatSampler(data.val, tokenizer, template, tc),
        accum=1,
        evaluated=f"assistant tokens of {len(val_keep)} held-out examples",
        notes={"dropped_train": dropped, "dropped_val": val_dropped},
    )


def _begin_run(
    run: Any,
    config: Any,
    data: Any,
    template: Any,
    model: Any,
    rt: Any,
    record: dict[str, Any],
    state: Any,
    command: list[str] | None,
) -> None:
    """Write what the run folder holds before the first step: config, the data's tokenizer,
    the template, run.json (with the "finetune" record), the samples folder and the log."""
    from tinygpt.data.template import save_template
    from tinygpt.train.loop import provenance

    run.write_config(config)
    run.write_tokenizer(data.tokenizer_path)
    if template is not None:
        save_template(run.path, template)
    run.samples_dir.mkdir(exist_ok=True)
    run.attach_log(log)
    dataset = {
        "path": str(Path(data.path).resolve()),
        "key": data.meta.get("key"),
        "tokenizer_hash": data.meta.get("tokenizer_hash"),
        "source": data.meta.get("source"),
        "kind": "examples" if data.meta.get("kind") == "examples" else "text",
    }
    info = {
        "device": rt.device,
        "precision": rt.precision,
        "threads": torch.get_num_threads(),
        "world_size": rt.dist.world_size,
        "parameters": model.num_params(),
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "resumed_from": state.resumed_from if state else None,
        "finetune": record,
    }
    run.write_info(provenance(command, dataset, info), resumed=state is not None)
