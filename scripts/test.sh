#!/usr/bin/env bash
# Install and run the test suite (what CI runs).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
python -m pytest tests -p no:cacheprovider "$@"
