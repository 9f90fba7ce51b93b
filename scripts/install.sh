#!/usr/bin/env bash
# Install morphreg and its test tools. torch is pinned to 2.13.0: on the project's machines
# that is a local CPU build; any other torch spec would pull gigabytes of CUDA packages.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet --disable-pip-version-check torch==2.13.0
python -m pip install --quiet --disable-pip-version-check -c scripts/constraints.txt -e ".[test]"
