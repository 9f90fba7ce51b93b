#!/usr/bin/env bash
# Wheels the GPU machine lacks (it has torch, numpy, scipy, matplotlib, tqdm, h5py and pytest, and no
# network), downloaded here into .whl/ (git-ignored), for run.sh's carry.
#   bash benchmarks/gpu/wheels.sh && ls .whl
set -euo pipefail
cd "$(dirname "$0")/../.."
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
pin() { grep -i "^$1==" scripts/lock.txt | head -1; }
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${PLATFORMS[@]}" \
  -d .whl "$(pin nibabel)" "$(pin isal)"
ls -la .whl
