#!/usr/bin/env bash
# Create .venv and install tinygpt with its development extras.
# torch is pinned to the CPU build here; the package itself accepts any torch>=2.6.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -d .venv ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
# On this project's CI image torch==2.13.0 resolves to the CPU build; elsewhere set
# TORCH_SPEC (for example "torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu").
python -m pip install -q ${TORCH_SPEC:-"torch==2.13.0"}
python -m pip install -q -e ".[dev]"
