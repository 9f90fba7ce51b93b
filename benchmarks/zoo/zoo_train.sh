#!/usr/bin/env bash
# Reproduce the built-in models (seed 0, one CPU thread each), then rewrite their cards from the
# installed weights:
#
#   python -m benchmarks.oasis_study.prepare_oasis2d --work benchmarks/work      # NIfTI export, the study's split
#   bash benchmarks/zoo/zoo_train.sh [brain2d|brain2d-v1|brain2d-hyper|brain2d-hyper-mse|synth2d ...]
#   python -m benchmarks.zoo.zoo_hyper && python -m benchmarks.zoo.zoo_synth  # docs/results/hypermorph.md, synth2d.md
#
# As run for the shipped weights (2 shared CPU cores, 2026-12-05): brain2d-v1's first command was
# stopped by --max-minutes at step 6552 and resumed with --steps 9500 (the second command); the
# hyper runs and synth2d stopped at their --max-minutes (steps on the cards). Where the machine is
# faster, a run goes further before its time budget: the card records the steps of the weights.
set -euo pipefail
cd "$(dirname "$0")/../.."
W=${WORK:-benchmarks/work}/oasis2d
R=${RUNS:-benchmarks/work/zoo}
mkdir -p "$R"
data=(--data $W/train/img --segs $W/train/seg24 --normalise percentile --threads 1 --seed 0 --no-progress)
models=("$@")
[ ${#models[@]} -eq 0 ] && models=(brain2d brain2d-hyper brain2d-hyper-mse synth2d)
install=()
for name in "${models[@]}"; do
  case $name in
    brain2d)  # since 2026-12-07: the lecture study's 3-stage cascade (docs/results/lecture.md), lambda 1.0
      morphreg train "${data[@]}" --model cascade --stages 3 --loss ncc --lambda 1.0 --seg-weight 2 --int-steps 7 \
        --int-downsize 2 --lr 1e-3 --lr-schedule cosine --val-every 500 --val-pairs 32 --checkpoint-every 250 \
        --steps 4000 --max-minutes 38 --out $R/brain2d
      install+=(brain2d=$R/brain2d/model.pt) ;;
    brain2d-v1)  # brain2d until 2026-12-07 (VxmDense)
      brain=(--loss ncc --lambda 0.5 --seg-weight 2 --int-steps 7 --int-downsize 2 --lr 1e-3 --lr-schedule cosine
             --val-every 500 --val-pairs 32 --checkpoint-every 500)
      morphreg train "${data[@]}" "${brain[@]}" --steps 12000 --max-minutes 38 --out $R/brain2d-v1
      morphreg train "${data[@]}" "${brain[@]}" --steps 9500 --max-minutes 20 --resume --out $R/brain2d-v1
      install+=(brain2d-v1=$R/brain2d-v1/model.pt) ;;
    brain2d-hyper)
      morphreg train "${data[@]}" --loss ncc --hyper --lr 1e-3 --val-every 500 --val-pairs 16 --checkpoint-every 500 \
        --steps 3000 --max-minutes 15 --out $R/brain2d-hyper
      install+=(brain2d-hyper=$R/brain2d-hyper/last.pt) ;;
    brain2d-hyper-mse)
      morphreg train "${data[@]}" --loss mse --hyper --lr 1e-3 --val-every 500 --val-pairs 16 --checkpoint-every 500 \
        --steps 3000 --max-minutes 11 --out $R/brain2d-hyper-mse
      install+=(brain2d-hyper-mse=$R/brain2d-hyper-mse/last.pt) ;;
    synth2d)
      python -m benchmarks.zoo.zoo_train_synth --out $R/synth2d --steps 45000 --max-minutes 55 --seed 0
      install+=(synth2d=$R/synth2d/model.pt) ;;
    *) echo "unknown model $name" >&2; exit 2 ;;
  esac
done
python -m benchmarks.zoo.zoo_cards --install "${install[@]}"
