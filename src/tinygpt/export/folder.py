"""A transformers folder on disk: what goes into it besides the weights, and how it is written.

Owns the tokenizer files (`tokenizer_config.json`, `special_tokens_map.json`,
`chat_template.jinja`) and the generation defaults (`generation_config.json`) that go with our
`tokenizer.json`, the check of an export's destination (never a run or a dataset, a non-empty
folder only with `force`) and the atomic writing of a whole folder: everything into a hidden
sibling first, renamed into place at the end. The ONNX export (`tinygpt.export.onnx`) writes
its tokenizer part with the same functions. It does not know how weights are converted or
configurations mapped (`tinygpt.export.hf`), about run folders (`tinygpt.export.hf_run`) or
how a model card is worded (`tinygpt.export.card`).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from tinygpt.core.config import SAMPLE_TEMPERATURE, SAMPLE_TOP_K
from tinygpt.core.errors import TinyGPTError
from tinygpt.core.files import as_umask_allows, fsync_dir, fsync_file, temp_sibling
from tinygpt.core.model import GPT
from tinygpt.core.run import RunDir
from tinygpt.data.tokenizer import EOT, UNK, Tokenizer
from tinygpt.export.hf import _quiet, _transformers, to_hf_model

# -------------------------------------------------------------------------- tokenizer


def tokenizer_files(
    tokenizer: Tokenizer,
    *,
    model_max_length: int,
    chat_template: str | None = None,
) -> dict[str, Any]:
    """tokenizer_config.json and special_tokens_map.json for our `tokenizer.json`.

    `PreTrainedTokenizerFast` (every transformers version since 4.0; `TokenizersBackend` in
    5.x) takes the `tokenizer.json` as it is, so it encodes exactly as ours. The end-of-text
    token is also the beginning, end and padding token (GPT-2's convention); no post-processor
    adds it, so `tokenizer(text)` gives the ids of the text alone, as `tokenizer.encode` does
    here. `clean_up_tokenization_spaces` would change decoded text ("a ." -> "a."), so it is
    off. A chat template goes into `tokenizer_config.json`, and `save_hf_folder` also writes
    it to `chat_template.jinja` (the file transformers 5 writes), with identical content.
    """
    specials: dict[str, str] = {"bos_token": EOT, "eos_token": EOT, "pad_token": EOT}
    if UNK in tokenizer.special_tokens:
        specials["unk_token"] = UNK
    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **specials,
        "model_max_length": model_max_length,
        "clean_up_tokenization_spaces": False,
        "add_bos_token": False,
        "add_eos_token": False,
        # decoder-only batched generation pads on the left, so each row ends at its last token
        "padding_side": "left",
        "added_tokens_decoder": {
            str(i): {
                "content": s,
                "lstrip": False,
                "normalized": False,
                "rstrip": False,
                "single_word": False,
                "special": True,
            }
            for s, i in sorted(tokenizer.special_tokens.items(), key=lambda kv: kv[1])
        },
    }
    if chat_template is not None:
        config["chat_template"] = chat_template
    return {"tokenizer_config.json": config, "special_tokens_map.json": specials}


def generation_config_for(
    tokenizer: Tokenizer, *, block_size: int, end_of_turn: str | None = None
) -> dict[str, Any]:
    """generation_config.json: special ids and the sampling defaults of `tinygpt sample`.

    `max_length` is the context: transformers does not slide its window past the positions
    the model was trained on (our generator does), so a default beyond it would fail (GPT-2)
    or run on untrained positions (RoPE). With a chat template's end-of-turn token the end
    ids are a list, so that generation stops at the end of an assistant turn too.
    """
    eot = tokenizer.eot_id
    eos: int | list[int] = eot
    if end_of_turn is not None:
        if end_of_turn not in tokenizer.special_tokens:
            raise TinyGPTError(
                f"the end-of-turn token {end_of_turn!r} is not a special token of this "
                f"tokenizer (it has {', '.join(tokenizer.special_tokens)}); add it to the "
                "tokenizer or give another"
            )
        eos = [eot, tokenizer.special_tokens[end_of_turn]]
    return {
        "bos_token_id": eot,
        "eos_token_id": eos,
        "pad_token_id": eot,
        "do_sample": True,
        "temperature": SAMPLE_TEMPERATURE,
        "top_k": SAMPLE_TOP_K,
        "max_length": block_size,
    }


# ---------------------------------------------------------------------------- folders


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def check_destination(out_dir: Path, force: bool) -> None:
    """Refuse to overwrite a non-empty folder without `force`, and a run folder ever."""
    if out_dir.exists() and not out_dir.is_dir():
        raise TinyGPTError(f"{out_dir} exists and is not a folder; give a folder path for --out")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if RunDir(out_dir).checkpoints_dir.is_dir() or (out_dir / "train.bin").is_file():
            raise TinyGPTError(
                f"{out_dir} holds a run or dataset, which an export never replaces; "
                "give another --out folder"
            )
        if not force:
            raise TinyGPTError(
                f"{out_dir} exists and is not empty; give an empty or new folder, "
                "or pass --force to replace it"
            )


def write_tokenizer_files(
    folder: Path, tokenizer: Tokenizer, files: dict[str, Any], chat_template: str | None
) -> None:
    """tokenizer.json, the files of `tokenizer_files` and chat_template.jinja (with a chat
    template) into `folder`: the tokenizer part of a transformers folder (and of an ONNX
    export folder, `tinygpt.export.onnx`)."""
    tokenizer.save(folder / "tokenizer.json")
    for name, content in files.items():
        _write_json(folder / name, content)
    if chat_template is not None:
        (folder / "chat_template.jinja").write_text(chat_template, encoding="utf-8")


def save_hf_folder(
    model: GPT,
    out_dir: str | Path,
    *,
    tokenizer: Tokenizer | None = None,
    chat_template: str | None = None,
    end_of_turn: str | None = None,
    card: str | None = None,
    force: bool = False,
) -> Path:
    """Write a complete transformers folder for `model` (and `tokenizer`) at `out_dir`.

    Files: config.json, model.safetensors, generation_config.json; with a tokenizer also
    tokenizer.json, tokenizer_config.json, special_tokens_map.json (and chat_template.jinja
    with a chat template); README.md when `card` is given. Everything is written into a
    temporary sibling folder that is renamed into place at the end, so `out_dir` is never
    a half-written folder that looks complete; an existing non-empty `out_dir` is replaced
    only with `force`.
    """
    out_dir = Path(out_dir)
    check_destination(out_dir, force)
    if chat_template is not None and tokenizer is None:
        raise TinyGPTError("a chat template needs a tokenizer to go with it")
    eot_id = getattr(tokenizer, "eot_id", None)
    hf_model = to_hf_model(model, eot_id=eot_id)
    files: dict[str, Any] = {}
    gen = None
    if tokenizer is not None:  # everything that can fail on bad input, before any file
        gen = generation_config_for(
            tokenizer, block_size=model.config.block_size, end_of_turn=end_of_turn
        )
        files = tokenizer_files(
            tokenizer, model_max_length=model.config.block_size, chat_template=chat_template
        )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(out_dir)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tf = _transformers()
        with _quiet(tf):
            hf_model.save_pretrained(tmp)
        if gen is not None:
            tf.GenerationConfig(**gen).save_pretrained(tmp)  # replaces the one derived above
            assert tokenizer is not None  # gen comes with a tokenizer (above)
            write_tokenizer_files(tmp, tokenizer, files, chat_template)
        if card is not None:
            (tmp / "README.md").write_text(card, encoding="utf-8")
        for path in [tmp, *tmp.rglob("*")]:  # transformers' safetensors: owner-only
            as_umask_allows(path)
        replace_folder(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def replace_folder(tmp: Path, out_dir: Path) -> None:
    """Move the finished `tmp` to `out_dir` (files fsync'ed first); an old `out_dir` is
    first moved aside under a hidden name (atomic), then deleted, so no moment shows a
    mixed folder."""
    for file in tmp.iterdir():  # the contents are on disk before the name says "complete"
        fsync_file(file)
    fsync_dir(tmp)
    old = None
    if out_dir.exists():
        old = temp_sibling(out_dir, "old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    fsync_dir(out_dir.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def to_hf(
    model: GPT,
    out_dir: str | Path,
    *,
    tokenizer: Tokenizer | None = None,
    chat_template: str | None = None,
    end_of_turn: str | None = None,
    card: str | None = None,
    force: bool = False,
) -> Path:
    """Write a transformers folder that `AutoModelForCausalLM.from_pretrained(out_dir)` (and,
    with a tokenizer, `AutoTokenizer` and `pipeline`) load; see `save_hf_folder`."""
    return save_hf_folder(
        model,
        out_dir,
        tokenizer=tokenizer,
        chat_template=chat_template,
        end_of_turn=end_of_turn,
        card=card,
        force=force,
    )
