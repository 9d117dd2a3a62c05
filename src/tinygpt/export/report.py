"""The run report: one page that says what a run was and how it went.

`collect(run_dir)` gathers every number once — resolved config, parameter breakdown
(`tinygpt.core.info`), dataset and tokenizer summary (the dataset's `meta.json`), training time,
tokens, throughput and losses (`summary.json`, `metrics.csv`), evaluation results
(`eval/results.json` and `eval/scores.json`, written by `tinygpt eval`), the newest sample
and the plots. `render_markdown` and `render_html` then lay the same data out twice, so the
two files cannot disagree; the HTML embeds the PNGs as base64 and needs no other file.

It knows nothing about how runs are trained or evaluated; it only reads their files.
"""

from __future__ import annotations

import base64
import contextlib
import html
import math
from pathlib import Path
from typing import Any

from tinygpt.core.files import atomic_write_text
from tinygpt.core.info import param_breakdown
from tinygpt.core.run import REPORT_HTML, REPORT_MD, RunDir
from tinygpt.data.prepare import read_meta
from tinygpt.data.tokenizer import file_hash
from tinygpt.infer.loader import load_tokenizer, locate_base, read_adapter_record
from tinygpt.train.plots import plot_run


def _known(value: float) -> float | None:
    return None if math.isnan(value) else value


def collect(run_dir: str | Path) -> dict[str, Any]:
    """Everything the report shows, as plain data (numbers unrounded)."""
    run = RunDir(run_dir).require()
    config = run.read_config()
    run_info = run.read_info()
    adapter = None
    if run.is_lora():  # its model is base + adapter: a base that moved or changed is refused
        locate_base(run)
        adapter = read_adapter_record(run)
    summary = run.read_summary()
    cols = run.read_metrics() if run.has_metrics() else None

    training: dict[str, Any] = {}
    if cols and cols["step"]:
        steps = [int(s) for s in cols["step"]]
        vals = [(s, v) for s, v in zip(steps, cols["val_loss_est"]) if not math.isnan(v)]
        best = min(vals, key=lambda sv: sv[1]) if vals else None
        training = {
            "logged_rows": len(steps),
            "last_step": steps[-1],
            "last_train_loss": _known(cols["train_loss"][-1]),
            "last_lr": _known(cols["lr"][-1]),
            "last_tokens_per_s": _known(cols["tokens_per_s"][-1]),
            "best_val_loss_est": best[1] if best else None,
            "best_val_step": best[0] if best else None,
            "final_val_loss_est": vals[-1][1] if vals else None,
        }

    dataset = run.dataset()
    meta = None
    if dataset.get("path"):
        meta = read_meta(Path(dataset["path"]))
    data_summary: dict[str, Any] = {
        "path": dataset.get("path"),
        "source": dataset.get("source"),
        "tokenizer_hash": dataset.get("tokenizer_hash"),
    }
    if meta:
        data_summary["splits"] = meta.get("splits")
        data_summary["cleaning"] = meta.get("cleaning")
        splits = meta.get("splits") or {}
        for split in splits.values():
            if isinstance(split, dict) and split.get("tokens"):
                split["bytes_per_token"] = split.get("bytes", 0) / split["tokens"]

    tokenizer = _tokenizer_summary(run)
    newest = run.newest_sample()
    sample = {"file": newest[0], "text": newest[1]} if newest else None

    return {
        "run": run.name,
        "run_dir": str(run.path),
        "config": config.to_dict(),
        "config_toml": run.config_path.read_text(encoding="utf-8"),
        "params": param_breakdown(config.model),
        "provenance": {
            k: run_info.get(k)
            for k in ("tinygpt", "torch", "git_commit", "started", "device", "precision")
            if k in run_info
        },
        "data": data_summary,
        "tokenizer": tokenizer,
        "finetune": run.finetune_record(),
        "lora": adapter,
        "merged": run_info.get("merged"),
        "summary": summary,
        "training": training,
        "eval": run.read_eval("results.json"),
        "scores": run.read_eval("scores.json"),
        "sample": sample,
        "plots": run.plots(),
    }


def _tokenizer_summary(run: RunDir) -> dict[str, Any] | None:
    path = run.tokenizer_path
    if not path.is_file():
        return None
    tok = load_tokenizer(run)
    return {
        "kind": tok.kind,
        "vocab_size": tok.vocab_size,
        "special_tokens": dict(tok.special_tokens),
        "hash": file_hash(path),
    }


# ------------------------------------------------------------------------------ layout


def fmt(value: Any, digits: int = 4) -> str:
    """Numbers as the report prints them: floats to `digits` decimals, ints with commas.

    >>> fmt(1.234567), fmt(1234567), fmt(None), fmt(float("nan"))
    ('1.2346', '1,234,567', '–', 'nan')
    """
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        return f"{value:.{digits}f}"
    return str(value)


Section = tuple[str, list[tuple[str, str]]]


def sections(data: dict[str, Any]) -> list[Section]:
    """(title, [(name, value text)]) tables shared by the Markdown and HTML layouts."""
    found = [
        _model_section(data),
        _parameters_section(data),
        _data_section(data),
        _finetune_section(data),
        _lora_section(data),
        _training_section(data),
        _eval_section(data),
        _scores_section(data),
    ]
    return [section for section in found if section is not None]


def _model_section(data: dict[str, Any]) -> Section:
    m = data["config"]["model"]
    return (
        "Model",
        [
            ("layers × heads × width", f"{m['n_layer']} × {m['n_head']} × {m['n_embd']}"),
            ("key/value heads", fmt(m["n_kv_head"] or m["n_head"])),
            ("context (block_size)", fmt(m["block_size"])),
            ("vocabulary", fmt(m["vocab_size"])),
            ("positions, norm, MLP", f"{m['pos']}, {m['norm']}, {m['mlp']}"),
            ("tied head", fmt(m["tie_weights"])),
        ],
    )


def _parameters_section(data: dict[str, Any]) -> Section:
    m = data["config"]["model"]
    p = data["params"]
    pb = p["per_block"]
    return (
        "Parameters",
        [
            ("token embedding", fmt(p["token_embedding"])),
            ("position embedding", fmt(p["position_embedding"])),
            ("per block: attention", fmt(pb["attention"])),
            ("per block: MLP", fmt(pb["mlp"])),
            ("per block: norms", fmt(pb["norms"])),
            (f"{m['n_layer']} blocks", fmt(p["blocks"])),
            ("final norm", fmt(p["final_norm"])),
            (
                "LM head",
                "tied to the token embedding (no parameters of its own)"
                if m["tie_weights"]
                else fmt(p["lm_head"]),
            ),
            ("total", fmt(p["total"])),
            ("non-embedding", fmt(p["non_embedding"])),
        ],
    )


def _data_section(data: dict[str, Any]) -> Section:
    rows = [("dataset", fmt(data["data"].get("path"))), ("source", fmt(data["data"].get("source")))]
    for name, split in (data["data"].get("splits") or {}).items():
        if isinstance(split, dict) and "examples" in split:  # fine-tuning examples
            rows.append(
                (
                    f"{name} split",
                    f"{fmt(split.get('examples'))} examples, {fmt(split.get('tokens'))} tokens,"
                    f" {fmt(split.get('scored'))} scored",
                )
            )
        elif isinstance(split, dict):
            rows.append(
                (
                    f"{name} split",
                    f"{fmt(split.get('tokens'))} tokens, {fmt(split.get('bytes'))} bytes,"
                    f" {fmt(split.get('documents'))} documents,"
                    f" {fmt(split.get('bytes_per_token'), 3)} bytes/token",
                )
            )
    tok = data["tokenizer"]
    if tok:
        rows.append(("tokenizer", f"{tok['kind']}, {fmt(tok['vocab_size'])} ids"))
        rows.append(
            ("special tokens", ", ".join(f"{k} = {v}" for k, v in tok["special_tokens"].items()))
        )
        rows.append(("tokenizer sha256", tok["hash"][:16] + "…"))
    return ("Data and tokenizer", rows)


def _finetune_section(data: dict[str, Any]) -> Section | None:
    ft = data.get("finetune")
    if not ft:
        return None
    return (
        "Fine-tuned from",
        [
            ("base", f"{ft.get('base')} ({ft.get('base_kind')}, {ft.get('checkpoint')})"),
            ("base weights sha256", str(ft.get("weights_sha256", ""))[:16] + "…"),
            ("data format", fmt(ft.get("format"))),
            ("chat template", fmt(ft.get("template"))),
            ("scored", "every token" if ft.get("train_on_prompt") else "assistant turns"),
            ("held-out loss before", fmt(ft.get("val_loss_before"))),
        ],
    )


def _lora_section(data: dict[str, Any]) -> Section | None:
    """The adapter of a LoRA run, or of the run a merged copy was made from."""
    lora = data.get("lora") or (data.get("merged") or {}).get("adapter")
    if not lora:
        return None
    rows_note = (
        f", rows {fmt(lora.get('rows_from'))}+ of the embedding"
        if lora.get("rows_from") != data["config"]["model"]["vocab_size"]
        else ""
    )
    merged = data.get("merged")
    return (
        "LoRA",
        [
            (
                "adapters",
                f"rank {lora.get('rank')}, alpha {lora.get('alpha')}, dropout"
                f" {lora.get('dropout')} on {', '.join(lora.get('targets') or [])}"
                f"{rows_note}",
            ),
            (
                "trainable parameters",
                f"{fmt(lora.get('trainable_parameters'))} of {fmt(lora.get('total_parameters'))}",
            ),
            (
                "base",
                f"{lora['base']['run']} ({lora['base']['checkpoint']}), weights sha256"
                f" {str(lora['base']['weights_sha256'])[:16]}…",
            ),
            (
                "stored as",
                f"merged from {merged.get('from')} ({merged.get('checkpoint')})"
                if merged
                else "the adapter; every reader adds the base",
            ),
        ],
    )


def _training_section(data: dict[str, Any]) -> Section:
    s = data["summary"] or {}
    t = data["training"]
    return (
        "Training",
        [
            ("steps", fmt(s.get("step", t.get("last_step")))),
            ("tokens seen", fmt(s.get("tokens"))),
            ("training time (s)", fmt(s.get("train_time_s"), 1)),
            ("final full evaluation (s)", fmt(s.get("final_eval_s"), 1)),
            ("throughput (tokens/s)", fmt(s.get("tokens_per_s"), 1)),
            ("device, precision", f"{fmt(s.get('device'))}, {fmt(s.get('precision'))}"),
            ("stopped by", fmt(s.get("stopped"))),
            ("last train loss", fmt(t.get("last_train_loss"))),
            (
                "best val_loss_est",
                f"{fmt(t.get('best_val_loss_est'))} (step {fmt(t.get('best_val_step'))})",
            ),
            ("final val_loss (full split)", fmt(s.get("val_loss"))),
            ("validation tokens", fmt(s.get("val_tokens"))),
        ],
    )


def _eval_section(data: dict[str, Any]) -> Section | None:
    e = data["eval"]
    if not e:
        return None
    rows = [
        ("checkpoint", f"{e.get('checkpoint')} (step {fmt(e.get('step'))})"),
        ("text", fmt(e.get("data"))),
        ("loss (nats/token)", fmt(e.get("val_loss"))),
        ("perplexity", fmt(e.get("val_ppl"), 3)),
        ("bits per byte", fmt(e.get("val_bpb"))),
        ("scored tokens", fmt(e.get("tokens"))),
        ("their bytes", fmt(e.get("bytes"))),
        ("stride", fmt(e.get("stride"))),
    ]
    return ("Evaluation", rows)


def _scores_section(data: dict[str, Any]) -> Section | None:
    sc = data["scores"]
    if not sc:
        return None
    return (
        "Generation quality",
        [
            ("prompts", fmt(sc.get("prompts"))),
            ("BLEU (sacrebleu, 0–100)", fmt(sc.get("bleu"), 2)),
            ("chrF (sacrebleu, 0–100)", fmt(sc.get("chrf"), 2)),
            ("temperature", fmt(sc.get("temperature"))),
        ],
    )


def _cell(text: str) -> str:
    """A Markdown table cell: a literal `|` (as in `<|endoftext|>`) would end the cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(data: dict[str, Any]) -> str:
    lines = [f"# Run report: {data['run']}", ""]
    if data["provenance"]:
        lines += [", ".join(f"{k} {v}" for k, v in data["provenance"].items()), ""]
    for title, rows in sections(data):
        lines += [f"## {title}", "", "| | |", "|---|---|"]
        lines += [f"| {_cell(name)} | {_cell(value)} |" for name, value in rows]
        lines.append("")
    if data["plots"]:
        lines += ["## Plots", ""]
        lines += [f"![{name}]({name})" for name in data["plots"]]
        lines.append("")
    if data["sample"]:
        lines += [f"## Sample ({data['sample']['file']})", "", "```text"]
        lines += [data["sample"]["text"].replace("```", "ʼʼʼ"), "```", ""]
    lines += ["## Configuration", "", "```toml", data["config_toml"].rstrip(), "```", ""]
    return "\n".join(lines)


_CSS = (
    "body{font-family:system-ui,sans-serif;max-width:60em;margin:2em auto;padding:0 1em}"
    "table{border-collapse:collapse}td{border:1px solid #ccc;padding:.2em .6em}"
    "td:nth-child(2){font-family:monospace}pre{background:#f6f6f6;padding:.8em;overflow:auto}"
    "img{max-width:100%}"
)


def render_html(data: dict[str, Any], run_dir: str | Path) -> str:
    """The same content as `render_markdown`, self-contained (PNGs inlined as base64)."""
    esc = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>Run report: {esc(data['run'])}</title><style>{_CSS}</style></head><body>",
        f"<h1>Run report: {esc(data['run'])}</h1>",
    ]
    if data["provenance"]:
        parts.append(f"<p>{esc(', '.join(f'{k} {v}' for k, v in data['provenance'].items()))}</p>")
    for title, rows in sections(data):
        parts.append(f"<h2>{esc(title)}</h2><table>")
        parts += [f"<tr><td>{esc(n)}</td><td>{esc(v)}</td></tr>" for n, v in rows]
        parts.append("</table>")
    if data["plots"]:
        parts.append("<h2>Plots</h2>")
        for name in data["plots"]:
            b64 = base64.b64encode((Path(run_dir) / name).read_bytes()).decode("ascii")
            parts.append(f'<p><img alt="{esc(name)}" src="data:image/png;base64,{b64}"></p>')
    if data["sample"]:
        parts.append(f"<h2>Sample ({esc(data['sample']['file'])})</h2>")
        parts.append(f"<pre>{esc(data['sample']['text'])}</pre>")
    parts.append(f"<h2>Configuration</h2><pre>{esc(data['config_toml'].rstrip())}</pre>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_report(run_dir: str | Path, *, plots: bool = True) -> tuple[Path, Path]:
    """Write RUN/report.md and RUN/report.html; with `plots`, (re)draw the curves first
    when matplotlib is installed. Returns both paths."""
    run = RunDir(run_dir).require()
    if plots and run.has_metrics():
        # without matplotlib (ImportError) the report still renders, without pictures
        with contextlib.suppress(ImportError):
            plot_run(run.path)
    data = collect(run.path)
    md = atomic_write_text(run.file(REPORT_MD), render_markdown(data))
    page = atomic_write_text(run.file(REPORT_HTML), render_html(data, run.path))
    return md, page
