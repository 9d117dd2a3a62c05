"""The one run loader: a run folder's model, tokenizer and chat template, together.

Every reader of a trained run — sample, chat, eval, report, plot, attention, export, serve,
`tinygpt.load`, a fine-tune from a base, merge — goes through `load_run` (the model with its
tokenizer and template) or `load_text_side` (the tokenizer and template alone). No other code
opens a run's tokenizer or template file, and the template is checked against the tokenizer
here, once: a template whose special tokens the tokenizer lacks is refused with one line.

A LoRA run's checkpoints hold only its adapter: `load_run` finds the run's base (and refuses
one that moved or whose weights changed: `locate_base`), loads its weights, applies the
adapter (`tinygpt.core.lora`) and, unless asked not to, folds it in, so that every reader sees
a plain model. The adapter record (`adapter.json`) is written and read here too.

What the files are called is `tinygpt.core.run`'s; what a checkpoint holds,
`tinygpt.core.checkpoint`'s and `tinygpt.core.weights`'.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tinygpt.core.checkpoint import WEIGHTS, read_state
from tinygpt.core.config import GPTConfig, RunConfig
from tinygpt.core.errors import TinyGPTError
from tinygpt.core.files import sha256_file
from tinygpt.core.lora import FORMAT, FORMAT_VERSION, Adapted, LoraSettings, apply_lora, merge_lora
from tinygpt.core.model import GPT
from tinygpt.core.run import RunDir
from tinygpt.core.runtime import check_model_fits
from tinygpt.core.surgery import grow_vocabulary, shorten_context
from tinygpt.core.weights import load_weights, save_checkpoint
from tinygpt.data.template import ChatTemplate, load_template
from tinygpt.data.tokenizer import Tokenizer
from tinygpt.data.tokenizer import load_tokenizer as read_tokenizer

# ------------------------------------------------------------------- tokenizer and template


def load_tokenizer(run: RunDir) -> Tokenizer:
    """The run's tokenizer (`tokenizer.json`)."""
    return read_tokenizer(run.tokenizer_path)


def load_text_side(run_dir: str | Path | RunDir) -> tuple[Tokenizer, ChatTemplate | None]:
    """(tokenizer, chat template or None) of a run, checked against each other: every
    special token of the template must be a special token of the tokenizer."""
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    tokenizer = load_tokenizer(run)
    template = load_template(run.path)
    if template is not None:
        missing = [s for s in template.special_tokens if s not in tokenizer.special_tokens]
        if missing:
            raise TinyGPTError(
                f"{run.path} has chat template {template.name!r} but its tokenizer lacks "
                f"{', '.join(missing)}; the run folder is damaged (fine-tune it again)"
            )
    return tokenizer, template


# -------------------------------------------------------------------------------- a model


@dataclass
class LoadedRun:
    """A trained model ready for sampling, evaluation or export, with its text side."""

    config: RunConfig
    model: GPT
    tokenizer: Tokenizer
    template: ChatTemplate | None
    run_dir: Path
    checkpoint_dir: Path

    @property
    def step(self) -> int:
        return int(read_state(self.checkpoint_dir).get("step", 0))


def load_run(
    run_dir: str | Path, checkpoint: str = "best", device: str = "cpu", *, merge: bool = True
) -> LoadedRun:
    """Rebuild the model of a run folder from its config, tokenizer and a checkpoint, with its
    chat template. A LoRA run's checkpoint holds an adapter: its base is loaded (and checked)
    and the adapter applied; `merge` (the default) folds it into the weights so every reader
    gets a plain model, `merge=False` keeps the adapters beside the frozen base."""
    run = RunDir(run_dir)
    ckpt = run.resolve_checkpoint(checkpoint)
    run.verified(ckpt, (WEIGHTS,))
    config = run.read_config()
    tokenizer, template = load_text_side(run)
    if tokenizer.vocab_size > config.model.vocab_size:
        raise TinyGPTError(
            f"{run.tokenizer_path} has {tokenizer.vocab_size:,} ids but the run's model has a"
            f" vocabulary of {config.model.vocab_size:,}: the tokenizer is not the one the run"
            " was trained with; put that one back"
        )
    check_model_fits(config.model, device, training=False)
    if run.is_lora():
        model = build_adapted(run, config.model)
        load_weights(model, ckpt / WEIGHTS)
        if merge:
            model = merge_lora(model)
    else:
        model = GPT(config.model)
        load_weights(model, ckpt / WEIGHTS)
    model.to(device).eval()
    return LoadedRun(config, model, tokenizer, template, run.path, ckpt)


def save_model_run(
    run_dir: str | Path, config: RunConfig, model: GPT, tokenizer: Tokenizer, step: int = 0
) -> Path:
    """The minimal run folder (config, tokenizer, one checkpoint marked best and latest)."""
    run = RunDir(run_dir)
    run.write_config(config)
    run.path.mkdir(parents=True, exist_ok=True)
    tokenizer.save(run.tokenizer_path)
    return save_checkpoint(run, step, model, state={"tokens": 0}, is_best=True)


# ---------------------------------------------------------------------- the base of a run


def _rel(path: Path, start: Path) -> str | None:
    try:
        return os.path.relpath(path, start)
    except ValueError:  # another drive (Windows)
        return None


def base_record(run_dir: Path, base_run: Path, checkpoint: Path, weights_sha256: str) -> dict:
    """adapter.json's pointer to the base: its run folder (absolute, and relative to the
    LoRA run so that a folder of runs can move as a whole), checkpoint and weights hash."""
    base_run = Path(base_run).resolve()
    return {
        "run": str(base_run),
        "relative": _rel(base_run, Path(run_dir).resolve()),
        "checkpoint": Path(checkpoint).name,
        "step": int(read_state(checkpoint).get("step", 0)),
        "weights_sha256": weights_sha256,
    }


def write_adapter_record(
    run: RunDir, adapted: Adapted, base: dict[str, Any], counts: tuple[int, int]
) -> None:
    """Write the run's adapter.json: what the adapter is, and where its base is."""
    run.write_adapter(
        {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            **adapted.record(),
            "trainable_parameters": counts[0],
            "total_parameters": counts[1],
            "base": base,
        }
    )


def read_adapter_record(run: RunDir) -> dict[str, Any]:
    """The run's adapter.json, checked; a clear error when it is not one this code reads."""
    record = run.read_adapter()
    if record is None or record.get("format") != FORMAT:
        raise TinyGPTError(
            f"{run.adapter_path} is not a LoRA adapter record this tinygpt reads; the run"
            " folder is damaged"
        )
    if record.get("version") != FORMAT_VERSION:
        raise TinyGPTError(
            f"{run.adapter_path} has adapter format version {record.get('version')!r}; this"
            f" tinygpt reads {FORMAT_VERSION}: fine-tune again with this version"
        )
    base = record.get("base")
    fields = ("run", "checkpoint", "weights_sha256")
    if not isinstance(base, dict) or not all(isinstance(base.get(k), str) for k in fields):
        raise TinyGPTError(
            f"{run.adapter_path}: its base must name {', '.join(fields)} (strings); the run"
            " folder is damaged: fine-tune again"
        )
    try:
        LoraSettings.from_record(record)
        int(record["rows_from"])
    except (KeyError, TypeError, ValueError) as exc:
        raise TinyGPTError(
            f"{run.adapter_path}: the adapter's settings are damaged ({type(exc).__name__}:"
            f" {exc}); fine-tune again"
        ) from None
    return record


def locate_base(run: RunDir) -> tuple[RunDir, Path]:
    """(base RunDir, base checkpoint) of a LoRA run, once the base's weights are checked
    against the hash recorded when the adapter was trained. A base that is gone (moved or
    deleted), lost that checkpoint, or whose weights changed is refused with one line."""
    record = read_adapter_record(run)
    base = record["base"]
    where = [Path(base["run"])]
    if base.get("relative"):
        where.append((run.path / base["relative"]).resolve())
    found = next((RunDir(p) for p in where if RunDir(p).is_run()), None)
    if found is None:
        raise TinyGPTError(
            f"the base of LoRA run {run.path} is gone: {base['run']} (moved or deleted); a"
            " LoRA run holds only its adapter, so put the base back there, or keep the runs"
            " folder together when you move it"
        )
    if found.path.resolve() == run.path.resolve():
        raise TinyGPTError(f"{run.adapter_path} names the run itself as its base; it is damaged")
    ckpt = found.checkpoints_dir / base["checkpoint"]
    if not (ckpt / WEIGHTS).is_file():
        raise TinyGPTError(
            f"the base of LoRA run {run.path} moved on: {found.path} no longer has checkpoint"
            f" {base['checkpoint']} (step {base.get('step')}), the weights the adapter was"
            " trained on; restore that checkpoint, or fine-tune again from the base as it is"
        )
    try:
        state = found.verified(ckpt, (WEIGHTS,))
    except TinyGPTError as exc:
        raise TinyGPTError(f"the base of LoRA run {run.path} ({found.path}): {exc}") from None
    recorded = ((state.get("files") or {}).get(WEIGHTS) or {}).get("sha256")
    now = recorded or sha256_file(ckpt / WEIGHTS)
    if now != base["weights_sha256"]:
        raise TinyGPTError(
            f"the base of LoRA run {run.path} changed: the weights of {found.path}"
            f" ({base['checkpoint']}) have sha256 {now[:12]}…, not {base['weights_sha256'][:12]}…"
            " as when the adapter was trained; an adapter fits only its own base: restore"
            " it, or fine-tune again"
        )
    return found, ckpt


def load_base_weights(model: GPT, base: RunDir, checkpoint: Path) -> None:
    """Load the weights of checkpoint `checkpoint` of run `base` into the plain `model`; a
    LoRA base gives its own base with its adapter merged (so adapters can stack)."""
    if base.is_lora():
        merged = load_run(base.path, checkpoint=checkpoint.name).model
        model.load_state_dict(merged.state_dict())
        return
    base.verified(checkpoint, (WEIGHTS,))
    load_weights(model, checkpoint / WEIGHTS)


def build_adapted(run: RunDir, model_config: GPTConfig, seed: int = 0) -> GPT:
    """The adapted model of LoRA run `run` before its adapter is loaded: the base's weights
    (checked), the vocabulary and context of `model_config`, adapters as recorded."""
    record = read_adapter_record(run)
    base, ckpt = locate_base(run)
    base_model = base.read_config().model
    model = GPT(
        dataclasses.replace(
            model_config, vocab_size=base_model.vocab_size, block_size=base_model.block_size
        )
    )
    load_base_weights(model, base, ckpt)
    grow_vocabulary(model, model_config.vocab_size, seed)  # rows past rows_from: the adapter's
    shorten_context(model, model_config.block_size)
    apply_lora(
        model,
        LoraSettings.from_record(record),
        rows_from=int(record["rows_from"]),
        seed=seed,
    )
    return model


def adapter_hash(checkpoint: Path) -> str:
    """The sha256 of a checkpoint's weights (a LoRA run's: its adapter)."""
    return sha256_file(checkpoint / WEIGHTS)
