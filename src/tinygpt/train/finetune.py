"""Fine-tuning: a trained model adapted to instructions or to more text, through the one
training loop.

Owns `finetune()` — the set-up around `tinygpt.train.loop.fit` for a model that starts from a
base: the settings (`finetune_config`: the base's model, the `finetune` preset's training
settings), resuming a fine-tune, the model it starts from and the record of where the run
started — and `masked_targets`, a loss mask over token ids turned into next-token targets.
The base and the model grown from it are `tinygpt.train.base`'s (vocabulary growth and a
shorter context are `tinygpt.core.surgery`'s: `model.py` never learns that its vocabulary
grew); the data, batch source, evaluator and sampler `tinygpt.train.feed`'s; the run folder's
set-up `tinygpt.train.session`'s; the loop `tinygpt.train.loop`'s. Chat formats are
`tinygpt.data.template`'s, records and their folder `tinygpt.data.examples`'. A Hugging Face
folder is imported into a run by `tinygpt.export.hf_cache` (the command line does that), so
this module never reaches up to the exporters.

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
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from tinygpt.core.config import RunConfig, parse_overrides
from tinygpt.core.errors import TinyGPTError
from tinygpt.core.lora import Adapted, LoraSettings, apply_lora, count_parameters
from tinygpt.core.model import GPT
from tinygpt.core.resolution import resolve_config
from tinygpt.core.run import RunDir
from tinygpt.core.runtime import Runtime, check_model_fits, seed_all
from tinygpt.data.examples import check_encodable as check_encodable  # its home; named here too
from tinygpt.data.prepare import check_fits
from tinygpt.data.template import ChatTemplate
from tinygpt.data.tokenizer import Tokenizer, file_hash, load_tokenizer
from tinygpt.infer.loader import base_record, build_adapted, write_adapter_record
from tinygpt.train.base import Base, Report, resolve_base, resumed_lora, start_model
from tinygpt.train.feed import DataRequest, Feed, build_feed, open_data
from tinygpt.train.loop import fit
from tinygpt.train.optim import build_optimizer
from tinygpt.train.resume import restore, resume_point
from tinygpt.train.session import begin_run, check_budget, open_run
from tinygpt.train.state import Hooks, TrainResult, TrainState


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


def finetune_config(
    base_config: RunConfig,
    overrides: Any = (),
    *,
    budgets: Mapping[str, Any] | None = None,
    settings: Mapping[str, Any] | None = None,
    resume_run: str | Path | None = None,
    preset: str = "finetune",
) -> RunConfig:
    """The configuration of a fine-tune: the base's model settings (`model.dropout` and a
    shorter `model.block_size` may be overridden, nothing else), the `finetune` preset's
    training settings with the dotted `overrides`, `settings` and `budgets` on top
    (`tinygpt.core.resolution.resolve_config`); a LoRA fine-tune starts from `finetune-lora`.
    Resuming (`resume_run`) starts from the run's own config.toml and changes no model
    setting."""
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

    train: TrainResult
    val_loss_before: float | None
    evaluated: str  # what the validation loss is measured on
    template: str | None
    trainable: int = 0  # parameters that trained
    total: int = 0  # parameters of the model as trained (a LoRA run's adapters included)
    lora: str | None = None  # the LoRA settings in words; None for a full fine-tune


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
    lora: LoraSettings | None = None,
    imported_from: str | Path | None = None,
) -> FinetuneResult:
    """Fine-tune `base` (a run folder; its `checkpoint`) on `data_dir` (an examples folder or
    a prepared text folder), `input` (a JSONL/JSON file of conversations, or text; read as
    `fmt`) or `corpus` into the run folder `out_dir`, through `tinygpt.train.loop.fit`
    (module docstring). `overrides` are dotted settings, `budgets` the command line's
    budgets, `settings` dedicated flags (`{"train.seed": 3}`); `report` receives notes
    (skipped records, dropped examples, the vocabulary's growth).

    A Hugging Face folder is fine-tuned through the run it is imported into: `tinygpt
    finetune` imports it (`tinygpt.export.hf_cache.import_cached`) and passes that run as
    `base` and the folder as `imported_from`, which the run's record names as its base.
    Given a Hugging Face folder itself, this raises an error that says so.

    `lora` (a `tinygpt.core.lora.LoraSettings`) trains low-rank adapters beside the frozen base
    instead of every weight (`tinygpt.core.lora`); the run then stores only the adapter and a
    pointer to its base.

    `resume=True` continues the fine-tune in `out_dir` from its latest checkpoint (the base,
    when given, must be the one the run started from; LoRA settings, when given, the run's
    own). `force` fine-tunes into a folder that holds other files."""
    t_start = time.perf_counter()
    say = report or (lambda line: None)
    run = open_run(out_dir, force=force)
    record: dict[str, Any] | None = None
    if resume:
        record = _resumed_record(run, base if imported_from is None else imported_from)
        base, checkpoint, imported_from = _recorded_base(record, base, imported_from)
    if base is None:
        raise TinyGPTError(
            "give the base model to fine-tune: a run folder or a Hugging Face folder"
        )
    start = resume_point(run, "yes" if resume else None)
    if resume:
        lora = resumed_lora(run, lora)
    based = resolve_base(base, checkpoint, imported_from)
    base_config = based.run.read_config()
    config, lora = _settings(base_config, overrides, budgets, settings, run if resume else None,
                             lora)  # fmt: skip
    check_budget(config.train)
    request = DataRequest(data_dir, input, corpus, fmt, template, train_on_prompt, text_field,
                          errors)  # fmt: skip
    if record is not None:  # the data the run was trained on, unless given anew
        request = _resumed_request(run, record, request)
    resolved, data, tmpl = open_data(based, config, request, report)
    _settle_data(config, run, resume, based, data, request, chat_data=resolved != "text")
    rt = Runtime.start(config.train)
    try:
        job = _prepare(run, based, base_config, config, rt, data, resolved, tmpl, request,
                       lora, start, record, command, say)  # fmt: skip
    except BaseException:
        rt.close(ok=False)
        raise
    return _fit(run, config, rt, job, tmpl, record, progress, t_start)


def _fit(
    run: RunDir,
    config: RunConfig,
    rt: Runtime,
    job: _Start,
    tmpl: ChatTemplate | None,
    record: dict[str, Any] | None,
    progress: bool,
    started: float,
) -> FinetuneResult:
    """The loop over what the set-up built, and how the fine-tune went."""
    result = fit(
        job.model,
        job.feed.batches,
        job.optimizer,
        config.train,
        run,
        evaluator=job.feed.evaluator,
        rt=rt,
        state=job.state,
        accum=job.feed.accum,
        hooks=Hooks(sample=job.feed.sampler),
        progress=progress,
        config=config.to_dict(),
        started=started,
    )
    before = job.before
    if record is not None:  # resumed: the loss before the first run of it
        before = record.get("val_loss_before")
    return FinetuneResult(
        result,
        before,
        job.feed.evaluated,
        tmpl.name if tmpl is not None else None,
        trainable=job.trainable,
        total=job.total,
        lora=job.adapted.settings.describe() if job.adapted is not None else None,
    )


def _settings(
    base_config: RunConfig,
    overrides: Any,
    budgets: Mapping[str, Any] | None,
    settings: Mapping[str, Any] | None,
    resumed: RunDir | None,
    lora: LoraSettings | None,
) -> tuple[RunConfig, LoraSettings | None]:
    """The fine-tune's configuration (`finetune_config`; a resumed run's own) and its LoRA
    settings resolved against the model, so that bad settings fail before any data is
    prepared."""
    config = finetune_config(
        base_config,
        overrides,
        budgets=budgets,
        settings=settings,
        resume_run=resumed.path if resumed is not None else None,
        preset="finetune-lora" if lora is not None else "finetune",
    )
    if lora is not None:
        lora = lora.resolved(config.model)
    return config, lora


def _resumed_record(run: RunDir, given: str | Path | None) -> dict[str, Any]:
    """The "finetune" record of the run to resume, checked: a fine-tune with checkpoints,
    not a merged copy, and from the base `given` (when given)."""
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
    if given is not None and Path(given).resolve() != Path(record["base"]):
        raise TinyGPTError(
            f"{run.path} was fine-tuned from {record['base']}, not {given}; give that base"
            " (or none) to resume it"
        )
    return record


def _recorded_base(
    record: dict[str, Any], base: str | Path | None, imported_from: str | Path | None
) -> tuple[str | Path, str, str | Path | None]:
    """(base, checkpoint, imported_from) of a resumed fine-tune, from its record. A base
    imported from a Hugging Face folder is the run it was imported into: the command line's
    fresh import when it made one, else the recorded one (or, when that is gone, the folder
    itself, which `resolve_base` refuses with the way to import it)."""
    if record.get("base_kind") != "hf":
        return record["base"], record["checkpoint"], None
    if imported_from is not None and base is not None:
        return base, record["checkpoint"], imported_from
    if RunDir(record["base_run"]).is_run():
        return record["base_run"], record["checkpoint"], record["base"]
    return record["base"], record["checkpoint"], None


def _resumed_request(run: RunDir, record: dict[str, Any], request: DataRequest) -> DataRequest:
    """The data of a resumed fine-tune: the data the run recorded unless other data is given,
    and the run's format, template and prompt scoring unless given anew."""
    data_dir, fmt, template = request.data_dir, request.fmt, request.template
    recorded = run.dataset_dir()
    if (
        data_dir is None
        and request.input is None
        and request.corpus is None
        and recorded is not None
    ):
        if not recorded.is_dir():
            raise TinyGPTError(
                f"the data the run was fine-tuned on ({recorded}) is gone; give its new"
                " place with --data DIR"
            )
        data_dir = recorded
    train_on_prompt = bool(record.get("train_on_prompt", False)) or request.train_on_prompt
    if fmt == "auto":
        fmt = record.get("format", "auto")
    if fmt != "text":
        template = template or record.get("template")
    return dataclasses.replace(
        request, data_dir=data_dir, fmt=fmt, template=template, train_on_prompt=train_on_prompt
    )


def _settle_data(
    config: RunConfig,
    run: RunDir,
    resume: bool,
    based: Base,
    data: Any,
    request: DataRequest,
    *,
    chat_data: bool,
) -> None:
    """Check the data against the run and the base, and record it in `config.data`."""
    if resume and file_hash(run.tokenizer_path) != file_hash(data.tokenizer_path):
        raise TinyGPTError(
            f"the data {data.path} was made with another tokenizer than the run {run.path};"
            " resume with the data the run was fine-tuned on"
        )
    config.data = dataclasses.replace(
        config.data,
        source=str(request.input or request.corpus or data.meta.get("source") or data.path),
        dir=str(data.path),
        tokenizer=str(based.run.tokenizer_path),
    )
    if not chat_data:
        check_fits(data, config.model.vocab_size, "the base")


@dataclass
class _Start:
    """What the set-up hands the loop (model, optimiser, feed, resumed state) and keeps for
    the result."""

    model: GPT
    optimizer: Any
    feed: Feed
    state: TrainState | None
    before: float | None  # the held-out loss before training (None when resuming)
    adapted: Adapted | None  # the LoRA adapters; None for a full fine-tune
    trainable: int
    total: int


def _prepare(
    run: RunDir,
    based: Base,
    base_config: RunConfig,
    config: RunConfig,
    rt: Runtime,
    data: Any,
    resolved: str,
    tmpl: ChatTemplate | None,
    request: DataRequest,
    lora: LoraSettings | None,
    start: Path | None,
    record: dict[str, Any] | None,
    command: list[str] | None,
    say: Report,
) -> _Start:
    """The model (the base's, grown, with LoRA adapters; or the run's own when resuming), the
    optimiser, the feed and the resumed state, the held-out loss before training, and (rank
    0) the run folder before the first step."""
    tc = config.train
    chat_data = resolved != "text"
    check_model_fits(config.model, rt.device, training=True)
    seed_all(tc.seed)
    tokenizer = load_tokenizer(data.tokenizer_path)
    model, notes, adapted = _model(run, based, base_config, config, lora, record is not None,
                                   tmpl if chat_data else None, tokenizer, data.path, say)  # fmt: skip
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
    feed = build_feed(data, chat_data, tokenizer, tmpl, config, rt, request.train_on_prompt, say)
    notes.update(feed.notes)
    state = None
    if start is not None:
        state = restore(run, start, model, optimizer, feed.batches, rt)
    before = None
    if state is None:  # the same measure as after training: every held-out example
        before = feed.evaluator.final(model).loss
        say(f"held-out loss before fine-tuning: {before:.4f} ({feed.evaluated})")
    job = _Start(model, optimizer, feed, state, before, adapted, trainable, total)
    if rt.dist.is_main:
        ft = record if record is not None else {
            **based.record(),
            "format": resolved,
            "template": tmpl.name if tmpl is not None else None,
            "train_on_prompt": request.train_on_prompt,
            "context": config.model.block_size,
            "val_loss_before": before,
            **notes,
        }  # fmt: skip
        _begin(run, config, based, data, resolved, tmpl, rt, job, ft, command)
    return job


def _model(
    run: RunDir,
    based: Base,
    base_config: RunConfig,
    config: RunConfig,
    lora: LoraSettings | None,
    resume: bool,
    template: ChatTemplate | None,
    tokenizer: Tokenizer,
    data_path: Path,
    say: Report,
) -> tuple[GPT, dict[str, Any], Adapted | None]:
    """(model, notes for run.json, LoRA adapters or None): when resuming, the run's own model
    (its weights come with the checkpoint); else the base's (`start_model`), with adapters
    when LoRA is asked for. `config.model` becomes the model's (a grown vocabulary)."""
    adapted: Adapted | None = None
    notes: dict[str, Any]
    if resume and lora is not None:
        model, notes = build_adapted(run, config.model, config.train.seed), {}
        adapted = cast(Adapted, model.lora)  # build_adapted applied it (kept as model.lora)
    elif resume:
        model, notes = GPT(config.model), {}
    else:
        model, notes = start_model(based, base_config, config, template, tokenizer, data_path,
                                   say)  # fmt: skip
        config.model = model.config
        if lora is not None:
            rows_from = notes.get("rows_from")
            adapted = apply_lora(model, lora, rows_from=rows_from, seed=config.train.seed)
    notes.pop("rows_from", None)
    return model, notes, adapted


def _begin(
    run: RunDir,
    config: RunConfig,
    based: Base,
    data: Any,
    resolved: str,
    tmpl: ChatTemplate | None,
    rt: Runtime,
    job: _Start,
    ft: dict[str, Any],
    command: list[str] | None,
) -> None:
    """The run folder before the first step (`begin_run`, with the "finetune" record `ft`),
    a new LoRA run's adapter record, and the run's first log line."""
    model, state = job.model, job.state
    details = {
        "parameters": model.num_params(),
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "resumed_from": state.resumed_from if state else None,
        "finetune": ft,
    }
    kind = "examples" if data.meta.get("kind") == "examples" else "text"
    begin_run(run, config, data, rt=rt, state=state, command=command, details=details,
              template=tmpl, kind=kind)  # fmt: skip
    if job.adapted is not None and state is None:
        base_rec = base_record(run.path, based.run.path, based.checkpoint, ft["weights_sha256"])
        write_adapter_record(run, job.adapted, base_rec, (job.trainable, job.total))
    log.info(
        "fine-tune %s of %s (%s): %s parameters, %s trainable, %s data, device %s",
        run.path, based.given, based.checkpoint.name, f"{job.total:,}", f"{job.trainable:,}",
        resolved, rt.device,
    )  # fmt: skip
