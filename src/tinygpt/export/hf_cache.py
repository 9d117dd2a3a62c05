"""Hugging Face model folders as runs, imported once and cached: `import_cached` turns a
local folder (GPT-2, Llama or Qwen3 family, byte-level BPE or character tokenizer) into a run
folder under the cache (`tinygpt.export.hf_run.import_hf`), reused while the folder's files are
unchanged; `base_run` is what the command line asks before fine-tuning a base that may be
such a folder.

Training reads run folders only: a fine-tune from a Hugging Face folder starts from the run
this module made, and names the folder in its record. This module knows nothing about
training.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

from tinygpt.core.run import RunDir
from tinygpt.data.corpora import cache_dir
from tinygpt.export.hf_run import import_hf


def is_hf_folder(path: str | Path) -> bool:
    """A folder that is not a run but holds a Hugging Face `config.json`."""
    folder = Path(path).expanduser()
    return folder.is_dir() and not RunDir(folder).is_run() and (folder / "config.json").is_file()


def import_cached(hf_dir: str | Path, report: Callable[[str], None] | None = None) -> RunDir:
    """The run folder `hf_dir` was imported into, importing it the first time and again when
    one of its files changed (the cache key is its path and its files' names, sizes and
    modification times). `report` hears of an import."""
    hf_dir = Path(hf_dir).expanduser()
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


def base_run(
    base: str | Path, report: Callable[[str], None] | None = None
) -> tuple[str | Path, str | Path | None]:
    """(base to fine-tune, the Hugging Face folder it was imported from or None): a Hugging
    Face folder becomes its cached run; anything else is passed on as it is."""
    if not is_hf_folder(base):
        return base, None
    return import_cached(base, report).path, base
