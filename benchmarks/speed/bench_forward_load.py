"""VxmDense forward vs MONAI's VoxelMorph at 1 and 2 threads, on a quiet and on a loaded machine.

    python -m benchmarks.speed.bench_forward_load [--rounds 21] [--rounds3d 5] [--write]

Writes ``docs/results/forward_load.md``. Same network for both (enc 16,32,32,32; dec 32,32,32,32,32,16,16;
``benchmarks.speed.contenders``), each library in both layouts (channels-last and contiguous), 2D
160x192 and 3D 96x112x128, one process, round-robin with the order reversed every round, medians
of wall and process CPU time. "Loaded": the script itself starts ``--busy`` spinning processes
(pure-Python loops, one core each) for those rounds, so the load is known and repeatable on top
of whatever else the machine runs (the load average is printed with every table).

Why a 2-thread forward degrades under load: each parallel ATen op (convolution, add, copy...) ends
at a barrier, and a barrier waits for the slower thread; when the cores are oversubscribed one
of the two threads is often descheduled, so every parallel op can cost a scheduler time slice.
The cost therefore grows with the number of parallel ops per forward, which the script counts
(``torch.profiler``: ops that run a kernel, not views) together with the OpenMP parallel regions
themselves (libgomp's ``GOMP_parallel`` calls, counted by ``gomp_regions.c`` loaded with
``LD_PRELOAD`` in a child process, where a C compiler is found). By default libgomp's waiting
thread *spins* before it sleeps, taking a core from the thread it waits for; a second section
times the 2-thread forwards in child processes with ``OMP_WAIT_POLICY=PASSIVE`` against the
default (the command line sets it when the machine is already busy: ``morphreg._threads``).

A third section ("Choices") runs ``benchmarks/speed/dispatch_choices.py`` in a child process per
oneDNN instruction set (the CPU's own, then ``ONEDNN_MAX_CPU_ISA=AVX2``): the measurements behind
``morphreg.models.dispatch`` (layout, convolution implementation, decoder path).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import torch

from benchmarks import common
from benchmarks.speed import contenders as C

OUT_NAME = "forward_load.md"
#: view/metadata ops: no kernel, no parallel region
_VIEW_OPS = {"aten::as_strided", "aten::slice", "aten::select", "aten::unsqueeze", "aten::permute", "aten::view",
             "aten::reshape", "aten::movedim", "aten::narrow", "aten::_unsafe_view", "aten::_reshape_alias",
             "aten::resize_", "aten::empty", "aten::empty_like", "aten::resolve_conj", "aten::to", "aten::contiguous",
             "aten::expand", "aten::t", "aten::transpose", "aten::detach", "aten::alias", "aten::lift_fresh",
             "aten::_nnpack_available", "aten::empty_strided", "aten::squeeze", "aten::unbind", "aten::split",
             "aten::chunk", "aten::conv2d", "aten::conv3d", "aten::convolution", "aten::_convolution",
             "aten::pad", "aten::constant_pad_nd", "aten::thnn_conv2d", "aten::max_pool2d", "aten::max_pool3d",
             "aten::leaky_relu", "aten::grid_sampler", "aten::linspace", "aten::zeros"}


def _spin(stop: multiprocessing.synchronize.Event) -> None:
    x = 0
    while not stop.is_set():
        for _ in range(100000):
            x += 1


class Busy:
    """``n`` spinning processes while the block runs."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.stop = multiprocessing.Event()
        self.procs: list[multiprocessing.Process] = []

    def __enter__(self) -> Busy:
        self.procs = [multiprocessing.Process(target=_spin, args=(self.stop,), daemon=True) for _ in range(self.n)]
        for p in self.procs:
            p.start()
        time.sleep(0.5 if self.n else 0)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for p in self.procs:
            p.join(5)


def contenders(ndim: int) -> dict[str, C.Contender]:
    return {
        "morphreg, channels-last (its default)": C.make_morphreg(ndim),
        "morphreg, contiguous": C.in_layout(C.make_morphreg(ndim), ndim, "nchw"),
        "MONAI, channels-last": C.in_layout(C.make_monai(ndim), ndim, "cl"),
        "MONAI, contiguous (its default)": C.make_monai(ndim),
    }


def calls_of(cs: dict[str, C.Contender], shape: tuple[int, ...]) -> dict[str, Callable[[], object]]:
    torch.manual_seed(0)
    moving, fixed = torch.rand(1, 1, *shape), torch.rand(1, 1, *shape)
    calls = {}
    for name, c in cs.items():
        c.model.eval()
        m, f = c.prepare(moving), c.prepare(fixed)

        def run(c: C.Contender = c, m: torch.Tensor = m, f: torch.Tensor = f) -> None:
            with torch.inference_mode():
                c.infer(m, f)

        calls[name] = run
    return calls


def kernel_ops(call: Callable[[], object]) -> int:
    """ATen ops of one call that run a kernel (views and dispatch wrappers left out)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        call()
    counts = Counter(e.name for e in prof.events() if e.name.startswith("aten::"))
    return sum(n for name, n in counts.items() if name not in _VIEW_OPS)


def _child(args: list[str], env: dict[str, str | None] | None = None) -> dict:
    """Run this script (or another module) in a child process and parse the JSON of its last line.

    ``env``: variables to set, or to remove where the value is None.
    """
    cmd = [sys.executable, "-m", *(args if args[0].startswith("benchmarks.") else
                                   ["benchmarks.speed.bench_forward_load", *args])]
    child_env = dict(os.environ)
    for key, value in (env or {}).items():
        if value is None:
            child_env.pop(key, None)
        else:
            child_env[key] = value
    out = subprocess.run(cmd, env=child_env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def build_region_counter(folder: Path) -> Path | None:
    """Compile ``gomp_regions.c`` into ``folder`` (None without a C compiler or on failure)."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return None
    lib = folder / "libgomp_regions.so"
    source = Path(__file__).with_name("gomp_regions.c")
    done = subprocess.run([cc, "-O2", "-shared", "-fPIC", "-o", str(lib), str(source), "-ldl"], capture_output=True)
    return lib if done.returncode == 0 else None


def child_regions(shape: tuple[int, ...], threads: int) -> dict[str, int]:
    """(In the child, under LD_PRELOAD) parallel regions of one forward of each contender."""
    import ctypes

    count = ctypes.CDLL(None).gomp_regions
    count.restype = ctypes.c_ulong
    torch.set_num_threads(threads)
    calls = calls_of(contenders(len(shape)), shape)
    out = {}
    for name, call in calls.items():
        call()
        before = count()
        call()
        out[name] = int(count() - before)
    return out


#: the contenders of the wait-policy section (each library in its faster layout here)
POLICY_CONTENDERS = ("morphreg, channels-last (its default)", "MONAI, channels-last")


def child_policy(shape: tuple[int, ...], threads: int, busy: int, rounds: int) -> dict[str, tuple]:
    """(In the child, with the environment's wait policy) the forward of POLICY_CONTENDERS."""
    cs = {k: v for k, v in contenders(len(shape)).items() if k in POLICY_CONTENDERS}
    return {k: v[:2] for k, v in measure(calls_of(cs, shape), threads, busy, rounds).items()}


def policy_section(shape: tuple[int, ...], busy_levels: list[int], rounds: int, repeats: int) -> list[str]:
    """2-thread forwards in child processes, libgomp's default wait policy against PASSIVE, A B B A."""
    policies: dict[str, dict[str, str | None]] = {
        "default (spin, then sleep)": {"OMP_WAIT_POLICY": None, "GOMP_SPINCOUNT": None},
        "OMP_WAIT_POLICY=PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": None}}
    results: dict[tuple[str, int], list[dict]] = {(p, b): [] for p in policies for b in busy_levels}
    loads = {}
    for busy in busy_levels:
        loads[busy] = common.load_average()
        for r in range(repeats):
            for name in (list(policies) if r % 2 == 0 else list(policies)[::-1]):
                res = _child(["--child", "policy", "--shape", *map(str, shape), "--threads", "2", "--busy",
                              str(busy), "--rounds", str(rounds)], env=policies[name])
                results[(name, busy)].append(res)
    header = ["contender"] + [f"{p}, {b} busy: wall (CPU)" for b in busy_levels for p in policies]
    rows = []
    for contender in POLICY_CONTENDERS:
        cells = [contender]
        for b in busy_levels:
            for p in policies:
                runs = results[(p, b)]
                w = statistics.median(run[contender][0] for run in runs)
                c = statistics.median(run[contender][1] for run in runs)
                cells.append(f"{common.fmt_s(w)} ({common.fmt_s(c)})")
        rows.append(cells)
    return [f"### OpenMP wait policy: 2D 1x2x{'x'.join(map(str, shape))}, 2 threads", "",
            f"Each cell: median over {repeats} child processes per policy (run A B B A...), each the median of "
            f"{rounds} round-robin forwards. Load average at the start of each busy level: "
            + "; ".join(f"{b} busy: {loads[b]}" for b in busy_levels) + ".", "",
            common.md_table(header, rows), ""]


def _ms(seconds: float) -> str:
    """Three significant digits (the choices' timings reach tens of microseconds)."""
    return common.fmt_s(seconds) if seconds >= 1 else f"{seconds * 1e3:.3g} ms"


def choices_section(rounds: int) -> list[str]:
    """dispatch_choices in a child process per oneDNN instruction set."""
    lines = ["### Choices behind `morphreg.models.dispatch` (one thread, process CPU time per call)", "",
             "Written by `benchmarks/speed/dispatch_choices.py` in a child process per oneDNN instruction set: "
             "the CPU's own, then `ONEDNN_MAX_CPU_ISA=AVX2` (the same CPU without AVX-512; MKL and the "
             "rest unchanged). Medians of round-robin timings.", ""]
    for isa, env in (("this CPU's", {}), ("AVX2", {"ONEDNN_MAX_CPU_ISA": "AVX2"})):
        load = common.load_average()
        data = _child(["benchmarks.speed.dispatch_choices", "--rounds", str(rounds)], env=env)
        lines += [f"#### oneDNN instruction set: {isa} (load at start {load})", ""]
        rows = [[r["input"], _ms(r["channels-last"]), _ms(r["contiguous"]),
                 f"{r['contiguous'] / r['channels-last']:.2f}x"] for r in data["layout"]]
        lines += ["Layout: the whole VxmDense forward (`model(moving, fixed)`).", "",
                  common.md_table(["input", "channels-last", "contiguous", "contiguous / channels-last"], rows), ""]
        rows = []
        for r in data["conv"]:
            cells = [r["input"]]
            for mode in ("forward", "forward+backward"):
                a, b = r[f"PyTorch's choice, {mode}"], r[f"oneDNN, {mode}"]
                cells += [_ms(a), _ms(b), f"{a / b:.2f}x"]
            rows.append(cells)
        lines += ["Convolution implementation: 3^n, 32 output channels, channels-last, batch 1 (PyTorch's choice "
                  "is its generic im2col path for all of these; `torch.mkldnn_convolution` calls oneDNN).", "",
                  common.md_table(["input", "PyTorch's choice, fwd", "oneDNN, fwd", "speed-up", "PyTorch's choice, "
                                   "fwd+bwd", "oneDNN, fwd+bwd", "speed-up"], rows), ""]
        rows = [[r["input"], _ms(r["upsample first"]), _ms(r["at low resolution"]),
                 f"{r['upsample first'] / r['at low resolution']:.2f}x"] for r in data["decoder"]]
        lines += ["Decoder path: one decoder convolution after a nearest upsampling (32 + 32 -> 32 channels).", "",
                  common.md_table(["level", "upsample first", "at low resolution", "upsample first / low resolution"],
                                  rows), ""]
    return lines


def measure(calls: dict[str, Callable[[], object]], threads: int, busy: int, rounds: int) -> dict[str, tuple]:
    torch.set_num_threads(threads)
    with Busy(busy):
        load = common.load_average()
        res = {name: ([], []) for name in calls}
        for call in calls.values():
            call()
        for r in range(rounds):
            for name in (list(calls) if r % 2 == 0 else list(calls)[::-1]):
                w, c = common.timed_both(calls[name])
                res[name][0].append(w)
                res[name][1].append(c)
    return {name: (statistics.median(w), statistics.median(c), load) for name, (w, c) in res.items()}


def table(title: str, results: dict[tuple[int, int], dict[str, tuple]], ops: dict[str, int],
          regions: dict[str, int] | None) -> list[str]:
    settings = sorted(results)
    header = ["contender", "kernel ops / forward"] + ["OpenMP regions / forward (2 threads)"] * bool(regions) + [
        f"{t} thread{'s' if t > 1 else ''}, {b} busy: wall (CPU)" for t, b in settings]
    best_monai = {s: min(v[0] for k, v in results[s].items() if k.startswith("MONAI")) for s in settings}
    rows = []
    for name in results[settings[0]]:
        cells = [name, str(ops[name])] + [str(regions[name])] * bool(regions)
        for s in settings:
            w, c, _ = results[s][name]
            ratio = f", MONAI best / this {best_monai[s] / w:.2f}x" if name.startswith("morphreg") else ""
            cells.append(f"{common.fmt_s(w)} ({common.fmt_s(c)}){ratio}")
        rows.append(cells)
    loads = "; ".join(f"{t} thr / {b} busy: load {next(iter(results[(t, b)].values()))[2]}" for t, b in settings)
    return [f"### {title}", "", common.md_table(header, rows), "",
            f"Load average (1/5/15 min) during each setting: {loads}.", ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=21, help="2D rounds per setting")
    parser.add_argument("--rounds3d", type=int, default=5, help="3D rounds per setting")
    parser.add_argument("--busy", type=int, default=2, help="spinning processes of the loaded setting")
    parser.add_argument("--shape2d", type=int, nargs=2, default=(160, 192))
    parser.add_argument("--shape3d", type=int, nargs=3, default=(96, 112, 128))
    parser.add_argument("--policy-rounds", type=int, default=15, help="rounds per child of the wait-policy section")
    parser.add_argument("--policy-repeats", type=int, default=4, help="child processes per wait policy and load")
    parser.add_argument("--choices-rounds", type=int, default=7, help="rounds of the choices section (0: skip it)")
    parser.add_argument("--write", action="store_true")
    parser.add_argument("--child", choices=("regions", "policy"), help=argparse.SUPPRESS)
    parser.add_argument("--shape", type=int, nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    import morphreg

    morphreg.reuse_freed_memory()  # as the command line
    if args.child == "regions":
        print(json.dumps(child_regions(tuple(args.shape), args.threads)))
        return
    if args.child == "policy":
        print(json.dumps(child_policy(tuple(args.shape), args.threads, args.busy, args.rounds)))
        return
    start = time.perf_counter()
    load_start = common.load_average()
    command = (f"python -m benchmarks.speed.bench_forward_load --rounds {args.rounds} --rounds3d {args.rounds3d} "
               f"--busy {args.busy} --policy-rounds {args.policy_rounds} --policy-repeats {args.policy_repeats} "
               f"--choices-rounds {args.choices_rounds} --write")
    policy_env = {k: os.environ[k] for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT") if k in os.environ}
    lines = ["## VxmDense forward vs MONAI VoxelMorph at 1 and 2 threads, quiet and loaded", "",
             f"Generated by `{command}`. CPU only, batch 1, `torch.inference_mode`, the same "
             "network in both libraries (`benchmarks/speed/contenders.py`). Cells: median wall time (median "
             "process CPU time); \"MONAI best / this\": MONAI's faster layout in the same setting over morphreg's "
             f"time (> 1: morphreg is faster). \"busy\": spinning processes this script started ({args.busy} "
             "busy = the 2 cores oversubscribed), on top of the machine's other work (shared; see the loads). "
             f"OpenMP wait policy of these tables: {policy_env or 'libgomp default'}.", ""]
    counts: dict[int, tuple[dict[str, int], dict[str, int] | None]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        counter = build_region_counter(Path(tmp))
        for title, shape, rounds in (("2D 1x2x" + "x".join(map(str, args.shape2d)), tuple(args.shape2d), args.rounds),
                                     ("3D 1x2x" + "x".join(map(str, args.shape3d)), tuple(args.shape3d),
                                      args.rounds3d)):
            regions = None if counter is None else _child(
                ["--child", "regions", "--shape", *map(str, shape), "--threads", "2"], env={"LD_PRELOAD": str(counter)})
            cs = contenders(len(shape))
            calls = calls_of(cs, shape)
            torch.set_num_threads(1)
            ops = {name: kernel_ops(call) for name, call in calls.items()}
            settings = [(1, 0), (2, 0), (1, args.busy), (2, args.busy)] if len(shape) == 2 else [(1, 0), (2, 0)]
            results = {(t, b): measure(calls, t, b, rounds) for t, b in settings}
            lines += table(title, results, ops, regions)
            counts[len(shape)] = (ops, regions)
            print("\n".join(lines[-6:]), flush=True)
    if counter is None:
        lines += ["(No C compiler found: the OpenMP regions were not counted.)", ""]
    lines += policy_section(tuple(args.shape2d), [0, args.busy], args.policy_rounds, args.policy_repeats)
    print("\n".join(lines[-6:]), flush=True)
    ops2d, regions2d = counts[2]
    ours, peer = POLICY_CONTENDERS
    regions_text = (f" and {regions2d[ours]} OpenMP regions against MONAI's {regions2d[peer]}" if regions2d else "")
    lines += ["**Reading: why a 2-thread forward degrades under load, and why morphreg's degraded more than MONAI's.** "
              "Every OpenMP parallel region ends at a barrier where a thread that is done waits for the other (see the "
              "module docstring). On an oversubscribed machine the other is often descheduled, and with libgomp's "
              "default policy the waiting thread spins: it burns its time slice, taking a core from the very thread "
              "it waits for, so each region can cost a scheduler time slice and the process's CPU time rises far "
              "above its 1-thread CPU time (the loaded 2-thread columns). The loss therefore grows with the regions "
              "per forward. morphreg's decoder used to run more of them than MONAI's (this script counted 146 kernel "
              "ops per 2D forward with one convolution per output phase, then 118 with the phases stacked into one "
              "convolution and added through a strided view, against MONAI's 86); with the transposed-convolution "
              "decoder (`morphreg.models.upsample_conv`) "
              f"its 2D forward runs {ops2d[ours]} kernel ops{regions_text}. "
              "Sleeping at once (`OMP_WAIT_POLICY=PASSIVE`, the wait-policy table) removes most of the loss for "
              "both libraries; the command line sets it when the load average already fills the cores "
              "(`morphreg._threads`), and a library user sets it before importing torch. On a machine loaded "
              "beyond its cores, `--threads 1` stays the safer setting for either library.", ""]
    if args.choices_rounds:
        lines += choices_section(args.choices_rounds)
    lines += [f"Machine: {common.cpu_model()}, torch {torch.__version__}; load at start {load_start}, at end "
              f"{common.load_average()}; total {(time.perf_counter() - start) / 60:.1f} min."]
    text = "\n".join(lines) + "\n"
    if args.write:
        print(f"wrote {common.write_result(OUT_NAME, text)}")
    else:
        print(text)


if __name__ == "__main__":
    main()
