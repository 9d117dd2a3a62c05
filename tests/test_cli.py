"""The command line as a whole: entry points, --help everywhere, the generated reference."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tinygpt.cli import build_parser, main, reference_markdown

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = [
    "corpus",
    "tokenizer",
    "prepare",
    "info",
    "train",
    "merge",
    "sample",
    "eval",
    "report",
    "plot",
    "attention",
    "export",
    "import",
    "push",
    "serve",
]


@pytest.mark.parametrize("argv", [["--help"], ["corpus", "list"], ["tokenizer", "--help"]])
def test_building_the_parser_and_light_commands_do_not_import_torch(argv):
    """The test session has imported torch, so a fresh interpreter checks sys.modules."""
    code = (
        "import sys\n"
        "from tinygpt.cli import main\n"
        "try:\n"
        f"    main({argv!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        "sys.stdout.flush()\n"
        "print('TORCH', 'torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "TORCH False"


def test_every_canonical_command_exists():
    sub = next(
        a
        for a in build_parser()._actions
        if hasattr(a, "choices") and a.choices and "train" in a.choices
    )
    assert set(COMMANDS) <= set(sub.choices)


@pytest.mark.parametrize("command", COMMANDS)
def test_help_on_every_command(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    assert f"usage: tinygpt {command}" in capsys.readouterr().out


def test_python_dash_m_and_version():
    out = subprocess.run(
        [sys.executable, "-m", "tinygpt", "--version"], capture_output=True, text=True, check=True
    ).stdout
    assert out.startswith("tinygpt ")


def test_no_command_prints_help_and_exits_2(capsys):
    assert main([]) == 2
    assert "usage: tinygpt" in capsys.readouterr().out


def test_cli_reference_is_current():
    current = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    assert current == reference_markdown(), (
        "docs/cli.md is stale: run `python -m tinygpt.cli --write-reference docs/cli.md`"
    )


def test_usage_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--max-steps", "many"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("tinygpt train: error: argument --max-steps") and "--help" in err


def test_the_quick_exit_loses_nothing(tmp_path):
    """`python -m tinygpt` ends with os._exit after flushing (skipping torch's slow
    interpreter teardown): output, exit codes and every file of a run must be complete."""
    text = tmp_path / "t.txt"
    text.write_text("to be or not to be, that is the question\n" * 200, encoding="utf-8")
    env = {**__import__("os").environ, "TINYGPT_CACHE": str(tmp_path / "cache")}

    def run(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "tinygpt", *argv], capture_output=True, text=True, env=env
        )

    data, out = tmp_path / "data", tmp_path / "run"
    assert (
        run("prepare", "--input", str(text), "--tokenizer", "char", "--out", str(data)).returncode
        == 0
    )
    tiny = ["--preset", "one-layer", "--model.n_embd", "16", "--model.n_head", "2",
            "--model.block_size", "16", "--train.batch_size", "4", "--train.sample_tokens", "10",
            "--train.log_interval", "1"]  # fmt: skip
    proc = run(
        "train", "--data", str(data), "--out", str(out), "--max-steps", "3", "--no-progress", *tiny
    )
    assert proc.returncode == 0, proc.stderr
    assert "val_loss" in proc.stdout and "--- sample ---" in proc.stdout
    summary = __import__("json").loads((out / "summary.json").read_text())
    assert summary["step"] == 3
    assert "done: step 3" in (out / "train.log").read_text()  # the log was flushed
    assert (out / "metrics.csv").read_text().count("\n") == 4  # header + 3 steps
    bad = run("train", "--data", str(data), "--out", str(out), "--max-steps", "3")
    assert bad.returncode == 2 and bad.stderr.startswith("tinygpt: error:")  # run exists
    usage = run("train", "--max-stepz", "3")
    assert usage.returncode == 2 and "tinygpt: error:" in usage.stderr
    helped = run("--help")
    assert helped.returncode == 0 and helped.stdout.startswith("usage: tinygpt")


@pytest.mark.parametrize(
    "command", ["train", "finetune", "sample", "chat", "eval", "export", "serve"]
)
def test_every_command_that_runs_a_model_takes_threads(command):
    """--threads on every command that runs a model (torch's CPU threads; onnxruntime's for
    an ONNX folder)."""
    parser = build_parser()
    positional = {
        "train": [],
        "finetune": ["BASE", "--out", "o"],
        "export": ["RUN", "--format", "hf", "--out", "o"],
    }
    args, _ = parser.parse_known_args(
        [command, *positional.get(command, ["RUN"]), "--threads", "1"]
    )
    assert args.threads == 1
