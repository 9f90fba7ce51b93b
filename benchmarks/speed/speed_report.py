"""The Markdown report of the speed benchmark (``docs/results/speed.md``) from one run's measurements."""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from benchmarks.common import fmt_s, md_table
from benchmarks.speed.contenders import LAMBDA
from benchmarks.speed.measure import Timing

SHIPPED = "morphreg"
PEER_LAYOUTS = {"MONAI": ("monai", "monai-cl"), "voxelmorph": ("voxelmorph", "voxelmorph-cl")}
LIBRARY = {"morphreg": "morphreg", "monai": "MONAI", "voxelmorph": "voxelmorph 0.3.4"}


@dataclass
class SpeedRun:
    """What one run of ``bench_speed`` measured, with the settings the report states.

    Timings are keyed by contender key (``inf2``, ``inf3``) or by ``(key, loss)`` (``train2``,
    ``losses``); ``mem3`` holds one fresh-process training step per key (None when 3D is skipped).
    """

    command: str
    keys: list[str]
    loss_keys: list[str]
    s2: tuple[int, ...]
    s3: tuple[int, ...]
    loss_shape: tuple[int, ...]
    train_rounds: int
    on_gpu: bool
    threads: int
    proposals: bool
    facts: dict[str, str]
    versions: dict[str, str]
    arch_tables: tuple[str, str]
    labels: dict[str, str]
    inf2: dict[str, Timing]
    flops2: float
    rate2: float
    train2: dict[tuple[str, str], Timing]
    losses: dict[tuple[str, str], Timing]
    inf3: dict[str, Timing] | None = None
    mem3: dict[str, dict] | None = None
    flops3: float = float("nan")
    rate3: float = float("nan")
    compile_row: tuple[float, Timing, Timing] | None = None
    elapsed: float = 0.0

    @property
    def clock(self) -> str:
        """The clock of ratios and verdicts: process CPU time on a CPU, wall time on a GPU."""
        return "wall" if self.on_gpu else "CPU"

    def ratio(self, peer: Timing, this: Timing) -> tuple[float, float, float]:
        return paired_ratio(peer, this, cpu=not self.on_gpu)

    def ratio_cell(self, peer: Timing, this: Timing) -> str:
        """Per-round ratio peer/this (median, interquartile range) on the verdict clock."""
        med, q1, q3 = self.ratio(peer, this)
        return f"{med:.2f}x ({q1:.2f}-{q3:.2f})"


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


def _peer_ratio_header(clock: str) -> list[str]:
    return [
        f"MONAI default / this ({clock})",
        f"MONAI channels-last / this ({clock})",
        f"voxelmorph default / this ({clock})",
        f"voxelmorph channels-last / this ({clock})",
    ]


def _speed_rows(run: SpeedRun, t: dict[str, Timing], floor: float) -> list[list[str]]:
    rows = []
    for k in run.keys:
        row = [run.labels[k], fmt_s(t[k].w), fmt_s(t[k].c) if not run.on_gpu else "-"]
        for default, cl in PEER_LAYOUTS.values():
            row.append(run.ratio_cell(t[default], t[k]))
            row.append(run.ratio_cell(t[cl], t[k]))
        row.append(f"{t[k].w / floor:.1f}x")
        rows.append(row)
    return rows


def inference_text(run: SpeedRun) -> str:
    """One table per input size (2D, and 3D unless skipped), with a caution when the load was high."""
    header = ["contender", "wall (median)", "CPU time (median)", *_peer_ratio_header(run.clock), "wall / floor"]
    parts = []
    for lab, t, fl, rt in (
        (f"2D {'x'.join(map(str, run.s2))}", run.inf2, run.flops2, run.rate2),
        (f"3D {'x'.join(map(str, run.s3))}", run.inf3, run.flops3, run.rate3),
    ):
        if t is None:
            continue
        floor = fl / rt
        worst = max(t[k].w for k in run.keys) / floor
        if worst > 10 and not run.on_gpu:
            parts.append(
                f"*Caution: these runs took up to {worst:.0f}x the floor. With other jobs on the 2 cores, "
                "the many short parallel regions of a small input wait on descheduled threads, so every "
                "contender becomes contention-bound and the ratios are compressed towards 1.*\n"
            )
        parts.append(
            f"**{lab}** ({len(t[run.keys[0]].wall)} rounds; conv FLOPs {fl / 1e9:.1f} GFLOP; "
            f"matmul {rt / 1e9:.0f} GFLOP/s in the same rounds; floor {fmt_s(floor)})\n\n"
            + md_table(header, _speed_rows(run, t, floor))
            + "\n"
        )
    return "\n".join(parts)


def train_floor(run: SpeedRun) -> float:
    """Seconds of a 2D training step at the matmul rate: 3x the forward conv FLOPs."""
    return 3 * run.flops2 / run.rate2


def train_table(run: SpeedRun) -> str:
    rows = []
    for k in run.keys:
        tn, tm = run.train2[(k, "ncc")], run.train2[(k, "mse")]
        row = [run.labels[k], fmt_s(tn.w), fmt_s(tn.c) if not run.on_gpu else "-"]
        for default, cl in PEER_LAYOUTS.values():
            row.append(run.ratio_cell(run.train2[(default, "ncc")], tn))
            row.append(run.ratio_cell(run.train2[(cl, "ncc")], tn))
        row += [fmt_s(tm.c if not run.on_gpu else tm.w), run.ratio_cell(tn, tm), f"{tn.w / train_floor(run):.1f}x"]
        rows.append(row)
    clock = run.clock
    header = [
        "contender",
        "NCC step wall",
        "NCC step CPU",
        *_peer_ratio_header(clock),
        f"MSE step ({clock})",
        f"NCC step / MSE step ({clock})",
        "NCC step wall / floor",
    ]
    return md_table(header, rows)


def memory_table(run: SpeedRun) -> str:
    """The 3D training step of each contender in its own process: peak memory and time."""
    mem3 = run.mem3
    if mem3 is None:
        return ""
    clock = run.clock.lower()
    floor3 = 3 * run.flops3 / run.rate3
    rows = []
    for k in run.keys:
        r = mem3[k]
        rows.append([
            run.labels[k],
            gib(r["delta"]),
            f"{r['delta'] / mem3['monai']['delta']:.2f}x",
            f"{r['delta'] / mem3['monai-cl']['delta']:.2f}x",
            f"{r['delta'] / mem3['voxelmorph']['delta']:.2f}x",
            gib(r["saved_bytes"]) if r["saved_bytes"] == r["saved_bytes"] else "-",
            fmt_s(r["wall"]),
            fmt_s(r["cpu"]) if not run.on_gpu else "-",
            f"{mem3['monai'][clock] / r[clock]:.2f}x",
            f"{mem3['monai-cl'][clock] / r[clock]:.2f}x",
            f"{r['wall'] / floor3:.1f}x",
        ])
    peak = "peak memory of one step" + (" (RSS high-water increase)" if not run.on_gpu else " (max_memory_allocated)")
    header = [
        "contender",
        peak,
        "/ MONAI default",
        "/ MONAI channels-last",
        "/ voxelmorph default",
        "saved for backward",
        "step wall",
        "step CPU",
        f"MONAI default / this ({run.clock})",
        f"MONAI channels-last / this ({run.clock})",
        "wall / floor",
    ]
    return md_table(header, rows)


def loss_table(run: SpeedRun) -> str:
    rows = []
    ref = run.losses[("morphreg", "ncc")]
    for k in run.loss_keys:
        tn, tm = run.losses[(k, "ncc")], run.losses[(k, "mse")]
        rows.append([
            LIBRARY[k],
            fmt_s(tn.w),
            fmt_s(tm.w),
            f"{tn.w / tm.w:.1f}x / {tn.c / tm.c:.1f}x",
            f"{tn.w / ref.w:.2f}x / {tn.c / ref.c:.2f}x",
        ])
    header = [
        "library (its own local NCC, window 9, and MSE)",
        "NCC fwd+bwd (wall)",
        "MSE fwd+bwd (wall)",
        "NCC / MSE (wall / CPU)",
        "NCC / morphreg ncc_loss (wall / CPU)",
    ]
    return md_table(header, rows)


def _paired_target(run: SpeedRun, what: str, peer_key: str, this: Timing, peer: Timing, target: float) -> list[str]:
    med, q1, q3 = run.ratio(peer, this)
    return [what, run.labels[peer_key], f"{med:.2f}x ({q1:.2f}-{q3:.2f})", verdict(med, target, q=(q1, q3))]


def _monai_targets(run: SpeedRun, peer_key: str) -> list[list[str]]:
    rows = [_paired_target(run, "2D inference >= 2x faster than MONAI", peer_key, run.inf2[SHIPPED],
                           run.inf2[peer_key], 2.0)]
    if run.inf3 is not None:
        rows.append(_paired_target(run, "3D inference >= 2x faster than MONAI", peer_key, run.inf3[SHIPPED],
                                   run.inf3[peer_key], 2.0))
    rows.append(_paired_target(run, "2D training step >= 1.5x faster than MONAI", peer_key,
                               run.train2[(SHIPPED, "ncc")], run.train2[(peer_key, "ncc")], 1.5))
    if run.mem3 is not None:
        clock = run.clock.lower()
        ratio = run.mem3[peer_key][clock] / run.mem3[SHIPPED][clock]
        rows.append(["3D training step >= 1.5x faster than MONAI (1 step each, separate processes)",
                     run.labels[peer_key], f"{ratio:.2f}x (one run)", verdict(ratio, 1.5)])
        ratio = run.mem3[SHIPPED]["delta"] / run.mem3[peer_key]["delta"]
        rows.append(["3D training-step peak memory <= 0.7x MONAI", run.labels[peer_key], f"{ratio:.2f}x",
                     verdict(ratio, 0.7, "lower")])
    return rows


def _voxelmorph_targets(run: SpeedRun, peer_key: str) -> list[list[str]]:
    rows = [_paired_target(run, "2D inference faster than voxelmorph 0.3.4", peer_key, run.inf2[SHIPPED],
                           run.inf2[peer_key], 1.0)]
    if run.inf3 is not None:
        rows.append(_paired_target(run, "3D inference faster than voxelmorph 0.3.4", peer_key, run.inf3[SHIPPED],
                                   run.inf3[peer_key], 1.0))
    rows.append(_paired_target(run, "2D training step faster than voxelmorph 0.3.4", peer_key,
                               run.train2[(SHIPPED, "ncc")], run.train2[(peer_key, "ncc")], 1.0))
    return rows


def target_table(run: SpeedRun) -> str:
    """The shipped VxmDense against each peer in its default layout (what a user of that library
    gets) and in channels-last (the architecture-level comparison: same layout on both sides)."""
    rows = [row for key in ("monai", "monai-cl") for row in _monai_targets(run, key)]
    rows += [row for key in ("voxelmorph", "voxelmorph-cl") for row in _voxelmorph_targets(run, key)]
    header = [
        "target (shipped VxmDense, channels-last)",
        "against",
        f"ratio, {run.clock} time: median of rounds (interquartile range)",
        "verdict",
    ]
    return md_table(header, rows)


def compile_text(run: SpeedRun) -> str:
    if run.compile_row is None:
        return ""
    cs_, te, tc = run.compile_row
    return (
        f"\n**torch.compile** (2D inference, default inductor backend): compiling took {cs_:.0f} s; "
        f"eager {fmt_s(te.w)} vs compiled {fmt_s(tc.w)} (wall), eager/compiled = "
        f"{te.w / tc.w:.2f}x wall, {te.c / tc.c:.2f}x CPU.\n"
    )


PROPOSALS_TEXT = (
    "**Proposal rows** (`--proposals`; not shipped code): *bf16 autocast* runs the network under "
    "`torch.autocast(bfloat16)` with the losses in float32 - a precision change, so it is "
    "listed next to MONAI (channels-last) under the same autocast. The target verdicts below "
    "use only the shipped VxmDense.\n\n"
)

GPU_MEMORY_METHOD = (
    "Method: `torch.cuda.max_memory_allocated` after `reset_peak_memory_stats`, minus the "
    "memory allocated before the step (after a warm-up step)."
)

CPU_MEMORY_METHOD = (
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


def render(run: SpeedRun) -> str:
    """The whole Markdown report."""
    where = "GPU" if run.on_gpu else f"CPU, {run.threads} thread{'s' if run.threads > 1 else ''}"
    return f"""## Speed and memory: morphreg vs MONAI vs voxelmorph 0.3.4 ({where})

Generated {datetime.date.today().isoformat()} by `{run.command}` (total {run.elapsed / 60:.1f} min).
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

{md_table(["fact", "value"], list(run.facts.items()))}

{md_table(["package", "version"], list(run.versions.items()))}

### Same architecture in all three

enc 16,32,32,32; dec 32,32,32,32,32,16,16; 3^ndim convs with LeakyReLU(0.2); max-pool down,
nearest up; a 3^ndim flow conv (N(0, 1e-5) init); non-diffeomorphic; linear warp.
MONAI: `VoxelMorph(VoxelMorphUNet(channels=(16,32,32,32,32,32,32,32), unet_out_channels=32,
final_conv_channels=(16,16)), integration_steps=0)` (its docstring example with 3 levels,
extended to the paper's 4). voxelmorph 0.3.4: `VxmPairwise(nb_features=[[16,32,32,32],[32,32,32,32]],
activations=LeakyReLU(0.2, inplace=True), integration_steps=0, unet_kwargs=dict(upsample_mode="nearest"))`,
whose stock head (1x1 conv 32->ndim, then 3^ndim ndim->ndim) we replace by its own `ConvBlock`s
3^ndim 32->16, 16->16 and a 3^ndim 16->ndim flow conv, the paper's head
(`benchmarks/oasis_study/study_peers.py::build_vxm_paper`, the network the OASIS study trains as
"voxelmorph 0.3.4, paper architecture"). All three use in-place LeakyReLU activations
(morphreg: `nn.LeakyReLU(0.2, inplace=True)` in `morphreg/models/layers.py::ConvBlock`).
Differences that remain: the default memory layout (above), warp padding (morphreg border, MONAI
and voxelmorph zeros), and the regulariser (MONAI: central differences; others forward).
Check: morphreg's conv weights copied (in execution order) into the peers (MONAI concatenates
[skip, upsampled] where the others concatenate [upsampled, skip], so its post-concatenation weights
are permuted accordingly), then the raw network fields compared; 2D {"x".join(map(str, run.s2))} and
3D 32x48x64:

{run.arch_tables[0]}

{run.arch_tables[1]}

{PROPOSALS_TEXT if run.proposals else ""}### Inference per pair (`torch.inference_mode`, batch 1)

{inference_text(run)}
{compile_text(run)}
### One training step, 2D (forward + sim + {LAMBDA:g} x grad + backward + Adam), batch 1

{run.train_rounds} rounds after 2 warm-up rounds, every contender and loss interleaved in each round.
Each library's own losses: morphreg `ncc_loss` + `grad_loss`; MONAI
`LocalNormalizedCrossCorrelationLoss(kernel_size=9)` + `DiffusionLoss`; voxelmorph/neurite `NCC(9)` +
`SpatialGradient('l2')`. MSE step: morphreg `mse_loss`, MONAI `F.mse_loss`, neurite `MSE`.
Floor = 3 x conv FLOPs / matmul rate = {fmt_s(train_floor(run))}.

{train_table(run)}

### One 3D training step: time and peak memory (one fresh process per contender)

{GPU_MEMORY_METHOD if run.on_gpu else CPU_MEMORY_METHOD}

{memory_table(run) or "(skipped)"}

### Local NCC vs MSE cost ({"x".join(map(str, run.loss_shape))}, forward+backward, gradient into one image)

{loss_table(run)}

### Targets

The shipped `VxmDense` (channels-last, its default) against each peer in its default layout and in
channels-last. A verdict is *undecided* when the interquartile range of the per-round ratios
straddles the target.

{target_table(run)}
"""
