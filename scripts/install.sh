#!/usr/bin/env bash
# Install morphreg with its test tools into the active Python.
#
#   bash scripts/install.sh            the locked versions (scripts/lock.txt): what the suite last passed with
#   bash scripts/install.sh newest     the newest releases pyproject.toml allows
#   bash scripts/install.sh lowest     the lowest versions pyproject.toml claims (needs `uv`; installed if missing)
#
# MORPHREG_DEPS=newest|lowest selects the same modes. torch is always 2.13.0: on the project's machines that
# is a local CPU build, and any other torch spec would pull gigabytes of CUDA packages.
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-${MORPHREG_DEPS:-locked}}"
pip_install() { python -m pip install --quiet --disable-pip-version-check "$@"; }
torch_pin=$(mktemp)
trap 'rm -f "$torch_pin"' EXIT
echo "torch==2.13.0" > "$torch_pin"
pip_install torch==2.13.0
case "$mode" in
  locked) pip_install -c scripts/lock.txt -e ".[test]" ;;
  newest) pip_install --upgrade --upgrade-strategy eager -c "$torch_pin" -e ".[test]" ;;
  lowest)
    python -m uv --version >/dev/null 2>&1 || pip_install uv
    python -m uv pip install --quiet --python "$(command -v python)" --resolution lowest-direct \
      -c "$torch_pin" -e ".[test]" ;;
  *) echo "scripts/install.sh: unknown mode '$mode' (expected locked, newest or lowest)" >&2; exit 2 ;;
esac
echo "morphreg installed ($mode): $(python -c 'import numpy, scipy, nibabel, torch; print(f"torch {torch.__version__}, numpy {numpy.__version__}, scipy {scipy.__version__}, nibabel {nibabel.__version__}")')"
