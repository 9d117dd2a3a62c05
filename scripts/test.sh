#!/usr/bin/env bash
# Set up a virtual environment (CPU build of torch) and run every check CI runs.
# Usage: bash scripts/test.sh [extra pytest args for the default suite]
# Every step runs even when an earlier one fails; the script fails at the end, naming them.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || exit 1
. .venv/bin/activate
failed=()
step() {
  local name=$1
  shift
  echo "== $name: $*"
  "$@" || failed+=("$name")
}
step "lint" ruff check src tests benchmarks scripts app.py
step "format" ruff format --check src tests benchmarks scripts app.py
# The import contract ([tool.importlinter] in pyproject.toml): layers, no cycles, torch-free paths.
step "imports" lint-imports
step "types" mypy
step "tests" python -m pytest -q "$@"
# The real fetch of the built-in corpora (needs the package registry only).
step "network tests" python -m pytest -q -m network
# The chat page in a real headless Chromium: Debian's chromium and chromium-driver.
if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
  step "browser test" python -m pytest -q -m browser tests/test_page.py
else
  echo "SKIPPED the browser test (tests/test_page.py, marker browser): it needs"
  echo "/usr/bin/chromium and /usr/bin/chromedriver (apt-get install -y chromium chromium-driver)"
fi
if [ ${#failed[@]} -gt 0 ]; then
  echo "FAILED steps: ${failed[*]}"
  exit 1
fi
echo "all steps passed"
