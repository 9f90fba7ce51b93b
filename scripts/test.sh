#!/usr/bin/env bash
# Install and run the test suite (what CI runs, with the locked versions).
#   bash scripts/test.sh                        locked versions (scripts/lock.txt)
#   MORPHREG_DEPS=newest bash scripts/test.sh   the newest releases pyproject.toml allows
#   MORPHREG_DEPS=lowest bash scripts/test.sh   the lowest versions pyproject.toml claims
# Extra arguments go to pytest. Best run in a fresh virtualenv: the modes install into the active Python.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh "${MORPHREG_DEPS:-locked}"
python -m pytest tests -p no:cacheprovider "$@"
