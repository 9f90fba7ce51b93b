#!/usr/bin/env bash
# Install and run the demo: train VoxelMorph on synthetic data it makes itself, then evaluate.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
morphreg demo --out "${1:-demo_out}"
