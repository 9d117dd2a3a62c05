"""Run folders <-> transformers folders: the work of `tinygpt export --format hf` and
`tinygpt import`.

`export_run` loads one checkpoint of a run (through `tinygpt.core.checkpoint.load_run`), writes
its model card from the run's files (`tinygpt.export.card`) and hands both to
`tinygpt.export.folder.save_hf_folder`, which writes the folder atomically. A run fine-tuned
with a chat template (`RUN/chat_template.json`, `tinygpt.data.template`) exports that template as
Jinja and its end-of-turn token as a second end id. `import_hf` goes the other way: a local
transformers folder of the GPT-2, Llama or Qwen3 family, with a byte-level BPE or character
`tokenizer.json`, becomes a run folder (config.toml, tokenizer.json, run.json, one
checkpoint marked best and latest, and the chat template when the folder's Jinja is one of
ours) that `sample`, `eval` and `info` accept. Exporting a run and importing the result
gives bit-identical weights.

This module knows the run folder only through `tinygpt.core.run`, `tinygpt.core.checkpoint` and
`tinygpt.data.template`; it knows nothing about how runs are trained.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from tinygpt.core import __version__
from tinygpt.core.checkpoint import read_state
from tinygpt.core.config import DataConfig, RunConfig
from tinygpt.core.errors import TinyGPTError
from tinygpt.core.files import fsync_dir, read_text, temp_sibling
from tinygpt.core.run import RunDir
from tinygpt.data.template import save_template, template_for_jinja
from tinygpt.data.tokenizer import tokenizer_from_json_dict
from tinygpt.export.card import model_card
from tinygpt.export.folder import check_destination, save_hf_folder
from tinygpt.export.hf import _transformers, load_hf, twin_family
from tinygpt.infer.loader import load_run, save_model_run


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True


def check_out_of_run(run_dir: Path, out_dir: Path, example: Path) -> None:
    """Refuse an export folder that would hold the run folder itself."""
    if _inside(run_dir, out_dir) or out_dir.resolve() == run_dir.resolve():
        raise TinyGPTError(
            f"--out {out_dir} would hold the run folder {run_dir} itself; give a folder"
            f" outside it, or one inside it such as {example}"
        )


def export_run(
    run_dir: str | Path,
    out_dir: str | Path,
    *,
    checkpoint: str = "best",
    force: bool = False,
    chat_template: str | None = None,
    end_of_turn: str | None = None,
    license: str = "mit",
    language: str | None = None,
    repo_id: str | None = None,
) -> Path:
    """Write a transformers folder for one checkpoint of a run; returns `out_dir`.

    `chat_template` (a Jinja string) goes into tokenizer_config.json and chat_template.jinja;
    `end_of_turn` (one of the tokenizer's special tokens) then joins end-of-text as an end
    id in generation_config.json. `license`, `language` and `repo_id` go into the card.
    """
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    run_folder = RunDir(run_dir)
    ckpt = run_folder.resolve_checkpoint(checkpoint)  # not a run / no checkpoint: clear error
    check_out_of_run(run_dir, out_dir, run_folder.hf_export_dir)
    family = twin_family(run_folder.read_config().model)  # before loading any weights
    check_destination(out_dir, force)
    run = load_run(run_dir, checkpoint=ckpt.name, device="cpu")
    if chat_template is None and run.template is not None:  # a fine-tuned chat run has one
        chat_template, end_of_turn = run.template.jinja(), run.template.end_of_turn
    card = model_card(
        run_dir,
        config=run.config.model,
        tokenizer=run.tokenizer,
        family=family,
        num_params=run.model.num_params(),
        checkpoint=ckpt.name,
        step=int(read_state(ckpt).get("step", 0)),
        repo_id=repo_id,
        license=license,
        language=language,
        chat_template=chat_template is not None,
    )
    return save_hf_folder(
        run.model,
        out_dir,
        tokenizer=run.tokenizer,
        chat_template=chat_template,
        end_of_turn=end_of_turn,
        card=card,
        force=force,
    )


# --------------------------------------------------------------------------------- import


def _sentencepiece_reason(hf_dir: Path, data: dict[str, Any] | None) -> str | None:
    """Why the folder's tokenizer is SentencePiece-based, or None when it is not."""
    if data is None:
        return "tokenizer.model" if (hf_dir / "tokenizer.model").is_file() else None
    model = data.get("model") or {}
    if model.get("type") == "Unigram":
        return "a Unigram model"
    if model.get("byte_fallback"):
        return "BPE with byte fallback"
    for part in ("pre_tokenizer", "decoder", "normalizer"):
        text = json.dumps(data.get(part) or {})
        if '"Metaspace"' in text or '"\\u2581"' in text or "\u2581" in text:
            return f"a {part} that writes spaces as \u2581"
    return None


def read_hf_tokenizer(hf_dir: str | Path) -> Any:
    """Our tokenizer for a transformers folder's tokenizer (byte-level BPE or characters)."""
    hf_dir = Path(hf_dir)
    path = hf_dir / "tokenizer.json"
    data = None
    if path.is_file():
        try:
            data = json.loads(read_text(path, "tokenizer file"))
        except json.JSONDecodeError as exc:
            raise TinyGPTError(f"{path} is not valid JSON ({exc})") from None
    reason = _sentencepiece_reason(hf_dir, data)
    if reason:
        raise TinyGPTError(
            f"{hf_dir} has a SentencePiece-based tokenizer ({reason}), which tinygpt does not"
            " read; tinygpt imports models with a byte-level BPE (GPT-2 style) or character"
            " tokenizer.json"
        )
    if data is None:
        if not (hf_dir / "vocab.json").is_file():
            raise TinyGPTError(
                f"{hf_dir} has no tokenizer.json (nor vocab.json + merges.txt); save the"
                " tokenizer with the model (tokenizer.save_pretrained) and import again"
            )
        data = _convert_slow_tokenizer(hf_dir)
    return tokenizer_from_json_dict(data, where=str(path))


def _convert_slow_tokenizer(hf_dir: Path) -> dict[str, Any]:
    """GPT-2's vocab.json + merges.txt, turned into a tokenizer.json by transformers."""
    tf = _transformers()
    try:
        tok = tf.AutoTokenizer.from_pretrained(hf_dir, local_files_only=True)
        return json.loads(tok.backend_tokenizer.to_str())
    except (OSError, ValueError, AttributeError) as exc:
        raise TinyGPTError(f"cannot read the tokenizer in {hf_dir}: {exc}") from None


def import_hf(hf_dir: str | Path, out_dir: str | Path) -> Path:
    """Turn a local transformers folder into a run folder at `out_dir` (which must be new
    or empty); returns `out_dir`. Written into a temporary sibling and renamed at the end."""
    hf_dir, out_dir = Path(hf_dir), Path(out_dir)
    if not (hf_dir / "config.json").is_file():
        raise TinyGPTError(
            f"{hf_dir} is not a transformers model folder (no config.json); give a folder"
            " that save_pretrained (or tinygpt export --format hf) wrote"
        )
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise TinyGPTError(f"{out_dir} already exists and is not empty; give a new run folder")
    tokenizer = read_hf_tokenizer(hf_dir)
    jinja = read_hf_chat_template(hf_dir)
    template = template_for_jinja(jinja) if jinja is not None else None
    model, config = load_hf(hf_dir)
    if tokenizer.vocab_size > config.vocab_size:
        raise TinyGPTError(
            f"the tokenizer has {tokenizer.vocab_size} ids but the model only"
            f" {config.vocab_size} embeddings; the folder's tokenizer does not belong to it"
        )
    # The training data of an imported model is unknown: the data section keeps its
    # defaults but for the tokenizer's kind; run.json records where the model came from.
    data = DataConfig(
        tokenizer=tokenizer.kind,
        vocab_size=tokenizer.vocab_size if tokenizer.kind == "bpe" else 0,
    )
    run_config = RunConfig(model=config, data=data)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(out_dir)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        save_model_run(tmp, run_config, model, tokenizer)
        info: dict[str, Any] = {
            "tinygpt": __version__,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "imported_from": str(hf_dir.resolve()),
            "parameters": model.num_params(),
        }
        if template is not None:
            save_template(tmp, template)
            info["chat_template"] = template.name
        elif jinja is not None:
            # sample/eval do not need it; a fine-tuning run would use one of ours
            info["chat_template"] = "a template tinygpt does not know (not imported)"
        RunDir(tmp).write_info(info)
        if out_dir.exists():
            out_dir.rmdir()  # empty (checked above)
        os.replace(tmp, out_dir)
        fsync_dir(out_dir.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def read_hf_chat_template(hf_dir: str | Path) -> str | None:
    """The Jinja chat template of a transformers folder (chat_template.jinja, else the
    `chat_template` of tokenizer_config.json), or None."""
    hf_dir = Path(hf_dir)
    if (hf_dir / "chat_template.jinja").is_file():
        return read_text(hf_dir / "chat_template.jinja", "chat template")
    try:
        config = json.loads((hf_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    template = config.get("chat_template") if isinstance(config, dict) else None
    return template if isinstance(template, str) else None
