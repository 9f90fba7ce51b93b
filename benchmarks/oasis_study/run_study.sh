#!/usr/bin/env bash
# The OASIS study (MSE vs NCC, the λ trade-off, and morphreg next to ANTs, voxelmorph and
# MONAI) -> docs/results/study.md + PNGs. Every number in the report comes from this command.
#
#   pip install -e ".[bench]" -c benchmarks/constraints.txt   # the peers (optional extra)
#   STEPS=1000 bash benchmarks/oasis_study/run_study.sh
#
# STEPS     training steps of every learned 2D model (default 1000; batch 1, Adam lr 1e-3, seed 0)
# PARALLEL  jobs at once (default 2, one CPU thread each)
# ONLY      a space-separated list of 2D method names (study_oasis2d.py list): run only their jobs
#           and no 3D job, e.g. ONLY="vxm034_paper vxm034 morphreg_ncc_l1 none ants_syn" with
#           STUDY_WORK=benchmarks/work/partial REPORT_OUT=docs/results/study_vxm_paper (a partial
#           report lists every other method as missing)
# Needs the prepared data (python -m benchmarks.oasis_study.prepare_oasis2d; run here if missing) and the
# data folder $MORPHREG_DATA (default ../shared/data). Scratch: benchmarks/work/study/.
set -euo pipefail
cd "$(dirname "$0")/../.."
export STEPS=${STEPS:-1000}
export PARALLEL=${PARALLEL:-2}
export ONLY=${ONLY:-}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=1
WORK=${STUDY_WORK:-benchmarks/work}
W=$WORK/oasis2d
S=$WORK/study
LIMIT=${LIMIT:+--limit $LIMIT}        # smoke tests only: first N test pairs
SCALE3D=${SCALE3D:+--scale $SCALE3D}  # smoke tests only: resized 3D volumes
mkdir -p "$S/logs" "$S/runs"
[ -f "$W/test_pairs_seg24.csv" ] || python -m benchmarks.oasis_study.prepare_oasis2d --work "$WORK"
wanted() { [ -z "$ONLY" ] || [[ " $ONLY " == *" $1 "* ]]; }   # is method $1 part of this run?
python -c "import monai, voxelmorph, ants" || {
  echo "run_study.sh: the peers are missing: pip install -e '.[bench]' -c benchmarks/constraints.txt" >&2
  exit 1
}
date +%s > "$S/started"
python -m benchmarks.oasis_study.study_oasis2d machine > "$S/logs/machine.log"
python -W ignore -m benchmarks.oasis_study.study_oasis2d check > "$S/logs/check.log"

# one line per job; a learned model's evaluation follows its training in the same job
JOBS="$S/jobs.txt"
: > "$JOBS"
ev() { echo "python -W ignore -m benchmarks.oasis_study.study_oasis2d evaluate --method $1 $LIMIT > $S/logs/eval_$1.log 2>&1"; }
wanted ants_syncc && echo "$(ev ants_syncc)" >> "$JOBS"               # longest job first
if [ -z "$ONLY" ]; then
  for m in ants_syn morphreg_dense_diffeo morphreg_dense none; do
    echo "python -W ignore -m benchmarks.oasis_study.study_oasis3d --method $m $SCALE3D > $S/logs/3d_$m.log 2>&1" >> "$JOBS"
  done
fi
python -m benchmarks.oasis_study.study_oasis2d list --train-args | while IFS='|' read -r name args; do
  wanted "$name" || continue
  echo "rm -rf $S/runs/$name && morphreg train --data $W/train/img $args --steps $STEPS --lr 1e-3 --threads 1 \
--seed 0 --val-fraction 0.2 --val-every $STEPS --checkpoint-every $STEPS --no-progress --out $S/runs/$name \
> $S/logs/train_$name.log 2>&1 && $(ev "$name")" >> "$JOBS"
done
for peer in vxm034 vxm034_paper monai; do
  wanted $peer || continue
  echo "python -W ignore -m benchmarks.oasis_study.study_oasis2d train-peer --method $peer --steps $STEPS > $S/logs/train_$peer.log 2>&1 && $(ev $peer)" >> "$JOBS"
done
wanted ants_syn && echo "$(ev ants_syn)" >> "$JOBS"
wanted none && echo "$(ev none)" >> "$JOBS"
for m in $(python -m benchmarks.oasis_study.study_oasis2d list --group acceptance); do   # colleagues' long runs, if present
  wanted "$m" && echo "$(ev "$m")" >> "$JOBS"
done

echo "running $(wc -l < "$JOBS") jobs, $PARALLEL at a time (logs: $S/logs/)"
status=0
tr '\n' '\0' < "$JOBS" | xargs -0 -P "$PARALLEL" -n 1 bash -c 'eval "$1" || { echo "FAILED: $1" >&2; exit 1; }' job \
  || status=$?

# dedicated timing and memory phase: one method at a time, nothing else of the study running
for m in $(python -m benchmarks.oasis_study.study_oasis2d list); do
  if [ -f "$S/eval/$m/seg24/summary.json" ]; then
    python -W ignore -m benchmarks.oasis_study.study_oasis2d time --method "$m" ${LIMIT:+--pairs ${LIMIT#--limit }} \
      > "$S/logs/time_$m.log" 2>&1 || { echo "FAILED: timing of $m" >&2; status=1; }
  fi
done
date +%s > "$S/finished"
python -m benchmarks.oasis_study.report_study ${REPORT_OUT:+--out $REPORT_OUT}
exit $status
