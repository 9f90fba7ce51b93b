#!/usr/bin/env bash
# Acceptance runs of issue 3: train VxmDense on neurite-OASIS 2D (300 training subjects,
# subject-wise; 240 train / 60 validation) with NCC and with MSE, each for at most 55 minutes
# on one CPU thread (both run at once on a 2-core machine), then evaluate each on the 128 fixed
# test pairs of benchmarks/oasis2d_test_pairs.csv (64 test subjects never used in training).
#
#   bash benchmarks/run_oasis2d.sh            # needs: python benchmarks/prepare_oasis2d.py
set -euo pipefail
cd "$(dirname "$0")/.."
W=benchmarks/work/oasis2d
MINUTES=${MINUTES:-55}
STEPS=${STEPS:-4000}
for loss in ncc mse; do
  morphreg train --data $W/train/img --segs $W/train/seg24 --loss $loss \
    --steps "$STEPS" --max-minutes "$MINUTES" --lr 1e-3 --threads 1 --seed 0 \
    --val-every 250 --val-pairs 16 --checkpoint-every 250 --no-progress \
    --out benchmarks/work/runs/oasis2d_$loss > benchmarks/work/runs/oasis2d_$loss.log 2>&1 &
done
wait
for loss in ncc mse; do
  for seg in seg24 seg4; do
    morphreg evaluate --model benchmarks/work/runs/oasis2d_$loss --pairs $W/test_pairs_$seg.csv \
      --out benchmarks/work/eval/oasis2d_${loss}_$seg --no-progress --figures 4
  done
done
