#!/usr/bin/env bash
# Installs everything the test suite needs into ./.venv (created if missing) and runs it; the napari
# tests need an X server, so without a display this runs pytest under Xvfb (installing the Debian
# packages for it when run as root and they are missing).
# Usage: bash scripts/run_tests.sh [pytest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[test]'
export HF_HUB_OFFLINE=1   # nothing may download, ever
XVFB_PACKAGES="xvfb xauth libxcb-icccm4 libxcb-keysyms1 libxcb-xinerama0 libxcb-xinput0 libxcb-cursor0
  libxkbcommon-x11-0 libgl1-mesa-dri libegl1 libdbus-1-3"
if [ -z "${DISPLAY:-}" ]; then
    if ! command -v xvfb-run >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "installing Xvfb for the napari tests (apt-get)"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $XVFB_PACKAGES >/dev/null
    fi
    if command -v xvfb-run >/dev/null; then
        exec xvfb-run -a -s "-screen 0 1600x1200x24" .venv/bin/python -m pytest "$@"
    fi
    echo "no display and no xvfb-run: the napari tests will be skipped" >&2
fi
exec .venv/bin/python -m pytest "$@"
