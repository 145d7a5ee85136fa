#!/usr/bin/env bash
# Set up on a fresh machine (Python 3.11 + pip): Debian's chromium for PNG plots where apt is
# available (elsewhere PNGs come from matplotlib), then a virtual environment with the package.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v chromium >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1; then
    sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo -n"
    { $sudo apt-get update -qq && $sudo apt-get install -y -qq chromium >/dev/null; } \
      || echo "setup: could not install chromium; PNG plots will be drawn with matplotlib"
  else
    echo "setup: no apt-get; PNG plots will be drawn with matplotlib"
  fi
fi

python=${PYTHON:-python3.11}
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/pip install --quiet --disable-pip-version-check -e '.[dev]' 2> >(grep -v "is ignored: it is neither" >&2)
echo "setup: done (.venv)"
