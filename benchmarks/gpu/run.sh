#!/usr/bin/env bash
# The GPU checks of issue 20, as one script that fits in about 10 minutes of device time.
#
#   benchmarks/gpu/run.sh [--small] [--device cuda|cpu] [--data OASIS3D_DIR]
#
# Writes under $OUT (default benchmarks/work/gpu_out): gpu.md (the fragment for
# docs/results/gpu.md), results.jsonl (every number), run.log (every step's output) and
# train3d_model.pt (the checkpoint of the short 3D training run). Steps, each under its own
# time limit, a failed one recorded and the rest still run:
#   1. env          torch, CUDA, the GPU
#   2. tests        python -m pytest tests/test_device.py --device cuda
#   3. register     morphreg register --method dense --device cuda on the OASIS pair, both directions
#                   (wall time of the whole command: process start, reading, writing; Dice seg35)
#   4. infer        VxmDense 3D forward, 160x192x224, float32 and bf16, displacement and diffeomorphic
#   5. train-step   one VxmDense 3D training step, float32 and bf16 autocast
#   6. ddp          torchrun --nproc-per-node 2 morphreg train (NCCL), only with 2 or more GPUs
#   7. train3d      morphreg train on synthetic 3D subjects; its checkpoint is copied to $OUT
#   8. report       gpu.md from results.jsonl
#
# --small makes every step tiny (and --device defaults to cpu): tests/test_gpu_script.py runs it
# on the CPU so that the script runs the first time it meets a GPU.
#
# On the project's device machines (no network; torch is there, nibabel is not), first here:
#   bash benchmarks/gpu/wheels.sh            # nibabel and friends as wheels into .whl/
#   mkdir -p benchmarks/work && cp -r /work/shared/data/oasis3d_neurite benchmarks/work/
# then run with carry [".whl", "benchmarks/work/oasis3d_neurite"] and the command
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && \
#     PYTHONPATH=/tmp/site bash benchmarks/gpu/run.sh
set -uo pipefail

SMALL=0
DEVICE=""
DATA=""
while [ $# -gt 0 ]; do
  case "$1" in
    --small) SMALL=1 ;;
    --device) DEVICE="$2"; shift ;;
    --data) DATA="$2"; shift ;;
    -h|--help) sed -n 2,30p "$0"; exit 0 ;;
    *) echo "run.sh: unknown argument $1 (expected --small, --device cuda|cpu, --data DIR)" >&2; exit 2 ;;
  esac
  shift
done
cd "$(dirname "$0")/../.."
REPO=$(pwd)
if [ "$SMALL" = 1 ]; then DEVICE=${DEVICE:-cpu}; else DEVICE=${DEVICE:-cuda}; fi
OUT=${OUT:-$REPO/benchmarks/work/gpu_out}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/morphreg_gpu.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
export PYTHONPATH="$REPO/src:$REPO${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
command -v "$PY" >/dev/null || PY=python
RESULTS="$OUT/results.jsonl"
LOG="$OUT/run.log"
: >"$RESULTS"
: >"$LOG"
if [ -z "$DATA" ]; then
  for d in "${MORPHREG_DATA:-/nonexistent}/oasis3d_neurite" "$REPO/benchmarks/work/oasis3d_neurite" \
           /work/shared/data/oasis3d_neurite; do
    [ -f "$d/OASIS_OAS1_0001_MR1/aligned_norm.nii.gz" ] && { DATA=$d; break; }
  done
fi

if [ "$SMALL" = 1 ]; then
  SHAPE=(16 16 16); TRAIN_SHAPE=(16 16 16); REPEATS=(--repeats 1 --warmup 0); TRAIN_STEPS=2; RUNS=(1)
  TINY=(--enc 4 4 4 4 --dec 4 4 4 4 4 4 4); GREEDY=(--levels 2 --iterations 4 2); TESTS=(-k integer_shift)
  LIMIT=120
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # a shared CPU: one thread per process
else
  SHAPE=(160 192 224); TRAIN_SHAPE=(96 112 128); REPEATS=(--repeats 20 --warmup 3); TRAIN_STEPS=200
  TINY=(); GREEDY=(); TESTS=(); LIMIT=240; RUNS=(1 2)
fi

BENCH=("$PY" -m benchmarks.gpu.gpu_bench)
bench() { "${BENCH[@]}" "$@"; }

# step NAME SECONDS CMD...: run CMD with a time limit, its output into run.log, its exit code and
# wall time into results.jsonl
step() {
  local name=$1 limit=$2; shift 2
  echo "== $name: $*" | tee -a "$LOG"
  local start rc end
  start=$(date +%s.%N)
  timeout "$limit" "$@" >>"$LOG" 2>&1
  rc=$?
  end=$(date +%s.%N)
  local wall
  wall=$(awk -v a="$start" -v b="$end" 'BEGIN{printf "%.2f", b - a}')
  echo "   $name: exit $rc, ${wall} s" | tee -a "$LOG"
  bench row --results "$RESULTS" step "$name" "$rc" "$wall" >/dev/null
  return 0
}
note() { echo "   note: $1" | tee -a "$LOG"; bench row --results "$RESULTS" note "$1" >/dev/null; }

step env 60 "${BENCH[@]}" env --results "$RESULTS" --device "$DEVICE"
if [ "$DEVICE" = cuda ] && ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  note "--device cuda, but torch sees no CUDA device: the GPU steps would only fail; stopping"
  bench report --results "$RESULTS" --out "$OUT/gpu.md" >>"$LOG" 2>&1
  exit 1
fi

step tests 300 "$PY" -m pytest tests/test_device.py -q -p no:cacheprovider --device "$DEVICE" "${TESTS[@]}"

# ---- register --method dense on the OASIS pair (a synthetic pair in --small mode or without the data)
if [ "$SMALL" = 1 ] || [ -z "$DATA" ]; then
  [ "$SMALL" = 1 ] || note "no OASIS 3D data found (pass --data DIR): register runs on a synthetic pair"
  step data 120 "${BENCH[@]}" data --out "$WORK/pair" --shape "${SHAPE[@]}" --count 2
  M="$WORK/pair/img/s00.nii.gz"; F="$WORK/pair/img/s01.nii.gz"
  MS="$WORK/pair/seg/s00.nii.gz"; FS="$WORK/pair/seg/s01.nii.gz"
  PAIRS=("1to2:$M:$F:$MS:$FS")
else
  A="$DATA/OASIS_OAS1_0001_MR1"; B="$DATA/OASIS_OAS1_0002_MR1"
  PAIRS=("1to2:$A/aligned_norm.nii.gz:$B/aligned_norm.nii.gz:$A/aligned_seg35.nii.gz:$B/aligned_seg35.nii.gz"
         "2to1:$B/aligned_norm.nii.gz:$A/aligned_norm.nii.gz:$B/aligned_seg35.nii.gz:$A/aligned_seg35.nii.gz")
fi
for pair in "${PAIRS[@]}"; do
  IFS=: read -r direction M F MS FS <<<"$pair"
  # twice: the first pays CUDA's start-up in the process, the second shows what a next pair costs
  for run in "${RUNS[@]}"; do
    step "register_dense_${direction}_run$run" "$LIMIT" "${BENCH[@]}" command --results "$RESULTS" \
      --name "register --method dense --device $DEVICE, $direction, run $run" --moved-seg "$WORK/seg.nii.gz" \
      --fixed-seg "$FS" -- "$PY" -m morphreg register --method dense --device "$DEVICE" "${GREEDY[@]}" \
      --moving "$M" --fixed "$F" --moving-seg "$MS" --moved "$WORK/moved.nii.gz" --warp "$WORK/warp.nii.gz" \
      --moved-seg "$WORK/seg.nii.gz" --quiet
  done
done

step infer "$LIMIT" "${BENCH[@]}" infer --results "$RESULTS" --device "$DEVICE" --shape "${SHAPE[@]}" "${REPEATS[@]}"
step train_step "$LIMIT" "${BENCH[@]}" train-step --results "$RESULTS" --device "$DEVICE" --shape "${SHAPE[@]}" \
  "${REPEATS[@]}"

# ---- training: synthetic 3D subjects
step train_data 180 "${BENCH[@]}" data --out "$WORK/train" --shape "${TRAIN_SHAPE[@]}" --count 8
TRAIN=(-m morphreg train --data "$WORK/train/img" --segs "$WORK/train/seg" --steps "$TRAIN_STEPS"
       --val-every "$TRAIN_STEPS" --val-pairs 4 --lr 1e-3 --device "$DEVICE" --no-progress "${TINY[@]}")
GPUS=$("$PY" -c "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)" 2>/dev/null || echo 0)
if [ "$DEVICE" = cuda ] && [ "$GPUS" -ge 2 ]; then
  step ddp_nccl_2gpu "$LIMIT" "${BENCH[@]}" command --results "$RESULTS" --name "torchrun 2 processes, NCCL, train" -- \
    "$PY" -m torch.distributed.run --standalone --nproc-per-node 2 "${TRAIN[@]}" --out "$WORK/ddp"
elif [ "$SMALL" = 1 ]; then  # exercise the torchrun command line itself (gloo on the CPU)
  step ddp_gloo_cpu "$LIMIT" "${BENCH[@]}" command --results "$RESULTS" --name "torchrun 2 processes, gloo, train" -- \
    "$PY" -m torch.distributed.run --standalone --nproc-per-node 2 "${TRAIN[@]}" --out "$WORK/ddp"
else
  note "2-process NCCL DDP skipped: $GPUS CUDA device(s) visible, 2 needed"
fi
step train3d "$LIMIT" "${BENCH[@]}" command --results "$RESULTS" --name "train 3D ${TRAIN_SHAPE[*]}, $TRAIN_STEPS steps" -- \
  "$PY" "${TRAIN[@]}" --out "$WORK/train3d"
if [ -f "$WORK/train3d/model.pt" ]; then
  cp "$WORK/train3d/model.pt" "$OUT/train3d_model.pt"
  step load_checkpoint 60 "$PY" -c "import sys; from morphreg import load_model; m = load_model(sys.argv[1]); \
print(type(m).__name__, sum(p.numel() for p in m.parameters()), 'parameters')" "$OUT/train3d_model.pt"
else
  note "train3d wrote no model.pt"
fi

bench report --results "$RESULTS" --out "$OUT/gpu.md" >>"$LOG" 2>&1
cat "$OUT/gpu.md"
# exit code: the number of failed steps (0: all passed)
"$PY" -c "import json, sys; rows = [json.loads(l) for l in open(sys.argv[1])]; \
bad = [r['name'] for r in rows if r['step'] == 'step' and r['rc'] != 0]; print('failed steps:', bad or 'none'); \
sys.exit(min(len(bad), 100))" "$RESULTS"
