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
(``torch.profiler``: ops that run a kernel, not views).
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import time
from collections import Counter
from collections.abc import Callable

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


def table(title: str, results: dict[tuple[int, int], dict[str, tuple]], ops: dict[str, int]) -> list[str]:
    settings = sorted(results)
    header = ["contender", "kernel ops / forward"] + [
        f"{t} thread{'s' if t > 1 else ''}, {b} busy: wall (CPU)" for t, b in settings]
    best_monai = {s: min(v[0] for k, v in results[s].items() if k.startswith("MONAI")) for s in settings}
    rows = []
    for name in results[settings[0]]:
        cells = [name, str(ops[name])]
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
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    import morphreg

    morphreg.reuse_freed_memory()  # as the command line
    start = time.perf_counter()
    load_start = common.load_average()
    lines = ["## VxmDense forward vs MONAI VoxelMorph at 1 and 2 threads, quiet and loaded", "",
             f"Generated by `python -m benchmarks.speed.bench_forward_load --rounds {args.rounds} --rounds3d "
             f"{args.rounds3d} --busy {args.busy} --write`. CPU only, batch 1, `torch.inference_mode`, the same "
             "network in both libraries (`benchmarks/speed/contenders.py`). Cells: median wall time (median "
             "process CPU time); \"MONAI best / this\": MONAI's faster layout in the same setting over morphreg's "
             f"time (> 1: morphreg is faster). \"busy\": spinning processes this script started ({args.busy} "
             "busy = the 2 cores oversubscribed), on top of the machine's other work (shared; see the loads).", ""]
    for title, shape, rounds in (("2D 1x2x" + "x".join(map(str, args.shape2d)), tuple(args.shape2d), args.rounds),
                                 ("3D 1x2x" + "x".join(map(str, args.shape3d)), tuple(args.shape3d), args.rounds3d)):
        cs = contenders(len(shape))
        calls = calls_of(cs, shape)
        torch.set_num_threads(1)
        ops = {name: kernel_ops(call) for name, call in calls.items()}
        settings = [(1, 0), (2, 0), (1, args.busy), (2, args.busy)] if len(shape) == 2 else [(1, 0), (2, 0)]
        results = {(t, b): measure(calls, t, b, rounds) for t, b in settings}
        lines += table(title, results, ops)
        print("\n".join(lines[-6:]), flush=True)
    lines += ["**Reading.** A 2-thread forward that is much slower under load than at 1 thread is waiting at "
              "the barriers of its parallel ops (see the module docstring): the more kernel ops a forward runs, "
              "the more it loses. morphreg's decoder computes each convolution after an upsampling at low "
              "resolution as one stacked convolution of its 2^n phase kernels (`morphreg.models.upsample_conv`, "
              "kernels cached in inference) rather than 2^n separate ones. On a machine loaded beyond its cores, "
              "`--threads 1` is the faster setting for either library.", "",
              f"Machine: {common.cpu_model()}, torch {torch.__version__}; load at start {load_start}, at end "
              f"{common.load_average()}; total {(time.perf_counter() - start) / 60:.1f} min."]
    text = "\n".join(lines) + "\n"
    if args.write:
        print(f"wrote {common.write_result(OUT_NAME, text)}")
    else:
        print(text)


if __name__ == "__main__":
    main()
