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
    "sample",
    "eval",
    "report",
    "plot",
    "attention",
]


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
