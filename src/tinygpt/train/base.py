"""The base of a fine-tune: where it is (`resolve_base`: a run folder, or the run a Hugging
Face folder was imported into), what run.json keeps of it (`Base.record`), the model a
fine-tune starts from (`start_model`: its weights, a shorter context, rows for new special
tokens) and the LoRA settings a resumed fine-tune continues with (`resumed_lora`).

Importing a Hugging Face folder is `tinygpt.export.hf_cache`'s (the command line does it
before fine-tuning); this module only reads run folders, and knows nothing about the data or
the loop.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tinygpt.core.checkpoint import WEIGHTS, read_state
from tinygpt.core.config import RunConfig
from tinygpt.core.errors import TinyGPTError
from tinygpt.core.files import sha256_file
from tinygpt.core.lora import LoraSettings
from tinygpt.core.model import GPT
from tinygpt.core.run import CONFIG, RunDir
from tinygpt.core.surgery import add_special_tokens, shorten_context
from tinygpt.data.template import ChatTemplate
from tinygpt.data.tokenizer import Tokenizer, file_hash
from tinygpt.infer.loader import load_base_weights, load_tokenizer, read_adapter_record

Report = Callable[[str], None]


@dataclass
class Base:
    """Where a fine-tune starts: a run folder (for a Hugging Face folder, the run it was
    imported into) and one of its checkpoints."""

    given: str  # as the user gave it (for a Hugging Face folder, that folder)
    run: RunDir
    checkpoint: Path
    kind: str  # "run" or "hf"

    def record(self) -> dict[str, Any]:
        """What run.json keeps of the base ("finetune" record)."""
        return {
            "base": str(Path(self.given).resolve()),
            "base_kind": self.kind,
            "base_run": str(self.run.path.resolve()),
            "checkpoint": self.checkpoint.name,
            "step": int(read_state(self.checkpoint).get("step", 0)),
            "weights_sha256": sha256_file(self.checkpoint / WEIGHTS),
            "tokenizer_hash": file_hash(self.run.tokenizer_path),
        }


def resolve_base(
    base: str | Path, checkpoint: str = "best", imported_from: str | Path | None = None
) -> Base:
    """The base of a fine-tune: a run folder. `imported_from` names the Hugging Face folder
    the run was imported from (`tinygpt.export.hf_cache.import_cached`), which the record
    then names as the base. A Hugging Face folder itself is refused with the way to import
    it: importing is an export-side job that training does not reach."""
    path = Path(base).expanduser()
    if not path.is_dir():
        raise TinyGPTError(
            f"base {base} does not exist; give a run folder (tinygpt train --out) or a local"
            " Hugging Face model folder"
        )
    run = RunDir(path)
    if run.is_run():
        if imported_from is not None:
            return Base(str(imported_from), run, run.resolve_checkpoint(checkpoint), "hf")
        return Base(str(base), run, run.resolve_checkpoint(checkpoint), "run")
    if not (path / "config.json").is_file():
        raise TinyGPTError(
            f"base {base} is neither a run folder (no {CONFIG}) nor a Hugging Face model folder"
            " (no config.json); give a folder that `tinygpt train` or `save_pretrained` wrote"
        )
    raise TinyGPTError(
        f"base {base} is a Hugging Face model folder; fine-tune it with `tinygpt finetune`,"
        f" which imports it on the fly, or import it first with `tinygpt import {base} --out"
        " RUN` and fine-tune RUN"
    )


def resumed_lora(run: RunDir, given: LoraSettings | None) -> LoraSettings | None:
    """The LoRA settings a resumed fine-tune continues with: the run's own (None for a full
    fine-tune). Settings given anew must be those; LoRA on a full fine-tune is refused."""
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


def start_model(
    based: Base,
    base_config: RunConfig,
    config: RunConfig,
    template: ChatTemplate | None,
    tokenizer: Tokenizer,
    data_path: Path,
    say: Report,
) -> tuple[GPT, dict[str, Any]]:
    """The base's model with its weights, `config`'s dropout and context, and rows for the
    template's special tokens (checked against the data's tokenizer); the notes for run.json
    (and `rows_from`, the first new row, for LoRA)."""
    shape = dataclasses.replace(
        config.model,
        block_size=base_config.model.block_size,
        vocab_size=base_config.model.vocab_size,
    )
    model = GPT(shape)
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
