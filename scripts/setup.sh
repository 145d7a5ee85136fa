#!/usr/bin/env bash
# Set up on a fresh machine (Python 3.11 + pip): Debian's chromium for PNG plots where apt is
# available (elsewhere PNGs come from matplotlib), then a virtual environment with the package.
# --test also installs PostgreSQL, which the multi-machine worker tests start on loopback, and
# starts a single-node SLURM (scripts/setup_slurm.sh, needs root or sudo) for the cluster tests.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=()
command -v chromium >/dev/null 2>&1 || packages+=(chromium)
if [ "${1:-}" = "--test" ] && ! command -v initdb >/dev/null 2>&1 \
    && ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
  packages+=(postgresql)
fi
if [ ${#packages[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null 2>&1; then
    sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo -n"
    { $sudo apt-get update -qq && $sudo apt-get install -y -qq "${packages[@]}" >/dev/null; } \
      || echo "setup: could not install ${packages[*]}: PNG plots fall back to matplotlib," \
              "PostgreSQL tests skip"
  else
    echo "setup: no apt-get for ${packages[*]}: PNG plots fall back to matplotlib," \
         "PostgreSQL tests skip"
  fi
fi

if [ "${1:-}" = "--test" ]; then
  bash scripts/setup_slurm.sh || echo "setup: no single-node SLURM: the SLURM tests skip"
fi

python=${PYTHON:-python3.11}
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/pip install --quiet --disable-pip-version-check -e '.[dev]' 2> >(grep -v "is ignored: it is neither" >&2)
echo "setup: done (.venv)"
