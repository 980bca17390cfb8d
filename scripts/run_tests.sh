#!/usr/bin/env bash
# Installs everything the test suite needs into ./.venv (created if missing) and runs it.
# Usage: bash scripts/run_tests.sh [pytest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[test]'
export HF_HUB_OFFLINE=1   # nothing may download, ever
exec .venv/bin/python -m pytest "$@"
