"""Speed and memory of morphreg's VxmDense vs MONAI's VoxelMorph and voxelmorph 0.3.4 (issue 4, part 4).

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

    pip install -r benchmarks/requirements.txt -c benchmarks/constraints.txt

Usage::

    python benchmarks/bench_speed.py             # full run (~25 min on 2 shared cores)
    python benchmarks/bench_speed.py --threads 1 --shape3d 96 112 128 --write   # what docs/results/speed.md holds
    python benchmarks/bench_speed.py --quick     # small shapes (smoke test, ~2 min)
    python benchmarks/bench_speed.py --device cuda --write   # GPU table (appended to speed.md)
    python benchmarks/bench_speed.py --compile   # also time torch.compile (2D only; slow to compile)
    python benchmarks/bench_speed.py --proposals # also time bf16 autocast (morphreg and MONAI)
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import resource
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_core import (  # noqa: E402
    conv_flops,
    fmt_s,
    machine_facts,
    matmul_contender,
    md_table,
    median,
    param_count,
    smooth_pair,
    sync,
)

REPO = Path(__file__).resolve().parents[1]
ENC = (16, 32, 32, 32)
DEC = (32, 32, 32, 32, 32, 16, 16)
LAMBDA = 1.0  # weight of the grad (diffusion) loss; irrelevant for speed
LR = 1e-4

warnings.filterwarnings("ignore", message=".*Using PyTorch native grid_sample.*")
warnings.filterwarnings("ignore", message=".*non-tuple sequence for multidimensional indexing.*")  # MONAI


# --------------------------------------------------------------------------------------------
# versions
# --------------------------------------------------------------------------------------------


def peer_versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for dist in ("morphreg", "torch", "monai", "voxelmorph", "neurite", "antspyx", "numpy", "scipy"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


# --------------------------------------------------------------------------------------------
# contenders
# --------------------------------------------------------------------------------------------


@dataclass
class Contender:
    """One library's model with its inference call and its training step."""

    name: str
    model: nn.Module
    infer: Callable[[torch.Tensor, torch.Tensor], object]  # under inference_mode by the caller
    field_of: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # raw network field
    moved_and_disp: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
    ncc: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # lower is better
    mse: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    grad: Callable[[torch.Tensor], torch.Tensor]
    memory_format: torch.memory_format = torch.contiguous_format
    note: str = ""
    optimizer: torch.optim.Optimizer | None = field(default=None, repr=False)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=self.memory_format)

    def step(self, moving: torch.Tensor, fixed: torch.Tensor, loss: str = "ncc") -> float:
        """forward + similarity + LAMBDA * grad + backward + Adam step; returns the loss value."""
        if self.optimizer is None:
            self.optimizer = torch.optim.Adam(self.model.parameters(), lr=LR)
        self.optimizer.zero_grad(set_to_none=True)
        moved, disp = self.moved_and_disp(moving, fixed)
        sim = self.ncc if loss == "ncc" else self.mse
        value = sim(moved, fixed) + LAMBDA * self.grad(disp)
        value.backward()
        self.optimizer.step()
        return float(value.detach())


def _channels_last(ndim: int) -> torch.memory_format:
    return torch.channels_last if ndim == 2 else torch.channels_last_3d


LAYOUTS = {"": "default", "cl": "channels-last", "nchw": "contiguous"}


def in_layout(c: Contender, ndim: int, layout: str) -> Contender:
    """The contender with weights and inputs in ``layout`` ('' keeps the library's default)."""
    if not layout:
        return c
    fmt = _channels_last(ndim) if layout == "cl" else torch.contiguous_format
    c.model.to(memory_format=fmt)
    c.memory_format = fmt
    if hasattr(c.model, "memory_format"):  # morphreg's VxmDense converts its input to this format
        c.model.memory_format = fmt
    c.name = c.name.split(" (default")[0] + f", {LAYOUTS[layout]}"
    c.note = (c.note + "; " if c.note else "") + f"weights and inputs in the {LAYOUTS[layout]} memory format"
    return c


def make_morphreg(ndim: int) -> Contender:
    """The shipped ``VxmDense``: its default layout is channels-last (weights and activations)."""
    from morphreg import VxmDense
    from morphreg.losses import grad_loss, mse_loss, ncc_loss

    model = VxmDense(ndim, enc=ENC, dec=DEC)

    def moved_and_disp(m: torch.Tensor, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = model(m, f)
        return out.moved, out.disp

    return Contender(
        name="morphreg VxmDense (default: channels-last)",
        model=model,
        infer=lambda m, f: model(m, f),
        field_of=lambda m, f: model.predict_field(m, f),
        moved_and_disp=moved_and_disp,
        ncc=lambda a, b: ncc_loss(a, b, window=9),
        mse=mse_loss,
        grad=lambda d: grad_loss(d, penalty="l2"),
        memory_format=model.memory_format,
    )


def make_monai(ndim: int) -> Contender:
    from monai.losses import DiffusionLoss, LocalNormalizedCrossCorrelationLoss
    from monai.networks.nets import VoxelMorph, VoxelMorphUNet

    # channels come in (down, up) pairs per level: 4 levels = 8 entries; the top up block gives 32
    # channels (unet_out_channels), then final convs 16, 16 and a 3^ndim conv to ndim channels.
    backbone = VoxelMorphUNet(
        spatial_dims=ndim,
        in_channels=2,
        unet_out_channels=DEC[len(ENC)],
        channels=(16, 32, 32, 32, 32, 32, 32, 32),
        final_conv_channels=DEC[len(ENC) + 1 :],
    )
    model = VoxelMorph(backbone=backbone, integration_steps=0, spatial_dims=ndim)
    lncc = LocalNormalizedCrossCorrelationLoss(spatial_dims=ndim, kernel_size=9, kernel_type="rectangular")
    diffusion = DiffusionLoss()

    def moved_and_disp(m: torch.Tensor, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        moved, ddf = model(m, f)
        return moved, ddf

    return Contender(
        name="MONAI VoxelMorph (default: contiguous)",
        model=model,
        infer=lambda m, f: model(m, f),
        field_of=lambda m, f: model.backbone(torch.cat([m, f], dim=1)),
        moved_and_disp=moved_and_disp,
        ncc=lncc,
        mse=F.mse_loss,
        grad=diffusion,
        note="LocalNormalizedCrossCorrelationLoss(kernel 9, rectangular) + DiffusionLoss (central differences)",
    )


def make_voxelmorph(ndim: int) -> Contender:
    import neurite as ne
    from study_peers import build_vxm_paper

    # BasicUNet with [[down], [up]] features gives the paper's encoder and first four decoder convs;
    # VxmPairwise's stock head (1x1 conv to ndim channels, 3^ndim ndim->ndim flow conv) is replaced
    # by voxelmorph's/neurite's own blocks: 3^ndim 32->16, 16->16 (LeakyReLU) and a 3^ndim 16->ndim
    # flow (study_peers.build_vxm_paper, the same network the OASIS study trains).
    model = build_vxm_paper(ndim)
    ncc = ne.nn.modules.NCC(window_size=9)
    mse = ne.nn.modules.MSE()
    spatial_grad = ne.nn.modules.SpatialGradient(penalty="l2")

    def moved_and_disp(m: torch.Tensor, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        disp, moved = model(m, f, return_warped_source=True)
        return moved, disp

    return Contender(
        name="voxelmorph 0.3.4 VxmPairwise (default: contiguous)",
        model=model,
        infer=lambda m, f: model(m, f, return_warped_source=True),
        field_of=lambda m, f: model.flow_layer(model.model(torch.cat([m, f], dim=1))),
        moved_and_disp=moved_and_disp,
        ncc=lambda a, b: -ncc(a, b).mean(),
        mse=mse,
        grad=spatial_grad,
        note="neurite NCC(9) + SpatialGradient('l2'); head replaced by the paper's (see text)",
    )


def with_bf16_autocast(c: Contender) -> Contender:
    """The network under ``torch.autocast(bfloat16)`` (mixed precision); losses in float32.

    Not the same precision as the float32 contenders: reported as a proposal, next to MONAI under
    the same autocast, so that the gain is not mistaken for a library difference.
    """

    def autocast(x: torch.Tensor) -> torch.autocast:
        return torch.autocast(device_type=x.device.type, dtype=torch.bfloat16)

    infer, moved_and_disp = c.infer, c.moved_and_disp

    def infer_bf16(m: torch.Tensor, f: torch.Tensor) -> object:
        with autocast(m):
            return infer(m, f)

    def moved_and_disp_bf16(m: torch.Tensor, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with autocast(m):
            moved, disp = moved_and_disp(m, f)
        return moved.float(), disp.float()

    c.infer, c.moved_and_disp = infer_bf16, moved_and_disp_bf16
    c.name += " bf16 autocast"
    c.note = (c.note + "; " if c.note else "") + "network under torch.autocast(bfloat16)"
    return c


BUILDERS: dict[str, Callable[[int], Contender]] = {
    "morphreg": make_morphreg,  # shipped default: channels-last
    "morphreg-nchw": lambda ndim: in_layout(make_morphreg(ndim), ndim, "nchw"),
    "monai": make_monai,  # MONAI's default: contiguous
    "monai-cl": lambda ndim: in_layout(make_monai(ndim), ndim, "cl"),
    "voxelmorph": make_voxelmorph,  # voxelmorph's default: contiguous
    "voxelmorph-cl": lambda ndim: in_layout(make_voxelmorph(ndim), ndim, "cl"),
    "morphreg-bf16": lambda ndim: with_bf16_autocast(make_morphreg(ndim)),
    "monai-cl-bf16": lambda ndim: with_bf16_autocast(in_layout(make_monai(ndim), ndim, "cl")),
}


def build(key: str, ndim: int, device: torch.device, seed: int = 0) -> Contender:
    torch.manual_seed(seed)
    c = BUILDERS[key](ndim)
    c.model.to(device)
    if c.memory_format != torch.contiguous_format:
        c.model.to(memory_format=c.memory_format)
    return c


# --------------------------------------------------------------------------------------------
# architecture check: same convs, same parameters, same field with copied weights
# --------------------------------------------------------------------------------------------


def conv_sequence(c: Contender, m: torch.Tensor, f: torch.Tensor) -> list[nn.Module]:
    order: list[nn.Module] = []
    handles = [
        mod.register_forward_hook(lambda mod, i, o: order.append(mod))
        for mod in c.model.modules()
        if isinstance(mod, (nn.Conv2d, nn.Conv3d))
    ]
    with torch.inference_mode():
        c.field_of(m, f)
    for h in handles:
        h.remove()
    return order


def architecture_check(keys: Sequence[str], shape: Sequence[int]) -> tuple[str, dict[str, float]]:
    """Copy morphreg's conv weights (in execution order) into the peers; compare the fields."""
    ndim = len(shape)
    moving, fixed = smooth_pair(shape)
    cs = {k: build(k, ndim, torch.device("cpu")) for k in keys}
    ref = cs[keys[0]]
    seqs = {k: conv_sequence(c, moving, fixed) for k, c in cs.items()}
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for mod in seqs[keys[0]]:  # a non-trivial flow head, so the fields are not ~0
            mod.weight.copy_(torch.randn(mod.weight.shape, generator=g) * (2.0 / mod.weight[0].numel()) ** 0.5)
            mod.bias.copy_(0.01 * torch.randn(mod.bias.shape, generator=g))
    rows = []
    diffs = {}
    with torch.inference_mode():
        ref_field = ref.field_of(moving, fixed)
    scale = float(ref_field.abs().max())
    for k, c in cs.items():
        shapes_ok = [tuple(a.weight.shape) for a in seqs[k]] == [tuple(b.weight.shape) for b in seqs[keys[0]]]
        if shapes_ok and k != keys[0]:
            # the decoder convs after a skip concatenation: morphreg and neurite concatenate
            # [upsampled, skip], MONAI's SkipConnection [skip, upsampled]: permute input channels
            after_cat = {len(ENC) + i: DEC[i - 1] for i in range(1, len(ENC) + 1)}
            with torch.no_grad():
                for i, (dst, src) in enumerate(zip(seqs[k], seqs[keys[0]])):
                    w = src.weight
                    if k == "monai" and i in after_cat:
                        up = after_cat[i]
                        w = torch.cat([w[:, up:], w[:, :up]], dim=1)
                    dst.weight.copy_(w)
                    dst.bias.copy_(src.bias)
        with torch.inference_mode():
            fld = c.field_of(moving, fixed)
        diff = float((fld - ref_field).abs().max()) if fld.shape == ref_field.shape else float("nan")
        diffs[k] = diff
        flops, _ = conv_flops(c.model, lambda c=c: c.field_of(moving, fixed))
        rows.append(
            [
                c.name,
                f"{param_count(c.model):,}",
                len(seqs[k]),
                f"{flops / 1e9:.2f}",
                "yes" if shapes_ok else "NO",
                f"{diff:.1e} (field max {scale:.2f})",
            ]
        )
    table = md_table(
        [
            "model",
            "parameters",
            "convs",
            f"conv GFLOP at {'x'.join(map(str, shape))}",
            "same conv shapes, same order",
            "max abs field difference with morphreg's weights",
        ],
        rows,
    )
    return table, diffs


# --------------------------------------------------------------------------------------------
# in-process timings
# --------------------------------------------------------------------------------------------


def cpu_time() -> float:
    return time.process_time()


def timed_both(fn: Callable[[], object], device: torch.device) -> tuple[float, float]:
    sync(device)
    c0, w0 = cpu_time(), time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - w0, cpu_time() - c0


def round_robin(
    contenders: dict[str, Callable[[], object]],
    repeats: int,
    warmup: int,
    device: torch.device,
) -> dict[str, tuple[list[float], list[float]]]:
    """Like ``bench_core.interleaved`` but recording wall and process CPU time."""
    names = list(contenders)
    for _ in range(warmup):
        for n in names:
            contenders[n]()
    out: dict[str, tuple[list[float], list[float]]] = {n: ([], []) for n in names}
    for r in range(repeats):
        for n in names if r % 2 == 0 else names[::-1]:
            w, c = timed_both(contenders[n], device)
            out[n][0].append(w)
            out[n][1].append(c)
            print(f"    [{r}] {n}: wall {w:.3f} s, cpu {c:.3f} s", file=sys.stderr, flush=True)
    return out


@dataclass
class Timing:
    wall: list[float]
    cpu: list[float]

    @property
    def w(self) -> float:
        return median(self.wall)

    @property
    def c(self) -> float:
        return median(self.cpu)


def inference_bench(
    keys: Sequence[str], shape: Sequence[int], repeats: int, warmup: int, device: torch.device
) -> tuple[dict[str, Timing], dict[str, Contender], float, float]:
    ndim = len(shape)
    moving, fixed = smooth_pair(shape)
    cs = {k: build(k, ndim, device) for k in keys}
    flops, _ = conv_flops(cs[keys[0]].model, lambda: cs[keys[0]].infer(moving.to(device), fixed.to(device)))
    calls: dict[str, Callable[[], object]] = {}
    for k, c in cs.items():
        m, f = c.prepare(moving.to(device)), c.prepare(fixed.to(device))
        c.model.eval()

        def run(c: Contender = c, m: torch.Tensor = m, f: torch.Tensor = f) -> None:
            with torch.inference_mode():
                c.infer(m, f)

        calls[k] = run
    mm, mm_flops = matmul_contender() if device.type == "cpu" else _cuda_matmul(device)
    calls["matmul"] = mm
    res = round_robin(calls, repeats, warmup, device)
    rate = mm_flops / median(res.pop("matmul")[0])
    return {k: Timing(*v) for k, v in res.items()}, cs, flops, rate


def training_bench(
    keys: Sequence[str],
    shape: Sequence[int],
    repeats: int,
    warmup: int,
    device: torch.device,
    losses: Sequence[str] = ("ncc",),
) -> dict[tuple[str, str], Timing]:
    ndim = len(shape)
    moving, fixed = smooth_pair(shape)
    calls: dict[str, Callable[[], object]] = {}
    index = {}
    for k in keys:
        for loss in losses:
            c = build(k, ndim, device)
            c.model.train()
            m, f = c.prepare(moving.to(device)), c.prepare(fixed.to(device))
            name = f"{k}/{loss}"
            index[name] = (k, loss)
            calls[name] = lambda c=c, m=m, f=f, loss=loss: c.step(m, f, loss)
    res = round_robin(calls, repeats, warmup, device)
    return {index[n]: Timing(*v) for n, v in res.items()}


def loss_bench(
    keys: Sequence[str], shape: Sequence[int], repeats: int, device: torch.device
) -> dict[tuple[str, str], Timing]:
    """fwd+bwd of each library's NCC and MSE on a (moved, fixed) pair; grad into 'moved'."""
    ndim = len(shape)
    a, b = smooth_pair(shape)
    a, b = a.to(device), b.to(device)
    calls: dict[str, Callable[[], object]] = {}
    index = {}
    for k in keys:
        c = build(k, ndim, device)
        for loss in ("ncc", "mse"):
            fn = c.ncc if loss == "ncc" else c.mse

            def run(fn: Callable = fn) -> None:
                x = a.detach().clone().requires_grad_(True)
                fn(x, b).backward()

            index[f"{k}/{loss}"] = (k, loss)
            calls[f"{k}/{loss}"] = run
    res = round_robin(calls, repeats, 1, device)
    return {index[n]: Timing(*v) for n, v in res.items()}


def _cuda_matmul(device: torch.device, n: int = 8192, calls: int = 5) -> tuple[Callable[[], None], float]:
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    out = torch.empty(n, n, device=device)

    def run() -> None:
        for _ in range(calls):
            torch.mm(a, b, out=out)

    return run, 2.0 * n**3 * calls


# --------------------------------------------------------------------------------------------
# peak memory of one training step: one subprocess per contender
# --------------------------------------------------------------------------------------------


def rss_high_water_bytes() -> int:
    """The process's resident-set high-water mark, ``VmHWM`` of ``/proc/self/status``.

    This is the per-address-space counter behind ``getrusage(RUSAGE_SELF).ru_maxrss``; we read it
    directly because in a process started by fork+exec ``ru_maxrss`` is also floored by the parent's
    high-water mark (the kernel keeps it in ``signal->maxrss`` across exec), which no reset clears.
    Falls back to ``ru_maxrss`` where ``/proc`` is not available.
    """
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def reset_peak_rss() -> bool:
    """Reset the RSS high-water mark (``ru_maxrss`` / ``VmHWM``) to the current RSS (Linux >= 4.0).

    Without it, a peak reached while importing or building the model would hide a smaller step.
    """
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def child_main(key: str, shape: Sequence[int], threads: int, loss: str) -> int:
    """Run in a fresh process: one training step; report the RSS high-water increase, time, saved bytes."""
    torch.set_num_threads(threads)
    device = torch.device("cpu")
    ndim = len(shape)
    c = build(key, ndim, device)
    c.model.train()
    moving, fixed = smooth_pair(shape)
    m, f = c.prepare(moving), c.prepare(fixed)
    c.optimizer = torch.optim.Adam(c.model.parameters(), lr=LR)
    del moving, fixed
    gc.collect()
    was_reset = reset_peak_rss()
    base = rss_high_water_bytes()
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        try:
            st = t.untyped_storage()
            saved[st.data_ptr()] = st.nbytes()
        except (RuntimeError, NotImplementedError):
            pass
        return t

    c0, w0 = cpu_time(), time.perf_counter()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        value = c.step(m, f, loss)
    wall, cpu = time.perf_counter() - w0, cpu_time() - c0
    peak = rss_high_water_bytes()
    result = {
        "key": key,
        "name": c.name,
        "shape": list(shape),
        "loss": loss,
        "baseline_rss": base,
        "peak_rss": peak,
        "delta": peak - base,
        "hwm_reset": was_reset,
        "saved_bytes": sum(saved.values()),
        "wall": wall,
        "cpu": cpu,
        "value": value,
        "params": param_count(c.model),
    }
    print("RESULT " + json.dumps(result), flush=True)
    return 0


def run_child(key: str, shape: Sequence[int], threads: int, loss: str = "ncc") -> dict:
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        key,
        "--shape",
        *map(str, shape),
        "--threads",
        str(threads),
        "--loss",
        loss,
    ]
    print(f"  subprocess: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            out = json.loads(line[len("RESULT ") :])
            print(
                f"    {key}: step wall {out['wall']:.1f} s, cpu {out['cpu']:.1f} s, "
                f"peak +{out['delta'] / 2**30:.2f} GiB",
                file=sys.stderr,
                flush=True,
            )
            return out
    raise RuntimeError(f"child {key} failed (rc {proc.returncode}):\n{proc.stdout}\n{proc.stderr[-3000:]}")


def cuda_memory_step(key: str, shape: Sequence[int], device: torch.device, loss: str = "ncc") -> dict:
    """GPU: peak allocated memory of one training step (after a warm-up step), in-process."""
    ndim = len(shape)
    c = build(key, ndim, device)
    c.model.train()
    moving, fixed = smooth_pair(shape)
    m, f = c.prepare(moving.to(device)), c.prepare(fixed.to(device))
    c.step(m, f, loss)
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    sync(device)
    c0, w0 = cpu_time(), time.perf_counter()
    c.step(m, f, loss)
    sync(device)
    wall, cpu = time.perf_counter() - w0, cpu_time() - c0
    peak = torch.cuda.max_memory_allocated(device)
    out = {"key": key, "name": c.name, "delta": peak - base, "wall": wall, "cpu": cpu, "saved_bytes": float("nan")}
    c.model.cpu()
    gc.collect()
    torch.cuda.empty_cache()
    return out


# --------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def paired_ratio(peer: Timing, this: Timing, cpu: bool = True) -> tuple[float, float, float]:
    """Median and interquartile range over rounds of ``peer time / this time`` in the same round.

    ``round_robin`` times every contender once per round, so the two lists are aligned; a round's
    ratio cancels the slow drift of a shared machine that a ratio of medians would not.
    """
    import numpy as np

    a = np.asarray(peer.cpu if cpu else peer.wall)
    b = np.asarray(this.cpu if cpu else this.wall)
    r = a / b
    return float(np.median(r)), float(np.percentile(r, 25)), float(np.percentile(r, 75))


def verdict(ratio: float, target: float, better: str = "higher", q: tuple[float, float] | None = None) -> str:
    """'met' / 'MISSED by ...' for a speed-up (higher better) or a memory ratio (lower better);
    'undecided' when the interquartile range ``q`` of the per-round ratios straddles the target."""
    digits = 3 if abs(ratio - target) < 0.01 else 2  # 1.498 must not print as a missed 1.50
    r = f"{ratio:.{digits}f}x"
    if q is not None and q[0] < target <= q[1]:
        return f"undecided ({r}, but the interquartile range {q[0]:.2f}-{q[1]:.2f} straddles {target:g}x)"
    if better == "higher":
        if ratio >= target:
            return f"met ({r} >= {target:g}x)"
        return f"**MISSED** ({r} < {target:g}x: short by {target / ratio:.{digits}f}x)"
    if ratio <= target:
        return f"met ({r} <= {target:g}x)"
    return f"**MISSED** ({r} > {target:g}x: {ratio / target:.{digits}f}x over)"


def main(argv: Sequence[str] | None = None) -> int:
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
    args = parser.parse_args(argv)

    if args.child:
        return child_main(args.child, args.shape, args.threads, args.loss)

    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    if on_gpu and not torch.cuda.is_available():
        print("bench_speed: --device cuda but torch.cuda.is_available() is False", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    if on_gpu:
        torch.backends.cudnn.benchmark = True
    started = time.perf_counter()
    facts = machine_facts()
    if on_gpu:
        facts["gpu"] = torch.cuda.get_device_name(device)
    versions = peer_versions()

    if args.quick:
        s2, s3 = (64, 80), (32, 48, 64)
        reps = {"inf2": 5, "train2": 5, "inf3": 3, "loss": 2}
    else:
        s2, s3 = (160, 192), (160, 192, 224)
        reps = {"inf2": 20, "train2": 20, "inf3": 3, "loss": 3}
    loss_shape = s2 if args.skip_3d else tuple(s // 2 for s in s3)  # before --shape3d: always 1/8 of the default
    if args.shape3d:
        s3 = tuple(args.shape3d)
    if on_gpu:
        reps = {"inf2": 30, "train2": 20, "inf3": 10, "loss": 10}
    # every library in its default layout and in the other one (channels-last for the peers,
    # contiguous for morphreg, whose default is channels-last)
    keys = ["morphreg", "morphreg-nchw", "monai", "monai-cl", "voxelmorph", "voxelmorph-cl"]
    peer_layouts = {"MONAI": ("monai", "monai-cl"), "voxelmorph": ("voxelmorph", "voxelmorph-cl")}
    if args.proposals:
        keys += ["morphreg-bf16", "monai-cl-bf16"]
    shipped = "morphreg"

    # 0. architecture check (2D, cheap)
    print("bench_speed: architecture check", file=sys.stderr)
    arch_table, _ = architecture_check(["morphreg", "monai", "voxelmorph"], s2)
    arch_table3, _ = architecture_check(["morphreg", "monai", "voxelmorph"], (32, 48, 64))

    # 1. 2D inference (+ optional compile)
    print("bench_speed: 2D inference", file=sys.stderr)
    inf2, cs2, flops2, rate2 = inference_bench(keys, s2, reps["inf2"], 2, device)
    compile_row = None
    if args.compile:
        print("bench_speed: torch.compile (2D)", file=sys.stderr)
        c = build("morphreg", 2, device)
        c.model.eval()
        compiled = torch.compile(c.model)
        m, f = smooth_pair(s2)
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

        res = round_robin({"eager": eager, "compiled": comp}, reps["inf2"], 1, device)
        compile_row = (compile_s, Timing(*res["eager"]), Timing(*res["compiled"]))

    # 2. 2D training step (NCC and MSE)
    print("bench_speed: 2D training step", file=sys.stderr)
    train2 = training_bench(keys, s2, reps["train2"], 2, device, losses=("ncc", "mse"))

    # 3. loss costs (3D size unless skipped)
    # NCC/MSE cost ratios hardly depend on size; a 3D volume of 1/8 the voxels keeps MONAI's LNCC
    # (tens of seconds at full size) affordable. bench_core.py times morphreg's at full size.
    print(f"bench_speed: loss cost at {loss_shape}", file=sys.stderr)
    loss_keys = ["morphreg", "monai", "voxelmorph"]
    losses = loss_bench(loss_keys, loss_shape, reps["loss"], device)

    # 4. 3D inference and 3D training step memory
    inf3 = mem3 = None
    flops3 = rate3 = float("nan")
    if not args.skip_3d:
        print("bench_speed: 3D inference", file=sys.stderr)
        inf3, _, flops3, rate3 = inference_bench(keys, s3, reps["inf3"], 1, device)
        print("bench_speed: 3D training step, one process per contender", file=sys.stderr)
        mem3 = {}
        for k in keys:
            if on_gpu:
                mem3[k] = cuda_memory_step(k, s3, device)
            else:
                mem3[k] = run_child(k, s3, args.threads)
    elapsed = time.perf_counter() - started
    try:
        facts["load average (1/5/15 min) at end"] = "{:.2f} / {:.2f} / {:.2f}".format(*os.getloadavg())
    except OSError:
        pass

    # ---------------- tables ----------------
    label = {k: (cs2[k].name) for k in keys}
    library = {"morphreg": "morphreg", "monai": "MONAI", "voxelmorph": "voxelmorph 0.3.4"}
    where = "GPU" if on_gpu else f"CPU, {args.threads} thread{'s' if args.threads > 1 else ''}"
    clock = "wall" if on_gpu else "CPU"

    def ratio_cell(peer: Timing, this: Timing) -> str:
        """Per-round ratio peer/this (median, interquartile range) on the verdict clock."""
        med, q1, q3 = paired_ratio(peer, this, cpu=not on_gpu)
        return f"{med:.2f}x ({q1:.2f}-{q3:.2f})"

    def speed_rows(t: dict[str, Timing], flops: float, rate: float) -> list[list[str]]:
        rows = []
        floor = flops / rate
        for k in keys:
            row = [label[k], fmt_s(t[k].w), fmt_s(t[k].c) if not on_gpu else "-"]
            for default, cl in peer_layouts.values():
                row.append(ratio_cell(t[default], t[k]))
                row.append(ratio_cell(t[cl], t[k]))
            row.append(f"{t[k].w / floor:.1f}x")
            rows.append(row)
        return rows

    speed_header = [
        "contender",
        "wall (median)",
        "CPU time (median)",
        f"MONAI default / this ({clock})",
        f"MONAI channels-last / this ({clock})",
        f"voxelmorph default / this ({clock})",
        f"voxelmorph channels-last / this ({clock})",
        "wall / floor",
    ]

    inf_text = []
    for lab, t, fl, rt in (
        (f"2D {'x'.join(map(str, s2))}", inf2, flops2, rate2),
        (f"3D {'x'.join(map(str, s3))}", inf3, flops3, rate3),
    ):
        if t is None:
            continue
        floor = fl / rt
        worst = max(t[k].w for k in keys) / floor
        if worst > 10 and not on_gpu:
            inf_text.append(
                f"*Caution: these runs took up to {worst:.0f}x the floor. With other jobs on the 2 cores, "
                "the many short parallel regions of a small input wait on descheduled threads, so every "
                "contender becomes contention-bound and the ratios are compressed towards 1.*\n"
            )
        inf_text.append(
            f"**{lab}** ({len(t[keys[0]].wall)} rounds; conv FLOPs {fl / 1e9:.1f} GFLOP; "
            f"matmul {rt / 1e9:.0f} GFLOP/s in the same rounds; floor {fmt_s(floor)})\n\n"
            + md_table(speed_header, speed_rows(t, fl, rt))
            + "\n"
        )

    # training (2D in-process)
    tr_rows = []
    floor_tr2 = 3 * flops2 / rate2
    for k in keys:
        tn, tm = train2[(k, "ncc")], train2[(k, "mse")]
        row = [label[k], fmt_s(tn.w), fmt_s(tn.c) if not on_gpu else "-"]
        for default, cl in peer_layouts.values():
            row.append(ratio_cell(train2[(default, "ncc")], tn))
            row.append(ratio_cell(train2[(cl, "ncc")], tn))
        row += [fmt_s(tm.c if not on_gpu else tm.w), ratio_cell(tn, tm), f"{tn.w / floor_tr2:.1f}x"]
        tr_rows.append(row)
    train_table = md_table(
        [
            "contender",
            "NCC step wall",
            "NCC step CPU",
            f"MONAI default / this ({clock})",
            f"MONAI channels-last / this ({clock})",
            f"voxelmorph default / this ({clock})",
            f"voxelmorph channels-last / this ({clock})",
            f"MSE step ({clock})",
            f"NCC step / MSE step ({clock})",
            "NCC step wall / floor",
        ],
        tr_rows,
    )

    # memory + 3D step
    mem_table = ""
    if mem3 is not None:
        rows = []
        floor3 = 3 * flops3 / rate3
        for k in keys:
            r = mem3[k]
            row = [
                label[k],
                gib(r["delta"]),
                f"{r['delta'] / mem3['monai']['delta']:.2f}x",
                f"{r['delta'] / mem3['monai-cl']['delta']:.2f}x",
                f"{r['delta'] / mem3['voxelmorph']['delta']:.2f}x",
                gib(r["saved_bytes"]) if r["saved_bytes"] == r["saved_bytes"] else "-",
                fmt_s(r["wall"]),
                fmt_s(r["cpu"]) if not on_gpu else "-",
                f"{mem3['monai'][clock.lower()] / r[clock.lower()]:.2f}x",
                f"{mem3['monai-cl'][clock.lower()] / r[clock.lower()]:.2f}x",
                f"{r['wall'] / floor3:.1f}x",
            ]
            rows.append(row)
        mem_table = md_table(
            [
                "contender",
                "peak memory of one step" + (" (RSS high-water increase)" if not on_gpu else " (max_memory_allocated)"),
                "/ MONAI default",
                "/ MONAI channels-last",
                "/ voxelmorph default",
                "saved for backward",
                "step wall",
                "step CPU",
                f"MONAI default / this ({clock})",
                f"MONAI channels-last / this ({clock})",
                "wall / floor",
            ],
            rows,
        )

    loss_rows = []
    for k in loss_keys:
        tn, tm = losses[(k, "ncc")], losses[(k, "mse")]
        loss_rows.append(
            [
                library[k],
                fmt_s(tn.w),
                fmt_s(tm.w),
                f"{tn.w / tm.w:.1f}x / {tn.c / tm.c:.1f}x",
                f"{tn.w / losses[('morphreg', 'ncc')].w:.2f}x / {tn.c / losses[('morphreg', 'ncc')].c:.2f}x",
            ]
        )
    loss_table = md_table(
        [
            "library (its own local NCC, window 9, and MSE)",
            "NCC fwd+bwd (wall)",
            "MSE fwd+bwd (wall)",
            "NCC / MSE (wall / CPU)",
            "NCC / morphreg ncc_loss (wall / CPU)",
        ],
        loss_rows,
    )

    # ---------------- targets ----------------
    # the shipped VxmDense against each peer in its default layout (what a user of that library
    # gets) and in channels-last (the architecture-level comparison: same layout on both sides)
    targets = []

    def add_paired(what: str, peer_key: str, this: Timing, peer: Timing, target: float) -> None:
        med, q1, q3 = paired_ratio(peer, this, cpu=not on_gpu)
        targets.append([what, label[peer_key], f"{med:.2f}x ({q1:.2f}-{q3:.2f})", verdict(med, target, q=(q1, q3))])

    for peer_key in ("monai", "monai-cl"):
        add_paired("2D inference >= 2x faster than MONAI", peer_key, inf2[shipped], inf2[peer_key], 2.0)
        if inf3 is not None:
            add_paired("3D inference >= 2x faster than MONAI", peer_key, inf3[shipped], inf3[peer_key], 2.0)
        add_paired(
            "2D training step >= 1.5x faster than MONAI",
            peer_key,
            train2[(shipped, "ncc")],
            train2[(peer_key, "ncc")],
            1.5,
        )
        if mem3 is not None:
            ratio = mem3[peer_key][clock.lower()] / mem3[shipped][clock.lower()]
            targets.append(
                [
                    "3D training step >= 1.5x faster than MONAI (1 step each, separate processes)",
                    label[peer_key],
                    f"{ratio:.2f}x (one run)",
                    verdict(ratio, 1.5),
                ]
            )
            ratio = mem3[shipped]["delta"] / mem3[peer_key]["delta"]
            targets.append(
                [
                    "3D training-step peak memory <= 0.7x MONAI",
                    label[peer_key],
                    f"{ratio:.2f}x",
                    verdict(ratio, 0.7, "lower"),
                ]
            )
    for peer_key in ("voxelmorph", "voxelmorph-cl"):
        add_paired("2D inference faster than voxelmorph 0.3.4", peer_key, inf2[shipped], inf2[peer_key], 1.0)
        if inf3 is not None:
            add_paired("3D inference faster than voxelmorph 0.3.4", peer_key, inf3[shipped], inf3[peer_key], 1.0)
        add_paired(
            "2D training step faster than voxelmorph 0.3.4",
            peer_key,
            train2[(shipped, "ncc")],
            train2[(peer_key, "ncc")],
            1.0,
        )
    target_table = md_table(
        [
            "target (shipped VxmDense, channels-last)",
            "against",
            f"ratio, {clock} time: median of rounds (interquartile range)",
            "verdict",
        ],
        targets,
    )

    compile_text = ""
    if compile_row is not None:
        cs_, te, tc = compile_row
        compile_text = (
            f"\n**torch.compile** (2D inference, default inductor backend): compiling took {cs_:.0f} s; "
            f"eager {fmt_s(te.w)} vs compiled {fmt_s(tc.w)} (wall), eager/compiled = "
            f"{te.w / tc.w:.2f}x wall, {te.c / tc.c:.2f}x CPU.\n"
        )

    facts_table = md_table(["fact", "value"], list(facts.items()))
    version_table = md_table(["package", "version"], list(versions.items()))
    cmd = "python benchmarks/bench_speed.py" + "".join(
        f" {flag}"
        for flag, on in (
            ("--quick", args.quick),
            (f"--threads {args.threads}", args.threads != 2),
            (f"--device {args.device}", on_gpu),
            ("--compile", args.compile),
            ("--proposals", args.proposals),
            ("--skip-3d", args.skip_3d),
            (f"--shape3d {' '.join(map(str, s3))}", bool(args.shape3d)),
            ("--write", args.write),
        )
        if on
    )
    proposals_text = ""
    if args.proposals:
        proposals_text = (
            "**Proposal rows** (`--proposals`; not shipped code): *bf16 autocast* runs the network under "
            "`torch.autocast(bfloat16)` with the losses in float32 - a precision change, so it is "
            "listed next to MONAI (channels-last) under the same autocast. The target verdicts below "
            "use only the shipped VxmDense.\n\n"
        )
    if on_gpu:
        method_text = (
            "Method: `torch.cuda.max_memory_allocated` after `reset_peak_memory_stats`, minus the "
            "memory allocated before the step (after a warm-up step)."
        )
    else:
        method_text = (
            "Method: one fresh subprocess per contender. After imports, model, Adam and the input "
            "pair exist, the resident-set high-water mark is reset to the current RSS (`echo 5 > "
            "/proc/self/clear_refs`) and read (`VmHWM` in `/proc/self/status`, the counter behind "
            "`getrusage(RUSAGE_SELF).ru_maxrss`; `ru_maxrss` itself cannot be used in a child started "
            "by fork+exec, because the kernel floors it with the parent's high-water mark); after one "
            "NCC training step `VmHWM` is read again. The increase is the step's peak extra resident "
            "memory (activations, gradients, temporaries, allocator slack). The measured step is the "
            "first (no warm-up, to keep the run short); its time includes one-off setup such as oneDNN "
            "primitive creation, small against the step. *Saved for backward* = bytes of the distinct "
            "storages autograd saved in that step (`torch.autograd.graph.saved_tensors_hooks`), a "
            "deterministic, allocator-independent view of the same thing. The step times come from "
            "separate processes run one after another, one step each: less robust than the "
            "in-process ratios above."
        )
    report = f"""## Speed and memory: morphreg vs MONAI vs voxelmorph 0.3.4 ({where})

Generated {datetime.date.today().isoformat()} by `{cmd}` (total {elapsed / 60:.1f} min).
The machine is shared with other jobs: absolute times drift, so read the **ratios**. In-process
contenders are timed round-robin (every contender once per round, the order reversed every round);
a ratio cell is the median over rounds of *peer's time / this contender's time in the same round*
(> 1: this is faster), with the interquartile range of those per-round ratios in brackets: a wide
range means the comparison is noise-dominated. "CPU time" is the process CPU time of the same
runs; other jobs disturb it far less than wall time, so the ratios and verdicts use it (wall time
on a GPU).

**Layouts.** morphreg's `VxmDense` keeps its weights and activations in the channels-last memory
format by default (oneDNN's fast convolution layout on CPUs); MONAI and voxelmorph use PyTorch's
default contiguous (NCHW/NCDHW) layout. Every contender is timed in its library's default layout
*and* in the other one (`model.to(memory_format=...)`, inputs converted the same way), so that
"MONAI channels-last / this" is the architecture-level comparison (same network, same layout),
and "MONAI default / this" is what a user of each library gets out of the box.

### Machine and versions

{facts_table}

{version_table}

### Same architecture in all three

enc 16,32,32,32; dec 32,32,32,32,32,16,16; 3^ndim convs with LeakyReLU(0.2); max-pool down,
nearest up; a 3^ndim flow conv (N(0, 1e-5) init); non-diffeomorphic; linear warp.
MONAI: `VoxelMorph(VoxelMorphUNet(channels=(16,32,32,32,32,32,32,32), unet_out_channels=32,
final_conv_channels=(16,16)), integration_steps=0)` (its docstring example with 3 levels,
extended to the paper's 4). voxelmorph 0.3.4: `VxmPairwise(nb_features=[[16,32,32,32],[32,32,32,32]],
activations=LeakyReLU(0.2, inplace=True), integration_steps=0, unet_kwargs=dict(upsample_mode="nearest"))`,
whose stock head (1x1 conv 32->ndim, then 3^ndim ndim->ndim) we replace by its own `ConvBlock`s
3^ndim 32->16, 16->16 and a 3^ndim 16->ndim flow conv, the paper's head
(`benchmarks/study_peers.py::build_vxm_paper`, the network the OASIS study trains as
"voxelmorph 0.3.4, paper architecture"). All three use in-place LeakyReLU activations
(morphreg: `nn.LeakyReLU(0.2, inplace=True)` in `morphreg/models/layers.py::ConvBlock`).
Differences that remain: the default memory layout (above), warp padding (morphreg border, MONAI
and voxelmorph zeros), and the regulariser (MONAI: central differences; others forward).
Check: morphreg's conv weights copied (in execution order) into the peers (MONAI concatenates
[skip, upsampled] where the others concatenate [upsampled, skip], so its post-concatenation weights
are permuted accordingly), then the raw network fields compared; 2D {"x".join(map(str, s2))} and
3D 32x48x64:

{arch_table}

{arch_table3}

{proposals_text}### Inference per pair (`torch.inference_mode`, batch 1)

{chr(10).join(inf_text)}
{compile_text}
### One training step, 2D (forward + sim + {LAMBDA:g} x grad + backward + Adam), batch 1

{reps["train2"]} rounds after 2 warm-up rounds, every contender and loss interleaved in each round.
Each library's own losses: morphreg `ncc_loss` + `grad_loss`; MONAI
`LocalNormalizedCrossCorrelationLoss(kernel_size=9)` + `DiffusionLoss`; voxelmorph/neurite `NCC(9)` +
`SpatialGradient('l2')`. MSE step: morphreg `mse_loss`, MONAI `F.mse_loss`, neurite `MSE`.
Floor = 3 x conv FLOPs / matmul rate = {fmt_s(floor_tr2)}.

{train_table}

### One 3D training step: time and peak memory (one fresh process per contender)

{method_text}

{mem_table if mem_table else "(skipped)"}

### Local NCC vs MSE cost ({"x".join(map(str, loss_shape))}, forward+backward, gradient into one image)

{loss_table}

### Targets

The shipped `VxmDense` (channels-last, its default) against each peer in its default layout and in
channels-last. A verdict is *undecided* when the interquartile range of the per-round ratios
straddles the target.

{target_table}
"""
    print(report)
    if args.write:
        out = REPO / "docs" / "results" / "speed.md"
        out.parent.mkdir(parents=True, exist_ok=True)
        if on_gpu and out.exists():
            out.write_text(out.read_text().rstrip() + "\n\n" + report)
        else:
            out.write_text(report)
        print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
