"""`tinygpt merge`: a LoRA run written as a plain run, its adapter folded into the weights.

The merged run needs no base: config, tokenizer, chat template, one checkpoint (the same
step, marked best and latest), the training history (metrics, summary) and a run.json that
records what was merged. Loading and folding the adapter is the run loader's
(`tinygpt.infer.loader`); this module only writes the result.
"""

from __future__ import annotations

from pathlib import Path

from tinygpt.core.checkpoint import read_state
from tinygpt.core.errors import TinyGPTError
from tinygpt.core.files import atomic_copy
from tinygpt.core.run import RunDir
from tinygpt.core.weights import save_checkpoint
from tinygpt.data.template import save_template
from tinygpt.infer.loader import adapter_hash, load_run, read_adapter_record
from tinygpt.train.session import provenance


def merge_run(
    run_dir: str | Path,
    out_dir: str | Path,
    *,
    checkpoint: str = "best",
    force: bool = False,
    command: list[str] | None = None,
) -> Path:
    """`tinygpt merge`: write LoRA run `run_dir`'s model at `checkpoint`, its adapter folded
    in, as a plain run folder `out_dir` that needs no base: config, tokenizer, chat
    template, one checkpoint (same step, marked best and latest), the training history
    (metrics, summary) and a run.json that records what was merged. Returns the checkpoint."""

    run = RunDir(run_dir).require()
    out = RunDir(out_dir)
    if not run.is_lora():
        merged = run.read_info().get("merged")
        if merged:
            raise TinyGPTError(
                f"{run.path} is already merged (from {merged.get('from')}): it holds plain"
                " weights and no adapter to fold in"
            )
        raise TinyGPTError(
            f"{run.path} is not a LoRA run (it has no adapter): its weights are plain already;"
            " merge applies to runs fine-tuned with --lora"
        )
    if out.path.resolve() == run.path.resolve() or out.path.resolve().is_relative_to(
        run.path.resolve()
    ):
        raise TinyGPTError(f"--out {out.path} is inside the LoRA run; give a new folder beside it")
    if out.path.exists() and (not out.path.is_dir() or any(out.path.iterdir())) and not force:
        raise TinyGPTError(
            f"--out {out.path} already exists and is not empty; give a new folder (or --force"
            " to write into it)"
        )
    loaded = load_run(run.path, checkpoint=checkpoint)
    ckpt = loaded.checkpoint_dir
    state = read_state(ckpt)
    out.path.mkdir(parents=True, exist_ok=True)
    out.write_config(loaded.config)
    out.write_tokenizer(run.tokenizer_path)
    if loaded.template is not None:
        save_template(out.path, loaded.template)
    if run.has_metrics():
        atomic_copy(run.metrics_path, out.metrics_path)
    summary = run.read_summary()
    if summary is not None:
        out.write_summary(summary)
    adapter = read_adapter_record(run)
    info = run.read_info()
    record = {
        "from": str(run.path.resolve()),
        "checkpoint": ckpt.name,
        "adapter": {k: v for k, v in adapter.items() if k not in ("format", "version")},
        "adapter_sha256": adapter_hash(ckpt),
    }
    fresh = provenance(command, info.get("dataset") or {}, {})
    out.write_info(
        {
            **info,
            **{k: fresh[k] for k in ("started", "command", "git_commit") if k in fresh},
            "parameters": loaded.model.num_params(),
            "merged": record,
        }
    )
    return save_checkpoint(
        out,
        int(state.get("step", 0)),
        loaded.model,
        state={"tokens": int(state.get("tokens", 0)), "merged_from": ckpt.name},
        is_best=True,
    )
