"""The dataset folder: its files, reading it back, and writing one safely.

Owns: the layout shared by text datasets (`tinygpt.data.prepare`) and examples folders
(`tinygpt.data.examples`) — `meta.json`, `tokenizer.json`, the `train` and `val` splits —,
opening a text dataset as memory-mapped arrays (`open_dataset`), checking that a model can
embed its ids (`check_fits`), the deterministic split of items between train and
validation (`split_assignment`), and writing a folder so that an interrupted run never
leaves one that looks complete (`check_destination`, `make_temp_dir`, `install`). Knows
nothing about where text comes from, how it is cleaned or how it becomes token ids.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tinygpt.core.errors import TinyGPTError
from tinygpt.core.files import as_umask_allows, remove_leftovers, require_folder
from tinygpt.data.tokenizer import Tokenizer, load_tokenizer

META = "meta.json"
TOKENIZER = "tokenizer.json"
SPLITS = ("train", "val")


def dtype_for(vocab_size: int) -> np.dtype:
    """The narrowest unsigned type that holds every id.

    >>> dtype_for(50257), dtype_for(100277)
    (dtype('uint16'), dtype('uint32'))
    """
    return np.dtype(np.uint16 if vocab_size <= 65535 else np.uint32)


# --- reading a dataset -------------------------------------------------------------------


@dataclass
class Dataset:
    """A prepared dataset folder: token ids of both splits, memory-mapped, and its meta."""

    path: Path
    meta: dict[str, Any]
    train: np.ndarray  # (N_train,) token ids, an np.memmap unless the split is empty
    val: np.ndarray  # (N_val,) token ids, likewise

    @property
    def tokenizer_path(self) -> Path:
        return self.path / TOKENIZER

    @property
    def vocab_size(self) -> int:
        return int(self.meta["vocab_size"])

    def load_tokenizer(self) -> Tokenizer:
        return load_tokenizer(self.tokenizer_path)


def largest_id(tokens: np.ndarray, block: int = 1 << 24) -> int:
    """The largest token id in a split (-1 when empty), read in blocks so that a split larger
    than memory can be checked.

    >>> largest_id(np.array([3, 9, 2], dtype=np.uint16))
    9
    """
    top = -1
    for start in range(0, len(tokens), block):
        top = max(top, int(tokens[start : start + block].max()))
    return top


def check_fits(dataset: Dataset, vocab_size: int, what: str = "the model") -> None:
    """Refuse a dataset whose tokens the model cannot embed: a tokenizer with more ids than
    the model's vocabulary, or token ids at or beyond it (a damaged or foreign .bin file)."""
    tok_vocab = dataset.vocab_size
    if tok_vocab > vocab_size:
        raise TinyGPTError(
            f"{dataset.path} was made with a tokenizer of {tok_vocab:,} ids but {what} has a"
            f" vocabulary of {vocab_size:,}; prepare the text with the run's tokenizer"
            " (--tokenizer RUN/tokenizer.json)"
        )
    for split in SPLITS:
        top = largest_id(getattr(dataset, split))
        if top >= vocab_size:
            raise TinyGPTError(
                f"{dataset.path / (split + '.bin')} holds token id {top:,}, but {what}'s"
                f" vocabulary has {vocab_size:,} ids (0..{vocab_size - 1:,}); the file is"
                " damaged or from another dataset: prepare it again"
            )


def read_meta(path: Path) -> dict[str, Any] | None:
    """A dataset folder's meta.json, or None when it is missing or not a dataset's."""
    try:
        meta = json.loads((path / META).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and "splits" in meta and "dtype" in meta else None


def open_dataset(path: str | os.PathLike[str]) -> Dataset:
    """Open a folder written by `prepare`; clear errors when it is not one."""
    hint = "create one with: tinygpt prepare --corpus NAME --out DIR"
    path = require_folder(path, "dataset folder", hint)
    if not (path / META).is_file():
        raise TinyGPTError(f"{path} is not a tinygpt dataset (no {META}); {hint}")
    meta = read_meta(path)
    if meta is None:
        raise TinyGPTError(f"{path / META} is damaged or not a dataset description; {hint}")
    if meta.get("kind") == "examples":  # tinygpt.data.examples: conversations, not running text
        raise TinyGPTError(
            f"{path} holds chat examples, not text; fine-tune on it with"
            f" `tinygpt finetune BASE --data {path} --out RUN`"
        )
    try:
        dtype = np.dtype(meta["dtype"])
        counts = {split: int(meta["splits"][split]["tokens"]) for split in SPLITS}
    except (TypeError, KeyError, ValueError):
        raise TinyGPTError(f"{path / META} is damaged (dtype or token counts); {hint}") from None
    if dtype not in (np.dtype(np.uint16), np.dtype(np.uint32)) or min(counts.values()) < 0:
        raise TinyGPTError(f"{path / META} is damaged (dtype {dtype}); {hint}")
    arrays = {}
    for split in SPLITS:
        file = path / f"{split}.bin"
        expected = int(meta["splits"][split]["tokens"])
        if not file.is_file():
            raise TinyGPTError(f"{path} lacks {file.name}; prepare the dataset again")
        if file.stat().st_size != expected * dtype.itemsize:
            raise TinyGPTError(
                f"{file} holds {file.stat().st_size} bytes but meta.json says {expected} "
                f"{dtype} tokens; the folder is damaged, prepare it again"
            )
        # an empty split cannot be memory-mapped; training refuses it with its own message
        arrays[split] = (
            np.memmap(file, dtype=dtype, mode="r", shape=(expected,))
            if expected
            else np.zeros(0, dtype=dtype)
        )
    if not (path / TOKENIZER).is_file():
        raise TinyGPTError(f"{path} lacks {TOKENIZER}; prepare the dataset again")
    return Dataset(path=path, meta=meta, train=arrays["train"], val=arrays["val"])


# --- writing one ---------------------------------------------------------------------------


def check_destination(out: Path, source: str, force: bool) -> None:
    """Refuse to overwrite what is not ours, or another dataset unless forced."""
    if not out.exists():
        return
    if not out.is_dir():
        raise TinyGPTError(f"output path {out} is a file; choose a folder for --out")
    meta = read_meta(out)
    if meta is None:
        if any(out.iterdir()):
            raise TinyGPTError(
                f"output folder {out} holds files that are not a tinygpt dataset; "
                "choose an empty or new folder for --out"
            )
        return
    if meta.get("source") != source and not force:
        raise TinyGPTError(
            f"output folder {out} already holds a different dataset (from {meta.get('source')!r}); "
            "pass --force to replace it, or choose another --out"
        )


def make_temp_dir(out: Path) -> Path:
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        remove_leftovers(out.parent, out.name)  # of earlier preparations that were killed
        # mkdtemp makes the folder its owner's only; the dataset is read like any other folder
        tmp = tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-{os.getpid()}-")
        return as_umask_allows(tmp)
    except OSError as exc:
        raise TinyGPTError(
            f"cannot write to output folder {out} ({exc.strerror or exc}); choose a writable --out"
        ) from None


def install(tmp: Path, out: Path) -> None:
    """Move the finished folder into place; a previous dataset there is replaced."""
    if out.exists():
        old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-{os.getpid()}-"))
        os.replace(out, old / "dataset")
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


def split_assignment(n_docs: int, val_fraction: float, seed: int) -> list[bool]:
    """Whether each of `n_docs` documents goes to validation (deterministic in seed)."""
    scores = []
    for i in range(n_docs):
        h = hashlib.sha256(f"{seed}:{i}".encode()).digest()
        scores.append(int.from_bytes(h[:8], "big") / 2**64)
    is_val = [s < val_fraction for s in scores]
    if n_docs >= 2 and not any(is_val):
        is_val[min(range(n_docs), key=scores.__getitem__)] = True
    if n_docs >= 2 and all(is_val):
        is_val[max(range(n_docs), key=scores.__getitem__)] = False
    return is_val
