"""The run folder: one owner of every file name and format, and run folders written by
earlier versions of tinygpt still read by every command."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import pytest

from tinygpt.cli import main
from tinygpt.core.errors import TinyGPTError
from tinygpt.core.run import METRICS_FIELDS, RunDir

FIXTURE = Path(__file__).parent / "fixtures" / "run-format1"


def test_metrics_written_then_read_back_exactly(tmp_path):
    run = RunDir(tmp_path / "r")
    writer = run.open_metrics()
    rows = [
        {"step": 1, "tokens": 64, "time_s": 0.5, "train_loss": 3.0774056911468506, "lr": 3e-05},
        {"step": 2, "tokens": 128, "train_loss": 1 / 3, "val_loss_est": 2.5, "grad_norm": 0.1},
    ]
    for row in rows:
        writer.row(row)
    writer.close()
    with open(run.metrics_path, newline="") as f:
        assert next(csv.reader(f)) == METRICS_FIELDS
    cols = run.read_metrics()
    assert cols["step"] == [1.0, 2.0] and cols["train_loss"] == [3.0774056911468506, 1 / 3]
    assert math.isnan(cols["val_loss_est"][0]) and cols["val_loss_est"][1] == 2.5
    # resuming after step 1 keeps row 1 and drops row 2, which will be logged again
    run.open_metrics(after_step=1).close()
    assert run.read_metrics()["step"] == [1.0]
    # a fresh run starts the file anew
    run.open_metrics().close()
    assert run.read_metrics()["step"] == []


def test_the_dataset_is_recorded_once_in_run_json(tmp_path):
    run = RunDir(tmp_path / "r")
    run.path.mkdir()
    run.write_info({"dataset": {"path": "/data/x", "key": "k"}, "started": "t0", "command": ["a"]})
    assert run.dataset_dir() == Path("/data/x")
    run.write_info({"dataset": {"path": "/other"}, "started": "t1", "command": ["b"]}, resumed=True)
    info = run.read_info()
    assert info["dataset"]["path"] == "/data/x"  # how the run started is kept
    assert [r["started"] for r in info["resumed"]] == ["t1"]


def test_not_a_run(tmp_path):
    with pytest.raises(TinyGPTError, match="is not a run folder: it does not exist"):
        RunDir(tmp_path / "nope").require()
    with pytest.raises(TinyGPTError, match="is not a run folder .no config.toml"):
        RunDir(tmp_path).require()


def test_every_file_of_a_trained_run_is_named_by_run_py():
    """No other module spells the run folder's file names."""
    import tinygpt

    names = ['"config.toml"', '"metrics.csv"', '"summary.json"', '"run.json"', '"train.log"']
    package = Path(tinygpt.__file__).parent
    for path in package.rglob("*.py"):
        if path.name == "run.py":
            continue
        text = path.read_text(encoding="utf-8")
        for name in names:
            assert name not in text, f"{path.relative_to(package)} spells {name}"


@pytest.fixture
def old_run(tmp_path):
    """A run folder and its dataset written by tinygpt before the run folder had one owner
    (format 1: the dataset recorded in both config.toml and run.json, at a path that no
    longer exists)."""
    shutil.copytree(FIXTURE, tmp_path / "old")
    return tmp_path / "old" / "run", tmp_path / "old" / "data"


def test_an_old_run_folder_still_evaluates_samples_and_reports(old_run, capsys):
    run, data = old_run
    assert main(["eval", str(run)]) == 2
    err = capsys.readouterr().err
    assert (
        "the dataset the run was trained on (/nonexistent/tinygpt-fixture/data) is gone" in err
        and "--data" in err
    )
    assert main(["eval", str(run), "--data", str(data), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["step"] == 6 and result["checkpoint"] == "step-000006"
    assert math.isfinite(result["val_loss"]) and result["tokens"] == 945
    assert (
        main(["sample", str(run), "--prompt", "to ", "--max-new-tokens", "5", "--seed", "1"]) == 0
    )
    assert capsys.readouterr().out.startswith("to ")
    assert main(["report", str(run), "--no-plots"]) == 0
    assert (
        "val_loss" in (run / "report.md").read_text() or "3.05" in (run / "report.md").read_text()
    )
    assert main(["info", str(run)]) == 0


def test_an_old_run_folder_resumes(old_run, capsys):
    run, data = old_run
    argv = ["train", "--out", str(run), "--resume", "--max-steps", "8", "--no-progress"]
    assert main(argv) == 2
    assert (
        "(/nonexistent/tinygpt-fixture/data) is gone; give its new place with --data DIR"
        in capsys.readouterr().err
    )
    assert main([*argv, "--data", str(data)]) == 0
    with open(run / "metrics.csv", newline="") as f:
        steps = [int(r["step"]) for r in csv.DictReader(f)]
    assert steps == list(range(1, 9))  # rows 1-6 kept, 7-8 added
    info = json.loads((run / "run.json").read_text())
    assert info["resumed"][0]["resumed_from"] == "step-000006"
    assert RunDir(run).resolve_checkpoint("latest").name == "step-000008"
