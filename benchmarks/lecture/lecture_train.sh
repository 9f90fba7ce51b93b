#!/usr/bin/env bash
# Train the lecture study's families on the shared OASIS 2D training subjects, one after the other,
# each with the same CPU-time budget (--max-cpu-minutes, one thread, nice -n 19):
#
#   python -m benchmarks.oasis_study.prepare_oasis2d --work benchmarks/work      # NIfTI export, the study's split
#   bash benchmarks/lecture/lecture_train.sh [vxm gradicon cascade transmorph probabilistic ...]
#   python -m benchmarks.lecture.lecture_study                                  # docs/results/lecture.md
#
# Every family starts from brain2d's recipe (benchmarks/zoo/zoo_train.sh: NCC, lambda 0.5, Dice
# weight 2 on seg24, diffeomorphic 7 steps at 1/2 resolution, Adam 1e-3 with cosine decay, seed 0)
# and adds its own option with its paper's setting scaled to the budget (docs/results/lecture.md).
# --steps is what the family does in the budget on this machine (measured, x0.9), so the cosine
# schedule ends with the budget. A run stopped early resumes with the same command plus --resume.
# Logs: $R/NAME.log (RUNS defaults to runs/lecture, git-ignored).
set -euo pipefail
cd "$(dirname "$0")/../.."
W=${WORK:-benchmarks/work}/oasis2d
R=${RUNS:-runs/lecture}
BUDGET=${BUDGET:-10}  # CPU minutes per family
mkdir -p "$R"
base=(--data $W/train/img --segs $W/train/seg24 --normalise percentile --threads 1 --seed 0 --no-progress
      --loss ncc --lambda 0.5 --seg-weight 2 --int-steps 7 --int-downsize 2 --lr 1e-3 --lr-schedule cosine
      --val-every 500 --val-pairs 32 --checkpoint-every 250 --max-cpu-minutes "$BUDGET")
models=("$@")
[ ${#models[@]} -eq 0 ] && models=(vxm gradicon cascade transmorph probabilistic)
for name in "${models[@]}"; do
  case $name in
    # --steps: 600 CPU s / (CPU s per step measured for the family) x 0.95 (docs/results/lecture.md)
    vxm) family=(--steps 6200) ;;
    gradicon) family=(--inverse-consistency gradicon --ic-weight 1.5 --steps 3500) ;;
    cascade) family=(--model cascade --stages 3 --steps 3300) ;;
    transmorph) family=(--model transmorph --steps 7500) ;;
    # the paper's lambda = 10; sigma and the Dice weight keep brain2d's ratios (NCC : smoothness : Dice = 1 : 0.5 : 2)
    probabilistic) family=(--model probabilistic --lambda 10 --image-sigma 0.112 --seg-weight 80 --steps 6200) ;;
    *) echo "unknown family $name" >&2; exit 2 ;;
  esac
  resume=()
  [ -f "$R/$name/state.pt" ] && resume=(--resume)
  echo "$(date -u +%FT%TZ) start $name ${family[*]} ${resume[*]}" >> "$R/schedule.log"
  rc=0
  nice -n 19 python -m morphreg train "${base[@]}" "${family[@]}" "${resume[@]}" --out "$R/$name" >> "$R/$name.log" 2>&1 || rc=$?
  echo "$(date -u +%FT%TZ) end $name rc=$rc" >> "$R/schedule.log"
done
