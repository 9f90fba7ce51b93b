"""Speed and memory of morphreg's VxmDense vs MONAI's VoxelMorph and voxelmorph 0.3.4.

Same architecture everywhere: the paper's U-Net (enc 16,32,32,32; dec 32,32,32,32,32,16,16;
3^ndim convs, in-place LeakyReLU 0.2, max-pool down, nearest up, skip concatenation), a 3^ndim
flow head, non-diffeomorphic, then a linear warp of the moving image. The script prints every
model's parameter count and convolution FLOPs and checks, with copied weights, that the three nets
compute the same field.

Every library is timed in its default memory layout and in the other one: morphreg's VxmDense is
channels-last by default (and is also timed contiguous), MONAI and voxelmorph are contiguous by
default (and are also timed channels-last), so the tables separate the layout from the
architecture.

Measured, in one run (CPU, ``torch.set_num_threads(--threads)``, default 2):

1. inference per pair, 2D 160x192 and 3D 160x192x224 (``--shape3d``), under ``torch.inference_mode``;
2. one training step (forward + local NCC(9) + grad loss + backward + Adam step, batch 1), each
   library with its own losses; in 2D also with MSE instead of NCC;
3. the peak memory of one 3D training step: one fresh subprocess per contender, the increase of
   the resident-set high-water mark (``VmHWM``, the counter behind ``ru_maxrss``, reset with
   ``/proc/self/clear_refs``) over one step, baselined after imports, model, optimiser and inputs
   exist (that step's time is reported too, and the bytes of the tensors autograd saves for
   backward, counted with ``torch.autograd.graph.saved_tensors_hooks``);
4. local NCC vs MSE cost (forward+backward of each library's loss on the moved image).

Ratios are what count on a shared machine: in-process contenders are timed round-robin (the order
reversed every round); a ratio is the median over rounds of the two contenders' times in the same
round, reported with the interquartile range of those per-round ratios. Wall time and process CPU
time are both reported; CPU time is far less disturbed by other jobs on the machine (it does not
count time our threads wait while someone else runs), so ratios and verdicts use it.

The floor is the network's convolution FLOPs divided by this machine's float32 matmul rate
(``torch.mm`` 2048^2, timed in the same rounds); a training step's floor is 3x the forward FLOPs.

Install the peers without touching torch::

    pip install -e ".[bench]" -c benchmarks/constraints.txt

The contenders are in ``contenders.py``, the measurements in ``measure.py``, the report in
``speed_report.py``.

Usage::

    python -m benchmarks.speed.bench_speed             # full run (~25 min on 2 shared cores)
    python -m benchmarks.speed.bench_speed --threads 1 --shape3d 96 112 128 --write   # what docs/results/speed.md holds
    python -m benchmarks.speed.bench_speed --quick     # small shapes (smoke test, ~2 min)
    python -m benchmarks.speed.bench_speed --device cuda --write   # GPU table (appended to speed.md)
    python -m benchmarks.speed.bench_speed --compile   # also time torch.compile (2D only; slow to compile)
    python -m benchmarks.speed.bench_speed --proposals # also time bf16 autocast (morphreg and MONAI)
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from benchmarks.common import RESULTS, load_average, machine_facts, write_result
from benchmarks.speed.bench_core import smooth_pair
from benchmarks.speed.contenders import Contender, architecture_check, build, peer_versions
from benchmarks.speed.measure import (
    Timing,
    child_main,
    cuda_memory_step,
    inference_bench,
    loss_bench,
    round_robin,
    run_child,
    training_bench,
)
from benchmarks.speed.speed_report import SpeedRun, render

ARCH_KEYS = ["morphreg", "monai", "voxelmorph"]
LOSS_KEYS = ["morphreg", "monai", "voxelmorph"]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help="write docs/results/speed.md")
    parser.add_argument("--quick", action="store_true", help="small shapes, few repeats (smoke test)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile(VxmDense) in 2D")
    parser.add_argument("--proposals", action="store_true", help="also time bf16 autocast (morphreg and MONAI)")
    parser.add_argument("--skip-3d", action="store_true", help="2D only")
    parser.add_argument(
        "--shape3d",
        type=int,
        nargs=3,
        default=None,
        metavar=("D", "H", "W"),
        help="3D volume of the 3D inference and training-step sections (default 160 192 224)",
    )
    # internal: one training step in a fresh process
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--shape", type=int, nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--loss", default="ncc", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


@dataclass
class Plan:
    """Shapes, repeats and contenders of one run."""

    s2: tuple[int, ...]
    s3: tuple[int, ...]
    loss_shape: tuple[int, ...]
    reps: dict[str, int]
    keys: list[str]
    device: torch.device

    @property
    def on_gpu(self) -> bool:
        return self.device.type == "cuda"


def make_plan(args: argparse.Namespace) -> Plan:
    if args.quick:
        s2, s3 = (64, 80), (32, 48, 64)
        reps = {"inf2": 5, "train2": 5, "inf3": 3, "loss": 2}
    else:
        s2, s3 = (160, 192), (160, 192, 224)
        reps = {"inf2": 20, "train2": 20, "inf3": 3, "loss": 3}
    loss_shape = s2 if args.skip_3d else tuple(s // 2 for s in s3)  # before --shape3d: always 1/8 of the default
    if args.shape3d:
        s3 = tuple(args.shape3d)
    device = torch.device(args.device)
    if device.type == "cuda":
        reps = {"inf2": 30, "train2": 20, "inf3": 10, "loss": 10}
    # every library in its default layout and in the other one (channels-last for the peers,
    # contiguous for morphreg, whose default is channels-last)
    keys = ["morphreg", "morphreg-nchw", "monai", "monai-cl", "voxelmorph", "voxelmorph-cl"]
    if args.proposals:
        keys += ["morphreg-bf16", "monai-cl-bf16"]
    return Plan(s2, s3, loss_shape, reps, keys, device)


def command_line(args: argparse.Namespace, s3: Sequence[int]) -> str:
    """The command that reproduces this run, as the report states it."""
    return "python -m benchmarks.speed.bench_speed" + "".join(
        f" {flag}"
        for flag, on in (
            ("--quick", args.quick),
            (f"--threads {args.threads}", args.threads != 2),
            (f"--device {args.device}", torch.device(args.device).type == "cuda"),
            ("--compile", args.compile),
            ("--proposals", args.proposals),
            ("--skip-3d", args.skip_3d),
            (f"--shape3d {' '.join(map(str, s3))}", bool(args.shape3d)),
            ("--write", args.write),
        )
        if on
    )


def time_compile(shape: Sequence[int], repeats: int, device: torch.device) -> tuple[float, Timing, Timing]:
    """(seconds to compile, eager timing, compiled timing) of 2D VxmDense inference."""
    c = build("morphreg", 2, device)
    c.model.eval()
    compiled = torch.compile(c.model)
    m, f = smooth_pair(shape)
    m, f = m.to(device), f.to(device)
    t0 = time.perf_counter()
    with torch.inference_mode():
        compiled(m, f)
    compile_s = time.perf_counter() - t0

    def eager(c: Contender = c) -> None:
        with torch.inference_mode():
            c.model(m, f)

    def comp() -> None:
        with torch.inference_mode():
            compiled(m, f)

    res = round_robin({"eager": eager, "compiled": comp}, repeats, 1, device)
    return compile_s, Timing(*res["eager"]), Timing(*res["compiled"])


def measure_3d(plan: Plan, threads: int) -> tuple[dict[str, Timing], dict[str, dict], float, float]:
    """3D inference timings, one 3D training step per contender (memory), conv FLOPs, matmul rate."""
    print("bench_speed: 3D inference", file=sys.stderr)
    inf3, _, flops3, rate3 = inference_bench(plan.keys, plan.s3, plan.reps["inf3"], 1, plan.device)
    print("bench_speed: 3D training step, one process per contender", file=sys.stderr)
    mem3 = {}
    for k in plan.keys:
        if plan.on_gpu:
            mem3[k] = cuda_memory_step(k, plan.s3, plan.device)
        else:
            mem3[k] = run_child(k, plan.s3, threads)
    return inf3, mem3, flops3, rate3


def measure(args: argparse.Namespace, plan: Plan) -> SpeedRun:
    """Every section of the benchmark, in order; returns what the report needs."""
    started = time.perf_counter()
    facts = machine_facts()
    if plan.on_gpu:
        facts["gpu"] = torch.cuda.get_device_name(plan.device)
    versions = peer_versions()

    # 0. architecture check (2D, cheap)
    print("bench_speed: architecture check", file=sys.stderr)
    arch_table, _ = architecture_check(ARCH_KEYS, plan.s2)
    arch_table3, _ = architecture_check(ARCH_KEYS, (32, 48, 64))

    # 1. 2D inference (+ optional compile)
    print("bench_speed: 2D inference", file=sys.stderr)
    inf2, cs2, flops2, rate2 = inference_bench(plan.keys, plan.s2, plan.reps["inf2"], 2, plan.device)
    compile_row = None
    if args.compile:
        print("bench_speed: torch.compile (2D)", file=sys.stderr)
        compile_row = time_compile(plan.s2, plan.reps["inf2"], plan.device)

    # 2. 2D training step (NCC and MSE)
    print("bench_speed: 2D training step", file=sys.stderr)
    train2 = training_bench(plan.keys, plan.s2, plan.reps["train2"], 2, plan.device, losses=("ncc", "mse"))

    # 3. loss costs (3D size unless skipped)
    # NCC/MSE cost ratios hardly depend on size; a 3D volume of 1/8 the voxels keeps MONAI's LNCC
    # (tens of seconds at full size) affordable. bench_core times morphreg's at full size.
    print(f"bench_speed: loss cost at {plan.loss_shape}", file=sys.stderr)
    losses = loss_bench(LOSS_KEYS, plan.loss_shape, plan.reps["loss"], plan.device)

    run = SpeedRun(
        command=command_line(args, plan.s3), keys=plan.keys, loss_keys=LOSS_KEYS, s2=plan.s2, s3=plan.s3,
        loss_shape=plan.loss_shape, train_rounds=plan.reps["train2"], on_gpu=plan.on_gpu, threads=args.threads,
        proposals=args.proposals, facts=facts, versions=versions, arch_tables=(arch_table, arch_table3),
        labels={k: cs2[k].name for k in plan.keys}, inf2=inf2, flops2=flops2, rate2=rate2, train2=train2,
        losses=losses, compile_row=compile_row,
    )
    # 4. 3D inference and 3D training step memory
    if not args.skip_3d:
        run.inf3, run.mem3, run.flops3, run.rate3 = measure_3d(plan, args.threads)
    run.elapsed = time.perf_counter() - started
    end_load = load_average()
    if end_load != "n/a":
        facts["load average (1/5/15 min) at end"] = end_load
    return run


def write(report: str, on_gpu: bool) -> None:
    """``docs/results/speed.md``: a GPU run is appended to the CPU report, a CPU run replaces it."""
    out = RESULTS / "speed.md"
    if on_gpu and out.exists():
        report = out.read_text().rstrip() + "\n\n" + report
    out = write_result("speed.md", report)
    print(f"wrote {out}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return child_main(args.child, args.shape, args.threads, args.loss)
    plan = make_plan(args)
    if plan.on_gpu and not torch.cuda.is_available():
        print("bench_speed: --device cuda but torch.cuda.is_available() is False", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    if plan.on_gpu:
        torch.backends.cudnn.benchmark = True
    report = render(measure(args, plan))
    print(report)
    if args.write:
        write(report, plan.on_gpu)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
