#!/usr/bin/env bash
# OASIS 2D acceptance runs (and the long diffeomorphic / semi-supervised runs of the study):
# train VxmDense on neurite-OASIS 2D (300 training subjects, seeded subject-wise split
# 240 train / 60 validation), one CPU thread per run, two runs at a time on a 2-core machine,
# then evaluate on the 128 fixed test pairs of benchmarks/oasis_study/oasis2d_test_pairs.csv (64 test
# subjects never used in training).
#
#   python -m benchmarks.oasis_study.prepare_oasis2d && bash benchmarks/oasis_study/run_oasis2d.sh
#   python -m benchmarks.oasis_study.report_acceptance        # -> docs/results/oasis2d_acceptance.md
#
# The NCC run uses --normalise minmax (the default when this protocol was fixed; NCC is
# insensitive to it); the others use the default percentile normalisation.
set -euo pipefail
cd "$(dirname "$0")/../.."
W=benchmarks/work/oasis2d
R=benchmarks/work/runs
mkdir -p $R
common=(--data $W/train/img --segs $W/train/seg24 --lr 1e-3 --threads 1 --seed 0 --val-every 250
        --val-pairs 16 --checkpoint-every 250 --no-progress)
# a pool of two one-thread slots, longest job first: the NCC run holds one slot; the MSE,
# diffeomorphic and semi-supervised runs follow each other in the other
train() { local name=$1; shift; morphreg train "${common[@]}" "$@" --out $R/$name > $R/$name.log 2>&1; }
export -f train; export R; export common_str="${common[*]}"
pool=(
  "train oasis2d_ncc --loss ncc --normalise minmax --steps 8000 --max-minutes 55"
  "train oasis2d_mse_pct --loss mse --steps 4000 --max-minutes 55"
  "train oasis2d_diffeo --loss ncc --lambda 1 --int-steps 7 --int-downsize 2 --steps 12000 --max-minutes 25"
  "train oasis2d_semisup --loss ncc --lambda 1 --seg-weight 1 --steps 12000 --max-minutes 25"
)
printf '%s\0' "${pool[@]}" | xargs -0 -P 2 -n 1 bash -c 'read -ra common <<< "$common_str"; eval "$1"' job
for run in ncc mse_pct; do
  for seg in seg24 seg4; do
    morphreg evaluate --model $R/oasis2d_$run --pairs $W/test_pairs_$seg.csv \
      --out benchmarks/work/eval/oasis2d_${run%_pct}_$seg --no-progress --figures 4
  done
done
