"""The run folder: the one place that knows the names and formats of the files in it.

`tinygpt train` (and every later training command) writes a run into one folder, and every
later command — eval, sample, report, plot, attention, info, resume, export — needs only that
folder. `RunDir` is the only code that knows what the folder holds:

```
RUN/
  config.toml       the resolved RunConfig (model, data, train sections)
  tokenizer.json    a byte-for-byte copy of the dataset's tokenizer (HF-compatible)
  chat_template.json  the chat template of a fine-tuned run (`tinygpt.data.template`), if it has one
  adapter.json      a LoRA run's adapter (`tinygpt.core.lora`): rank, alpha, targets, the rows
                    that train, and its base (run folder, checkpoint, weights sha256); its
                    checkpoints then hold only the adapter, and the run loader
                    (`tinygpt.infer.loader`) adds the base
  run.json          provenance: versions, command, device, and the record of the dataset
                    the run was trained on ("dataset": path, key, tokenizer hash, source);
                    for a fine-tuned run, where it started ("finetune": base, checkpoint,
                    hashes, template, data format); each resumption appends to "resumed"
  metrics.csv       one row per logged step, columns METRICS_FIELDS (floats written exactly)
  summary.json      the end of training: steps, tokens, times, final validation loss
  train.log         the training log
  samples/          text sampled during training (step-NNNNNN.txt) and by `eval --samples`
  eval/             results.json (loss), scores.json (BLEU/chrF), prompts, generations
  checkpoints/      step-NNNNNN/ folders (their contents: `tinygpt.core.checkpoint`) and the
                    pointer files `latest` and `best` (one line: a folder name)
  report.md, report.html, loss.png, stats.png, attention.png, curves.png
  tensorboard/, wandb/   logs of those tools, when enabled
  export/hf/        the Hugging Face export `tinygpt push RUN` uploads
```

The dataset is recorded once, in `run.json`; `config.toml` keeps the data settings the user
gave. Writes are atomic (`tinygpt.core.files`). What a checkpoint folder holds is
`tinygpt.core.checkpoint`'s business (writing one, with torch, `tinygpt.core.weights`'); turning
a run into a model, tokenizer and chat template is the run loader's (`tinygpt.infer.loader`);
how a model is trained is `tinygpt.train.loop`'s. This module never imports torch.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import re
from pathlib import Path
from typing import Any

from tinygpt.core.checkpoint import DamagedCheckpoint, discard, is_complete, verify, write_error
from tinygpt.core.config import RunConfig
from tinygpt.core.errors import TinyGPTError
from tinygpt.core.files import (
    atomic_copy,
    atomic_write_json,
    atomic_write_text,
    kind_of,
)
from tinygpt.core.files import remove_leftovers as remove_leftovers_in

CONFIG = "config.toml"
TOKENIZER = "tokenizer.json"
CHAT_TEMPLATE = "chat_template.json"
ADAPTER = "adapter.json"
INFO = "run.json"
METRICS = "metrics.csv"
SUMMARY = "summary.json"
LOG = "train.log"
SAMPLES = "samples"
EVAL = "eval"
CHECKPOINTS = "checkpoints"
TENSORBOARD = "tensorboard"
EXPORT = "export"
REPORT_MD = "report.md"
REPORT_HTML = "report.html"
LOSS_PNG = "loss.png"
STATS_PNG = "stats.png"
ATTENTION_PNG = "attention.png"
CURVES_PNG = "curves.png"
PLOTS = (LOSS_PNG, STATS_PNG, ATTENTION_PNG)
METRICS_FIELDS = [
    "step",
    "tokens",
    "time_s",
    "train_loss",
    "val_loss_est",
    "lr",
    "grad_norm",
    "tokens_per_s",
]
_STEP_DIR = re.compile(r"^step-(\d{6,})$")


def _step_of(name: str) -> int:
    """The step a checkpoint folder's name holds; 0 for any other name."""
    match = _STEP_DIR.match(name)
    return int(match.group(1)) if match else 0


def step_name(step: int) -> str:
    """The folder name of the checkpoint at `step`.

    >>> step_name(42)
    'step-000042'
    """
    return f"step-{step:06d}"


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


class RunDir:
    """A run folder (module docstring). Cheap to make: nothing is read until asked for."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # ------------------------------------------------------------------------ what is here

    @property
    def name(self) -> str:
        return self.path.name

    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG

    @property
    def tokenizer_path(self) -> Path:
        return self.path / TOKENIZER

    @property
    def adapter_path(self) -> Path:
        return self.path / ADAPTER

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS

    @property
    def samples_dir(self) -> Path:
        return self.path / SAMPLES

    @property
    def eval_dir(self) -> Path:
        return self.path / EVAL

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / CHECKPOINTS

    @property
    def tensorboard_dir(self) -> Path:
        return self.path / TENSORBOARD

    @property
    def hf_export_dir(self) -> Path:
        return self.path / EXPORT / "hf"

    @property
    def onnx_export_dir(self) -> Path:
        return self.path / EXPORT / "onnx"

    @property
    def log_path(self) -> Path:
        return self.path / LOG

    def is_run(self) -> bool:
        return self.config_path.is_file()

    def require(self) -> RunDir:
        """Self, or a clear error when the folder is not a run."""
        kind = kind_of(self.path)
        if kind != "a folder":
            what = "it does not exist" if kind == "missing" else f"it is {kind}"
            raise TinyGPTError(
                f"{self.path} is not a run folder: {what}; give a folder `tinygpt train` wrote"
            )
        if not self.is_run():
            raise TinyGPTError(
                f"{self.path} is not a run folder (no {CONFIG}); give the folder that"
                " `tinygpt train --out` wrote"
            )
        return self

    def check_out(self, *, force: bool = False) -> None:
        """Refuse to train into a folder that holds something other than a run (the user's
        files would be overwritten or deleted) unless `force`; a file where the folder
        should be is refused always."""
        kind = kind_of(self.path)
        if kind == "missing":
            return
        if kind != "a folder":
            raise TinyGPTError(f"--out {self.path} is {kind}; give a folder for the run")
        if force or not any(self.path.iterdir()) or self._has_run_files():
            return
        raise TinyGPTError(
            f"--out {self.path} holds files and is not a tinygpt run; choose an empty or new"
            " folder, or pass --force to train into it anyway"
        )

    def _has_run_files(self) -> bool:
        """A run, or what an attempt killed early left of one (its first files)."""
        return any((self.path / n).exists() for n in (CONFIG, METRICS, INFO, LOG, CHECKPOINTS))

    def remove_leftovers(self) -> list[Path]:
        """Remove what killed writes left behind: hidden temporary and superseded files and
        checkpoint folders (`.NAME.tmp-PID`, `.NAME.old-PID`) of processes that are gone."""
        return [*remove_leftovers_in(self.path), *remove_leftovers_in(self.checkpoints_dir)]

    # ----------------------------------------------------------------- config and tokenizer

    def read_config(self) -> RunConfig:
        return RunConfig.from_toml(self.require().config_path)

    def write_config(self, config: RunConfig) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.config_path, config.to_toml())

    def write_tokenizer(self, tokenizer_file: Path) -> None:
        """Copy a `tokenizer.json` byte for byte, so its hash stays the dataset's."""
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_copy(tokenizer_file, self.tokenizer_path)

    # ------------------------------------------------------------- provenance and summary

    def read_info(self) -> dict[str, Any]:
        return _read_json(self.path / INFO) or {}

    def write_info(self, info: dict[str, Any], *, resumed: bool = False) -> None:
        """Write run.json; on a resumption keep how the run started and note this one. A
        fresh start forgets the adapter of a LoRA run that was in the folder before."""
        if not resumed:
            self.adapter_path.unlink(missing_ok=True)
        old = self.read_info() if resumed else {}
        if old:
            old.setdefault("resumed", []).append(
                {k: info.get(k) for k in ("started", "command", "git_commit", "resumed_from")}
            )
            info = old
        atomic_write_json(self.path / INFO, info)

    def dataset(self) -> dict[str, Any]:
        """The record of the dataset the run was trained on (empty when unknown)."""
        return dict(self.read_info().get("dataset") or {})

    def dataset_dir(self) -> Path | None:
        path = self.dataset().get("path")
        return Path(path) if path else None

    def finetune_record(self) -> dict[str, Any] | None:
        """Where a fine-tuned run started (run.json's "finetune": the base's path and
        checkpoint, hashes of its weights and tokenizer, the template, the data format);
        None for a run that was not fine-tuned."""
        value = self.read_info().get("finetune")
        return dict(value) if isinstance(value, dict) else None

    def is_lora(self) -> bool:
        """Whether the run is a LoRA fine-tune: its checkpoints hold an adapter, not a model."""
        return self.adapter_path.is_file()

    def read_adapter(self) -> dict[str, Any] | None:
        """adapter.json (what the adapter is and where its base is; `tinygpt.infer.loader`)."""
        return _read_json(self.adapter_path)

    def write_adapter(self, record: dict[str, Any]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.adapter_path, record)

    def read_summary(self) -> dict[str, Any] | None:
        return _read_json(self.path / SUMMARY)

    def write_summary(self, summary: dict[str, Any]) -> None:
        atomic_write_json(self.path / SUMMARY, summary)

    # ---------------------------------------------------------------------------- metrics

    def open_metrics(self, *, after_step: int | None = None) -> MetricsWriter:
        """A writer that appends rows to metrics.csv.

        A fresh run (`after_step` None) starts the file anew: rows left by an attempt that
        never reached a checkpoint go. A resumed run keeps the rows up to its checkpoint's
        step and drops later ones, which it is about to log again.
        """
        path = self.metrics_path
        self.path.mkdir(parents=True, exist_ok=True)
        if after_step is None:
            path.unlink(missing_ok=True)
        elif path.is_file():
            with open(path, newline="", encoding="utf-8") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= after_step]
            buffer = io.StringIO()
            writer = csv.DictWriter(buffer, fieldnames=METRICS_FIELDS, lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
            atomic_write_text(path, buffer.getvalue())
        return MetricsWriter(path)

    def read_metrics(self) -> dict[str, list[float]]:
        """Columns of metrics.csv as floats (`step` too); an empty cell becomes nan."""
        path = self.metrics_path
        if not path.is_file():
            raise TinyGPTError(
                f"{path} does not exist; is {self.path} a run folder that has trained?"
            )
        cols: dict[str, list[float]] = {k: [] for k in METRICS_FIELDS}
        try:
            with open(path, newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f)
                for row in reader:
                    for key, values in cols.items():
                        cell = row.get(key) or ""
                        values.append(float(cell) if cell else math.nan)
                    step = cols["step"][-1]
                    if not math.isfinite(step) or step != int(step):
                        raise ValueError(f"step {row.get('step')!r} is not a step number")
        except (ValueError, TypeError, UnicodeDecodeError, csv.Error) as exc:
            line = getattr(reader, "line_num", "?") if "reader" in locals() else "?"
            raise TinyGPTError(
                f"{path} is damaged at line {line} ({type(exc).__name__}: {str(exc)[:80]});"
                " it is written by training: delete the bad lines, or train the run again"
            ) from None
        return cols

    def has_metrics(self) -> bool:
        return self.metrics_path.is_file()

    # ------------------------------------------------------------------- samples and eval

    def write_sample(self, label: str, text: str) -> Path:
        self.samples_dir.mkdir(parents=True, exist_ok=True)
        return atomic_write_text(self.samples_dir / f"{label}.txt", text)

    def newest_sample(self) -> tuple[str, str] | None:
        """(relative path, text) of the most recently written sample, if any."""
        if not self.samples_dir.is_dir():
            return None
        files = list(self.samples_dir.glob("*.txt"))
        if not files:
            return None
        newest = max(files, key=lambda p: (p.stat().st_mtime_ns, p.name))
        return f"{SAMPLES}/{newest.name}", newest.read_text(encoding="utf-8")

    def eval_file(self, name: str) -> Path:
        return self.eval_dir / name

    def write_eval(self, name: str, obj: Any) -> Path:
        return atomic_write_json(self.eval_file(name), obj)

    def read_eval(self, name: str) -> dict[str, Any] | None:
        return _read_json(self.eval_file(name))

    def plots(self) -> list[str]:
        return [name for name in PLOTS if (self.path / name).is_file()]

    # ------------------------------------------------------------------------- checkpoints

    def checkpoints(self) -> list[Path]:
        """Complete checkpoint folders, oldest first."""
        folder = self.checkpoints_dir
        if not folder.is_dir():
            return []
        found = [
            p for p in folder.iterdir() if p.is_dir() and _STEP_DIR.match(p.name) and is_complete(p)
        ]
        return sorted(found, key=lambda p: _step_of(p.name))

    def pointer(self, name: str) -> Path | None:
        """The checkpoint the pointer file `latest` or `best` names, if it is complete."""
        file = self.checkpoints_dir / name
        if not file.is_file():
            return None
        try:
            text = file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):
            return None
        if not _STEP_DIR.match(text):  # only a checkpoint folder of this run, nothing else
            return None
        target = self.checkpoints_dir / text
        return target if is_complete(target) else None

    def verified(self, folder: Path, names: tuple[str, ...] | None = None) -> dict[str, Any]:
        """The state of checkpoint `folder` once its files (`names`, or all) match what was
        saved; a damaged one is refused with the newest earlier checkpoint that verifies."""
        try:
            return verify(folder, names)
        except DamagedCheckpoint as exc:
            step = _step_of(folder.name)
            good = None
            for earlier in reversed(self.checkpoints()):
                if _step_of(earlier.name) >= step:
                    continue
                try:
                    verify(earlier)
                except DamagedCheckpoint:
                    continue
                good = earlier
                break
            advice = (
                f"the previous good checkpoint is {good.name}: use --checkpoint {good.name},"
                f" or move {folder} out of the run to resume from it"
                if good
                else "no earlier checkpoint of this run is intact"
            )
            raise TinyGPTError(f"{exc}; {advice}") from None

    def resolve_checkpoint(self, which: str = "best") -> Path:
        """`best`, `latest` or `step-N` (N with or without zero padding) → checkpoint folder."""
        self.require()
        available = self.checkpoints()
        if not available:
            raise TinyGPTError(f"{self.path} has no complete checkpoint yet; train it first")
        if which in ("best", "latest"):
            found = self.pointer(which) or (available[-1] if which == "latest" else None)
            if found is None:  # no best yet (no evaluation ran): fall back to the newest
                found = self.pointer("latest") or available[-1]
            return found
        m = re.fullmatch(r"step-?(\d+)", which)
        if m:
            path = self.checkpoints_dir / step_name(int(m.group(1)))
            if path in available:
                return path
        names = ", ".join(p.name for p in available)
        raise TinyGPTError(
            f"no checkpoint {which!r} in {self.path}; use best, latest or one of: {names}"
        )

    def point_at(self, checkpoint: Path, *, is_best: bool = False) -> None:
        """Point `latest` (and, if `is_best`, `best`) at the complete `checkpoint` folder."""
        try:
            atomic_write_text(self.checkpoints_dir / "latest", checkpoint.name + "\n")
            if is_best:
                atomic_write_text(self.checkpoints_dir / "best", checkpoint.name + "\n")
        except OSError as exc:
            raise write_error(exc, checkpoint, "the checkpoint itself is complete.") from None

    def rotate(self, keep_last: int) -> None:
        """Delete the step folders older than the newest `keep_last`, never the ones `best`
        or `latest` point at."""
        protected = {p for p in (self.pointer("best"), self.pointer("latest")) if p}
        steps = self.checkpoints()
        for old in steps[: max(0, len(steps) - keep_last)]:
            if old not in protected:
                discard(old)

    # ------------------------------------------------------------------------------- log

    def attach_log(self, logger: logging.Logger) -> logging.Handler:
        """Send `logger`'s records to train.log (replacing an earlier run's file handler)."""
        handler = logging.FileHandler(self.log_path, encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        for old in [h for h in logger.handlers if isinstance(h, logging.FileHandler)]:
            logger.removeHandler(old)
            old.close()
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        return handler


class MetricsWriter:
    """Appends rows to metrics.csv, each flushed as it is written (a killed run keeps every
    row it logged). Floats are written with `repr`, which reads back to the same float."""

    def __init__(self, path: Path) -> None:
        new = not path.is_file()
        self.file = open(path, "a", newline="", encoding="utf-8")  # noqa: SIM115 - closed by close()
        self.writer = csv.DictWriter(self.file, fieldnames=METRICS_FIELDS, lineterminator="\n")
        if new:
            self.writer.writeheader()
            self.file.flush()

    def row(self, row: dict[str, Any]) -> None:
        self.writer.writerow({k: _cell(row.get(k)) for k in METRICS_FIELDS})
        self.file.flush()

    def close(self) -> None:
        if not self.file.closed:
            self.file.close()


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)  # shortest text that reads back to the same float: exact
    return str(value)
