"""Core speed benchmark: local NCC vs MSE vs a naive conv NCC, and VxmDense forward/backward.

What it measures (CPU, ``torch.set_num_threads(--threads)``, default 2):

* forward and forward+backward of :func:`morphreg.losses.ncc_loss` (window 9),
  :func:`morphreg.losses.mse_loss` and a naive voxelmorph-style local NCC (five dense 9^3 box
  convolutions with ``F.conv3d``) on a ``1x1x160x192x224`` pair (``--shape3d``); the gradient flows into one image,
  as in training, where it flows into the moved image;
* ``VxmDense`` (paper architecture) forward under ``torch.inference_mode`` and forward+backward
  (loss ``mse(moved, fixed) + 0.01 * grad(disp)``) on a 160x192 2D pair and a 160x192x224 3D pair,
  batch 1;
* the floor: the network's convolution FLOPs (counted analytically with forward hooks,
  ``2 * prod(kernel) * C_in/groups * C_out * output voxels``) divided by this machine's float32
  matmul rate (``torch.mm`` of two 2048^2 matrices), measured *interleaved* with the other
  contenders so that both see the same load; fwd+bwd floor = 3x the forward FLOPs.

The machine is shared, so absolute times drift; every figure that matters is a ratio between
contenders timed in the same process, round-robin (A, B, C, then C, B, A, ...), and reported as
medians.

Usage::

    python -m benchmarks.speed.bench_core            # print the Markdown tables
    python -m benchmarks.speed.bench_core --write    # ... and write docs/results/core.md
    python -m benchmarks.speed.bench_core --threads 1 --shape3d 96 112 128 --write   # what docs/results/core.md holds
    python -m benchmarks.speed.bench_core --quick    # small shapes, a smoke test of the script
    python -m benchmarks.speed.bench_core --threads 1 --shape3d 96 112 128 --onednn-isa AVX2 --write
        # the same with oneDNN capped at AVX2 (an AVX2-only CPU's convolutions): docs/results/core_onednn_avx2.md

``bench_speed`` imports the FLOP counting and matmul rate defined here; the timers are in
``benchmarks/common.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

import morphreg
from benchmarks.common import fmt_s, interleaved, load_average, machine_facts, md_table, median, spread, write_result

CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


# --------------------------------------------------------------------------------------------
# FLOP counting and the matmul rate (also used by bench_speed)
# --------------------------------------------------------------------------------------------


def matmul_contender(n: int = 2048, calls: int = 3) -> tuple[Callable[[], None], float]:
    """A callable doing ``calls`` float32 ``torch.mm`` of ``n x n`` matrices, and its FLOPs."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g)
    b = torch.randn(n, n, generator=g)
    out = torch.empty(n, n)

    def run() -> None:
        for _ in range(calls):
            torch.mm(a, b, out=out)

    return run, 2.0 * n**3 * calls


def computed_conv_flops(model: nn.Module, moving: torch.Tensor, fixed: torch.Tensor) -> float:
    """Convolution FLOPs the forward actually runs (``torch.utils.flop_counter``: functional calls included)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(moving, fixed)
    return float(sum(v for k, v in counter.get_flop_counts()["Global"].items() if "conv" in str(k)))


@contextlib.contextmanager
def as_written(model: nn.Module) -> Iterator[None]:
    """Every morphreg U-Net in ``model`` upsamples first, as the paper writes it (each conv module runs).

    The low-resolution decoder path calls its convolutions through the weights, not the modules,
    so module hooks (FLOP counts, execution order) see the architecture only on this path.
    """
    unets = [m for m in model.modules() if hasattr(m, "upsample_at_low_resolution")]
    saved = [m.upsample_at_low_resolution for m in unets]
    for m in unets:
        m.upsample_at_low_resolution = False
    try:
        yield
    finally:
        for m, value in zip(unets, saved):
            m.upsample_at_low_resolution = value


def conv_flops(model: nn.Module, call: Callable[[], object]) -> tuple[float, list[tuple[str, str, float]]]:
    """Forward FLOPs of every convolution in ``model`` during ``call()`` (counted analytically, :func:`as_written`).

    ``2 * prod(kernel) * C_in / groups * C_out * output voxels * batch`` per conv (the bias and
    the activations are left out: they are O(voxels), not O(voxels * C_in * k^ndim)).

    Returns:
        Total FLOPs and per-layer rows ``(name, description, flops)``.
    """
    rows: list[tuple[str, str, float]] = []
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, CONV_TYPES):

            def hook(mod: nn.Module, inputs: tuple, output: torch.Tensor, name: str = name) -> None:
                k = math.prod(mod.kernel_size)
                # output.numel() = batch * C_out * output voxels
                flops = 2.0 * k * (mod.in_channels // mod.groups) * output.numel()
                desc = f"{mod.in_channels}->{mod.out_channels} k{mod.kernel_size[0]} @ {tuple(output.shape[2:])}"
                rows.append((name, desc, flops))

            handles.append(module.register_forward_hook(hook))
    try:
        with torch.inference_mode(), as_written(model):
            call()
    finally:
        for h in handles:
            h.remove()
    return sum(r[2] for r in rows), rows


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------------------------
# the naive local NCC (voxelmorph's TF/torch 2018-2023 formulation: dense box convolutions)
# --------------------------------------------------------------------------------------------


def naive_conv_ncc_loss(a: torch.Tensor, b: torch.Tensor, window: int = 9, eps: float = 1e-5) -> torch.Tensor:
    """Negative local squared NCC, voxelmorph-style: five dense ``window^ndim`` box convolutions.

    Zero padding (the border windows count the padded zeros, as in voxelmorph's ``NCC``).
    """
    ndim = a.dim() - 2
    conv = getattr(F, f"conv{ndim}d")
    kernel = torch.ones(1, 1, *([window] * ndim), dtype=a.dtype, device=a.device)
    pad = window // 2
    a2, b2, ab = a * a, b * b, a * b
    a_sum = conv(a, kernel, padding=pad)
    b_sum = conv(b, kernel, padding=pad)
    a2_sum = conv(a2, kernel, padding=pad)
    b2_sum = conv(b2, kernel, padding=pad)
    ab_sum = conv(ab, kernel, padding=pad)
    n = float(window**ndim)
    mean_a = a_sum / n
    mean_b = b_sum / n
    cross = ab_sum - mean_b * a_sum - mean_a * b_sum + mean_a * mean_b * n
    var_a = a2_sum - 2 * mean_a * a_sum + mean_a * mean_a * n
    var_b = b2_sum - 2 * mean_b * b_sum + mean_b * mean_b * n
    cc = cross * cross / (var_a * var_b + eps)
    return -torch.mean(cc)


def smooth_pair(shape: Sequence[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A smooth random image ``(1, 1, *shape)`` in [0, 1] and a shifted, noisy copy of it."""
    g = torch.Generator().manual_seed(seed)
    ndim = len(shape)
    coarse = torch.rand(1, 1, *[max(2, s // 8) for s in shape], generator=g)
    mode = {2: "bilinear", 3: "trilinear"}[ndim]
    a = F.interpolate(coarse, size=list(shape), mode=mode, align_corners=True)
    b = torch.roll(a, shifts=[2] * ndim, dims=list(range(2, 2 + ndim)))
    b = b + 0.05 * torch.rand(a.shape, generator=g)
    return a.contiguous(), b.contiguous()


# --------------------------------------------------------------------------------------------
# the benchmark
# --------------------------------------------------------------------------------------------


def bench_losses(shape: Sequence[int], reps: int, naive_reps: int) -> tuple[str, dict[str, float]]:
    from morphreg.losses import mse_loss, ncc_loss

    a, b = smooth_pair(shape)
    losses = {
        "mse_loss": mse_loss,
        "ncc_loss (window 9, separable avg_pool)": lambda x, y: ncc_loss(x, y, window=9),
        "naive conv NCC (dense 9^3 F.conv3d)": naive_conv_ncc_loss,
    }
    values = {}
    with torch.inference_mode():
        for name, fn in losses.items():
            values[name] = float(fn(a, b))

    def fwd(fn: Callable) -> Callable[[], None]:
        def run() -> None:
            with torch.inference_mode():
                fn(a, b)

        return run

    def fwd_bwd(fn: Callable) -> Callable[[], None]:
        def run() -> None:
            x = a.detach().clone().requires_grad_(True)
            fn(x, b).backward()

        return run

    names = list(losses)
    naive = names[2]
    print(f"  losses on {tuple(a.shape)}: forward (inference_mode)", file=sys.stderr)
    contenders = {f"fwd {n}": fwd(losses[n]) for n in names}
    reps_fwd = {f"fwd {n}": (naive_reps if n == naive else reps) for n in names}
    t_fwd = interleaved(contenders, reps_fwd, warmup=0)
    print("  losses: forward+backward", file=sys.stderr)
    contenders = {f"fb {n}": fwd_bwd(losses[n]) for n in names}
    reps_fb = {f"fb {n}": (naive_reps if n == naive else reps) for n in names}
    t_fb = interleaved(contenders, reps_fb, warmup=0)

    ref_f = median(t_fwd[f"fwd {names[0]}"])
    ref_fb = median(t_fb[f"fb {names[0]}"])
    ncc_fb = median(t_fb[f"fb {names[1]}"])
    rows = []
    for n in names:
        tf, tfb = t_fwd[f"fwd {n}"], t_fb[f"fb {n}"]
        rows.append(
            [
                f"`{n}`",
                f"{values[n]:.4f}",
                fmt_s(median(tf)),
                f"{median(tf) / ref_f:.1f}x",
                fmt_s(median(tfb)),
                spread(tfb),
                f"{median(tfb) / ref_fb:.1f}x",
                f"{median(tfb) / ncc_fb:.2f}x",
            ]
        )
    table = md_table(
        [
            "loss",
            "value",
            "forward (inference_mode)",
            "fwd / MSE",
            "forward+backward",
            "fwd+bwd spread",
            "fwd+bwd / MSE",
            "fwd+bwd / ncc_loss",
        ],
        rows,
    )
    return table, {"ncc_over_mse": ncc_fb / ref_fb, "naive_over_ncc": median(t_fb[f"fb {naive}"]) / ncc_fb}


def bench_vxm(
    shapes: dict[str, Sequence[int]], reps: dict[str, tuple[int, int]]
) -> tuple[str, str, dict[str, dict[str, float]]]:
    from morphreg import VxmDense
    from morphreg.losses import grad_loss, mse_loss

    rows = []
    flop_rows = []
    plain_rows: list[list[str]] = []
    summary: dict[str, dict[str, float]] = {}
    for label, shape in shapes.items():
        ndim = len(shape)
        torch.manual_seed(0)
        model = VxmDense(ndim)
        moving, fixed = smooth_pair(shape)
        flops, layers = conv_flops(model, lambda model=model, m=moving, f=fixed: model(m, f))  # as written
        computed = computed_conv_flops(model, moving, fixed)

        def forward(model: nn.Module = model, m: torch.Tensor = moving, f: torch.Tensor = fixed) -> None:
            with torch.inference_mode():
                model(m, f)

        def forward_backward(model: nn.Module = model, m: torch.Tensor = moving, f: torch.Tensor = fixed) -> None:
            model.zero_grad(set_to_none=True)
            out = model(m, f)
            loss = mse_loss(out.moved, f) + 0.01 * grad_loss(out.disp)
            loss.backward()

        def upsampling_first(run: Callable[[], None], model: nn.Module = model) -> Callable[[], None]:
            def call() -> None:
                model.unet.upsample_at_low_resolution = False
                try:
                    run()
                finally:
                    model.unet.upsample_at_low_resolution = True
            return call

        mm, mm_flops = matmul_contender()
        n_fwd, n_fb = reps[label]
        print(f"  VxmDense {label} {tuple(shape)}: forward, fwd+bwd (both decoders), matmul interleaved",
              file=sys.stderr)
        warm = 1 if ndim == 2 else 0  # a 3D warm-up costs a full forward; the first call is timed
        t = interleaved(
            {"forward": forward, "forward+backward": forward_backward, "matmul": mm,
             "forward, upsampling first": upsampling_first(forward),
             "forward+backward, upsampling first": upsampling_first(forward_backward)},
            {"forward": n_fwd, "forward+backward": n_fb, "matmul": max(n_fwd, n_fb),
             "forward, upsampling first": n_fwd, "forward+backward, upsampling first": n_fb},
            warmup=warm,
        )
        rate = mm_flops / median(t["matmul"])  # FLOP/s
        t_f, t_fb = median(t["forward"]), median(t["forward+backward"])
        floor_f, floor_fb = flops / rate, 3 * flops / rate
        rows.append(
            [
                f"{label} 1x2x{'x'.join(map(str, shape))}",
                f"{flops / 1e9:.1f}",
                fmt_s(t_f),
                spread(t["forward"]),
                fmt_s(t_fb),
                spread(t["forward+backward"]),
                f"{t_fb / t_f:.2f}",
                f"{rate / 1e9:.0f}",
                f"{fmt_s(floor_f)} / {fmt_s(floor_fb)}",
                f"{t_f / floor_f:.2f}x / {t_fb / floor_fb:.2f}x",
                f"{flops / t_f / 1e9:.0f} / {3 * flops / t_fb / 1e9:.0f}",
            ]
        )
        for name, desc, fl in layers:
            flop_rows.append([label, name, desc, f"{fl / 1e9:.2f}", f"{100 * fl / flops:.1f}%"])
        t_f_plain, t_fb_plain = median(t["forward, upsampling first"]), median(t["forward+backward, upsampling first"])
        plain_rows.append([f"{label} 1x2x{'x'.join(map(str, shape))}", f"{flops / 1e9:.1f}", f"{computed / 1e9:.1f}",
                           f"{fmt_s(t_f_plain)} / {fmt_s(t_fb_plain)}", f"{fmt_s(t_f)} / {fmt_s(t_fb)}",
                           f"{t_f_plain / t_f:.2f}x / {t_fb_plain / t_fb:.2f}x",
                           f"{t_f_plain / floor_f:.2f}x / {t_fb_plain / floor_fb:.2f}x"])
        summary[label] = {
            "forward_s": t_f,
            "fwd_bwd_s": t_fb,
            "forward_upsampling_first_s": t_f_plain,
            "fwd_bwd_upsampling_first_s": t_fb_plain,
            "computed_gflop": computed / 1e9,
            "gflop": flops / 1e9,
            "matmul_gflops": rate / 1e9,
        }
    table = md_table(
        [
            "input (pair)",
            "conv GFLOP (fwd)",
            "forward (inference_mode)",
            "fwd spread",
            "forward+backward",
            "fwd+bwd spread",
            "fwd+bwd / fwd",
            "matmul GFLOP/s (same rounds)",
            "floor fwd / fwd+bwd",
            "time / floor (fwd / fwd+bwd)",
            "achieved GFLOP/s (fwd / fwd+bwd)",
        ],
        rows,
    )
    table += (
        "\n\n**The decoder's convolutions after upsampling, at low resolution** "
        "(`morphreg.models.upsample_conv`, the default) against upsampling first, as the paper writes it "
        "(`model.unet.upsample_at_low_resolution = False`), timed in the same rounds. The floor stays the "
        "architecture's FLOPs as written; the low-resolution path computes fewer (counted with "
        "`torch.utils.flop_counter`).\n\n"
        + md_table(["input (pair)", "conv GFLOP as written", "conv GFLOP computed", "upsampling first: fwd / fwd+bwd",
                    "at low resolution: fwd / fwd+bwd", "speed-up (fwd / fwd+bwd)",
                    "upsampling first: time / floor"], plain_rows)
    )
    flop_table = md_table(["model", "layer", "conv", "GFLOP", "share"], flop_rows)
    return table, flop_table, summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help="write docs/results/core.md")
    parser.add_argument("--quick", action="store_true", help="small shapes, few repeats (smoke test)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument("--system-malloc", action="store_true",
                        help="keep glibc's default allocator (the command line calls morphreg.reuse_freed_memory)")
    parser.add_argument(
        "--shape3d",
        type=int,
        nargs=3,
        default=None,
        metavar=("D", "H", "W"),
        help="3D volume of the loss and VxmDense 3D sections (default 160 192 224)",
    )
    parser.add_argument("--onednn-isa", default=None, metavar="ISA",
                        help="cap oneDNN's instruction set (ONEDNN_MAX_CPU_ISA, e.g. AVX2) before any convolution; "
                             "--write then writes docs/results/core_onednn_ISA.md")
    args = parser.parse_args(argv)

    if args.onednn_isa:  # read by oneDNN when it creates its first primitive, i.e. the first convolution
        os.environ["ONEDNN_MAX_CPU_ISA"] = args.onednn_isa
    torch.set_num_threads(args.threads)
    allocator = "glibc default" if args.system_malloc else (
        "freed blocks reused (`morphreg.reuse_freed_memory()`, as the command line)"
        if morphreg.reuse_freed_memory() else "glibc default (reuse_freed_memory unavailable)")
    facts = machine_facts()
    if args.onednn_isa:
        facts["oneDNN instruction set"] = f"capped: ONEDNN_MAX_CPU_ISA={args.onednn_isa}"
    started = time.perf_counter()

    if args.quick:
        loss_shape = (32, 40, 48)
        vxm_shapes = {"2D": (64, 80), "3D": (32, 48, 64)}
        loss_reps, naive_reps = 3, 2
        vxm_reps = {"2D": (3, 3), "3D": (2, 2)}
    else:
        loss_shape = (160, 192, 224)
        vxm_shapes = {"2D": (160, 192), "3D": (160, 192, 224)}
        loss_reps, naive_reps = 5, 2
        vxm_reps = {"2D": (10, 6), "3D": (2, 1)}
    if args.shape3d:
        loss_shape = vxm_shapes["3D"] = tuple(args.shape3d)
        vxm_reps["3D"] = (3, 2)

    print("bench_core: losses", file=sys.stderr)
    loss_table, loss_summary = bench_losses(loss_shape, loss_reps, naive_reps)
    print("bench_core: VxmDense", file=sys.stderr)
    vxm_table, flop_table, vxm_summary = bench_vxm(vxm_shapes, vxm_reps)
    elapsed = time.perf_counter() - started
    facts["load average (1/5/15 min) at end"] = load_average()

    d3 = vxm_summary.get("3D", {})
    floor_note = ""
    if d3:
        floor_f = d3["gflop"] / d3["matmul_gflops"]
        floor_note = (
            f"**Floor.** The 3D network costs {d3['gflop']:.0f} GFLOP forward (convolutions only); at the "
            f"matmul rate measured in the same rounds ({d3['matmul_gflops']:.0f} GFLOP/s on "
            f"{args.threads} thread{'s' if args.threads > 1 else ''}) that is {fmt_s(floor_f)} forward and "
            f"{fmt_s(3 * floor_f)} "
            f"forward+backward; VxmDense took {fmt_s(d3['forward_s'])} and {fmt_s(d3['fwd_bwd_s'])} "
            f"({d3['forward_s'] / floor_f:.2f}x and {d3['fwd_bwd_s'] / (3 * floor_f):.2f}x the floor). "
            "The decoder computes its convolutions after upsampling at low resolution (fewer FLOPs than "
            f"the architecture as written: {d3['computed_gflop']:.0f} GFLOP), so the network can go below "
            "this floor."
        )
        achieved = 3 * d3["gflop"] / d3["fwd_bwd_s"]
        if achieved > d3["matmul_gflops"]:
            floor_note += (
                f" Counted against the FLOPs as written, forward+backward ran at {achieved:.0f} GFLOP/s, above the "
                f"matmul rate: on this CPU oneDNN's convolutions use wider vector instructions than the "
                "matmul (MKL's sgemm, which takes its generic code path on AMD CPUs), so the floor here is a "
                "reference rather than a bound; `--onednn-isa AVX2` times the same network with oneDNN capped "
                "at AVX2 (`docs/results/core_onednn_avx2.md`)."
            )

    facts_table = md_table(["fact", "value"], list(facts.items()))
    command = "python -m benchmarks.speed.bench_core" + " --quick" * args.quick
    command += f" --threads {args.threads}" * (args.threads != 2)
    if args.shape3d:  # (the f-string must not be built without --shape3d: it joins None)
        command += f" --shape3d {' '.join(map(str, args.shape3d))}"
    command += f" --onednn-isa {args.onednn_isa}" * bool(args.onednn_isa)
    command += " --system-malloc" * args.system_malloc + " --write"
    report = f"""## Core benchmark (`benchmarks/speed/bench_core.py`)

Generated {datetime.date.today().isoformat()} by
`{command}` (total {elapsed / 60:.1f} min).
CPU only, `torch.set_num_threads({args.threads})`, allocator: {allocator}.
The machine is shared with other jobs, so absolute times drift by tens of percent: read the
**ratios** (contenders timed in the same process, round-robin with the order reversed every round, medians).

### Machine

{facts_table}

### Local NCC vs MSE vs naive conv NCC, 1x1x{"x".join(map(str, loss_shape))}

Forward under `torch.inference_mode`; forward+backward with the gradient flowing into one image (as
into the moved image in training). Naive NCC = voxelmorph's formulation with five dense
9^3 box convolutions (`F.conv3d`, zero padding); `ncc_loss` = morphreg's separable
`avg_pool` box means (border windows use only in-image voxels, so its value differs slightly).

{loss_table}

`ncc_loss` forward+backward costs {loss_summary["ncc_over_mse"]:.1f}x `mse_loss`; the naive dense-conv
NCC costs {loss_summary["naive_over_ncc"]:.0f}x `ncc_loss`.

### VxmDense (enc 16,32,32,32; dec 32,32,32,32,32,16,16), batch 1

"forward" = `model(moving, fixed)` (U-Net + flow head + warp) under `torch.inference_mode`;
"forward+backward" = forward with autograd, `mse(moved, fixed) + 0.01 * grad(disp)`, `backward()`.
Floor = conv FLOPs / float32 matmul rate (`torch.mm` 2048^2, timed in the same rounds);
fwd+bwd floor = 3x forward FLOPs (grad-input + grad-weight).

{vxm_table}

{floor_note}

<details><summary>Per-layer conv FLOPs (analytic, forward hooks)</summary>

{flop_table}

</details>
"""
    print(report)
    if args.write:
        out = write_result(f"core_onednn_{args.onednn_isa.lower()}.md" if args.onednn_isa else "core.md", report)
        print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
