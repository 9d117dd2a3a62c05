"""report: every section renders, and its numbers are those of metrics.csv, summary.json and
the evaluation results."""

from __future__ import annotations

import base64
import csv
import json
import re

import pytest

from tinygpt.cli import main
from tinygpt.core.errors import TinyGPTError
from tinygpt.core.info import param_breakdown
from tinygpt.core.model import GPTConfig
from tinygpt.export.report import collect, fmt, write_report

TEXT = "ROMEO:\nBut soft, what light through yonder window breaks?\n\n" * 40


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("reportrun")
    txt = root / "text.txt"
    txt.write_text(TEXT, encoding="utf-8")
    data, run = root / "data", root / "run"
    assert main(["prepare", "--input", str(txt), "--tokenizer", "char", "--out", str(data)]) == 0
    args = ["train", "--data", str(data), "--out", str(run), "--max-steps", "6"]
    args += ["--preset", "one-layer", "--no-progress", "--train.eval_interval", "2"]
    args += ["--train.batch_size", "4", "--model.block_size", "32", "--train.sample_tokens", "8"]
    assert main(args) == 0
    assert main(["eval", str(run), "--json"]) == 0
    return run


def _table(md: str, title: str) -> dict[str, str]:
    """The rows of the Markdown table under `## title`."""
    block = md.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in block.splitlines():
        m = re.fullmatch(r"\| (.+?) \| (.*) \|", line)
        if m and m.group(1) not in ("", "---"):
            rows[m.group(1)] = m.group(2)
    return rows


def test_report_sections_and_numbers(run, capsys):
    assert main(["report", str(run)]) == 0
    md = (run / "report.md").read_text(encoding="utf-8")
    for title in (
        "Model",
        "Parameters",
        "Data and tokenizer",
        "Training",
        "Evaluation",
        "Plots",
        "Sample",
        "Configuration",
    ):
        assert f"## {title}" in md
    summary = json.loads((run / "summary.json").read_text())
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    vals = [(int(r["step"]), float(r["val_loss_est"])) for r in rows if r["val_loss_est"]]
    best_step, best = min(vals, key=lambda sv: sv[1])

    training = _table(md, "Training")
    assert training["steps"] == fmt(summary["step"])
    assert training["tokens seen"] == fmt(summary["tokens"])
    assert training["training time (s)"] == fmt(summary["train_time_s"], 1)
    assert training["throughput (tokens/s)"] == fmt(summary["tokens_per_s"], 1)
    assert training["final val_loss (full split)"] == fmt(summary["val_loss"])
    assert training["last train loss"] == fmt(float(rows[-1]["train_loss"]))
    assert training["best val_loss_est"] == f"{fmt(best)} (step {best_step})"

    results = json.loads((run / "eval" / "results.json").read_text())
    evaluation = _table(md, "Evaluation")
    assert evaluation["bits per byte"] == fmt(results["val_bpb"])
    assert evaluation["loss (nats/token)"] == fmt(results["val_loss"])
    assert evaluation["scored tokens"] == fmt(results["tokens"])

    cfg = collect(run)["config"]["model"]
    params = _table(md, "Parameters")
    assert params["total"] == fmt(param_breakdown(GPTConfig(**cfg))["total"])

    data = _table(md, "Data and tokenizer")
    meta = json.loads((run.parent / "data" / "meta.json").read_text())
    assert fmt(meta["splits"]["train"]["tokens"]) in data["train split"]
    assert data["special tokens"] == r"<\|endoftext\|> = " + str(meta["vocab_size"] - 1)

    page = (run / "report.html").read_text(encoding="utf-8")
    assert "<h2>Evaluation</h2>" in page and fmt(results["val_bpb"]) in page
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == 2  # loss.png and stats.png
    assert all(base64.b64decode(b)[:4] == b"\x89PNG" for b in images)
    assert 'src="loss.png"' not in page  # self-contained


def test_report_says_the_head_is_tied_and_scores_their_scale(run, capsys):
    assert main(["eval", str(run), "--no-loss", "--make-prompts", "4,4", "--num-prompts", "3"]) == 0
    capsys.readouterr()
    assert main(["report", str(run), "--no-plots"]) == 0
    md = (run / "report.md").read_text(encoding="utf-8")
    assert (
        _table(md, "Parameters")["LM head"]
        == "tied to the token embedding (no parameters of its own)"
    )
    quality = _table(md, "Generation quality")
    assert {"BLEU (sacrebleu, 0–100)", "chrF (sacrebleu, 0–100)"} <= set(quality)


def test_report_without_eval_or_matplotlib_files(run, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.toml").write_text((run / "config.toml").read_text())
    md, page = write_report(bare)
    text = md.read_text()
    assert "## Parameters" in text and "## Evaluation" not in text and "## Plots" not in text
    assert page.is_file()


def test_report_errors(tmp_path, capsys):
    with pytest.raises(TinyGPTError, match="not a run folder"):
        collect(tmp_path)
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
