"""Write ``docs/results/study.md`` and its figures from the outputs of ``run_study.sh``.

    python benchmarks/report_study.py [--study benchmarks/work/study] [--out docs/results]

Every number in the report is read from the study's JSON/CSV files; the sentences of the
conclusion are templates filled with those numbers (nothing is typed by hand). A method whose
outputs are missing is listed as missing.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import study_config as cfg  # noqa: E402

MAIN = ["morphreg_ncc_l1", "morphreg_mse_l0.01", "morphreg_diffeo", "morphreg_semisup"]
SYN = ["ants_syn", "ants_syncc"]
PEERS = ["vxm034", "vxm034_paper", "monai"]
FOLD_TARGET = 0.1  # % folding
SPEED_TARGET = 1000.0


# ---------------------------------------------------------------------------------------------
# reading


def _json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.exists() else None


def _csv(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _float(text: str | None) -> float:
    try:
        return float(text) if text not in (None, "") else math.nan
    except ValueError:
        return math.nan


class Result:
    """The evaluation of one 2D (or 3D) method."""

    def __init__(self, folder: Path, segs: tuple[str, str]) -> None:
        self.folder = folder
        self.info = _json(folder / "method.json") or {}
        self.timing = _json(folder / "timing.json") or {}
        self.summary = {s: _json(folder / s / "summary.json") for s in segs}
        self.pairs = {s: _csv(folder / s / "pairs.csv") for s in segs}
        self.structures = {s: _csv(folder / s / "structures.csv") for s in segs}

    @property
    def ok(self) -> bool:
        return all(v is not None for v in self.summary.values()) and bool(self.info)

    def stat(self, seg: str, key: str) -> dict[str, float]:
        return (self.summary.get(seg) or {}).get(key, {"mean": math.nan, "sd": math.nan, "n": 0})

    def per_pair(self, seg: str, key: str) -> np.ndarray:
        return np.array([_float(r.get(key)) for r in self.pairs.get(seg, [])])


def load_results(study: Path) -> tuple[dict[str, Result], dict[str, Result]]:
    r2 = {m.name: Result(study / "eval" / m.name, ("seg24", "seg4")) for m in cfg.methods_2d()}
    r3 = {m.name: Result(study / "oasis3d" / m.name, ("seg35", "seg4")) for m in cfg.methods_3d()}
    return ({k: v for k, v in r2.items() if v.ok}, {k: v for k, v in r3.items() if v.ok})


# ---------------------------------------------------------------------------------------------
# formatting


def pm(stat: dict[str, float], digits: int = 3) -> str:
    if not stat or not stat.get("n"):
        return "–"
    return f"{stat['mean']:.{digits}f} ± {stat['sd']:.{digits}f}"


def fmt_seconds(value: float) -> str:
    if not math.isfinite(value):
        return "–"
    if value >= 10:
        return f"{value:.1f}"
    if value >= 0.01:
        return f"{value:.3f}"
    return f"{value:.2e}"


def fmt_pct(value: float) -> str:
    if not math.isfinite(value):
        return "–"
    if value == 0:
        return "0"
    return f"{value:.1e}" if value < 1e-3 else (f"{value:.4f}" if value < 0.01 else f"{value:.3f}")


def training_text(r: Result) -> str:
    train = r.info.get("train") or {}
    if not train:
        return "–"
    steps = train.get("steps")
    seconds = _float(str(train.get("seconds")))
    text = f"{steps} steps"
    if math.isfinite(seconds):
        text += f", {seconds / 60:.1f} min"
    if r.info.get("group") == "acceptance":
        if train.get("checkpoint_step"):
            text += f", best-validation checkpoint of step {train['checkpoint_step']}"
        text += f"; {r.info.get('normalise')} inputs"
    return text


def seconds(r: Result) -> float:
    """Seconds per pair from the dedicated timing phase (NaN if it is missing)."""
    return float(r.timing.get("mean", math.nan))


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# figures


def _merge_lr(name: str) -> str:
    return re.sub(r"^(Left|Right)-", "", name)


def boxplot_figure(results: dict[str, Result], names: list[str], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    per: dict[str, dict[str, list[float]]] = {}
    order: list[str] = []
    for name in names:
        rows = results[name].structures["seg24"]
        acc: dict[tuple[str, str], list[float]] = defaultdict(list)
        for row in rows:
            value = _float(row["dice_after"])
            if math.isfinite(value):
                structure = _merge_lr(row["structure"])
                acc[(row["pair"], structure)].append(value)
                if structure not in order:
                    order.append(structure)
        per[name] = defaultdict(list)
        for (_, structure), values in acc.items():  # left/right averaged within a pair
            per[name][structure].append(float(np.mean(values)))
    fig = Figure(figsize=(min(18.0, max(10.0, 0.16 * len(order) * len(names))), 5.2))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    width = 0.8 / len(names)
    for j, name in enumerate(names):
        data = [per[name].get(s, [math.nan]) for s in order]
        pos = [i + (j - (len(names) - 1) / 2) * width for i in range(len(order))]
        bp = ax.boxplot(
            data,
            positions=pos,
            widths=width * 0.9,
            patch_artist=True,
            showfliers=False,
            medianprops={"color": "black", "linewidth": 0.8},
        )
        for patch in bp["boxes"]:
            patch.set_facecolor(cmap(j % 10))
            patch.set_linewidth(0.5)
        ax.plot([], [], color=cmap(j % 10), linewidth=6, label=results[name].info.get("label", name))
    ax.set_xticks(range(len(order)))
    ax.set_xticklabels(order, rotation=35, ha="right", fontsize=8)
    ax.set_ylabel("Dice (seg24, left/right averaged)")
    ax.set_ylim(0, 1)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, ncol=3, loc="lower left")
    n = results[names[0]].info.get("n_pairs", "?")
    ax.set_title(f"Per-structure Dice on the {n} OASIS 2D test pairs")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def sweep_points(results: dict[str, Result], loss: str) -> list[tuple[float, Result]]:
    points = []
    for value in cfg.LAMBDAS[loss]:
        name = cfg.lam_name(loss, value)
        if name in results:
            points.append((value, results[name]))
    return points


def sweep_figure(results: dict[str, Result], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4))
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for loss, colour, marker in (("mse", "tab:blue", "o"), ("ncc", "tab:red", "s")):
        pts = sweep_points(results, loss)
        if not pts:
            continue
        lam = [p[0] for p in pts]
        dice = [p[1].stat("seg24", "dice_after") for p in pts]
        fold = [p[1].stat("seg24", "folding_pct") for p in pts]
        n = pts[0][1].info.get("n_pairs", "?")
        ax1.set_ylabel(f"Dice (seg24), mean ± sd over {n} pairs")
        ax1.errorbar(
            lam,
            [d["mean"] for d in dice],
            yerr=[d["sd"] for d in dice],
            color=colour,
            marker=marker,
            capsize=3,
            label=loss.upper(),
        )
        ax2.errorbar(
            lam,
            [f["mean"] for f in fold],
            yerr=[f["sd"] for f in fold],
            color=colour,
            marker=marker,
            capsize=3,
            label=loss.upper(),
        )
    if "none" in results:
        base = results["none"].stat("seg24", "dice_after")["mean"]
        ax1.axhline(base, color="grey", linestyle=":", label="no registration")
    for name, style in (("ants_syn", "--"), ("ants_syncc", "-.")):
        if name in results:
            ax1.axhline(
                results[name].stat("seg24", "dice_after")["mean"],
                color="black",
                linestyle=style,
                label=results[name].info.get("label", name),
            )
    ax1.set_xscale("log")
    ax1.set_xlabel("regularisation λ")
    ax1.legend(fontsize=8)
    ax1.grid(alpha=0.3)
    ax2.set_xscale("log")
    ax2.set_xlabel("regularisation λ")
    ax2.set_ylabel("% voxels with det J ≤ 0")
    ax2.legend(fontsize=8)
    ax2.grid(alpha=0.3)
    fig.suptitle("λ sweep (as in VoxelMorph, TMI 2019): accuracy and folding")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _grid_lines(ax: Any, disp: np.ndarray, step: int = 8) -> None:
    """Deformed grid x + u(x) in the display convention of morphreg.viz (x: axis 0 left to
    right, y: axis 1 top to bottom)."""
    h, w = disp.shape[1:]
    ii, jj = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    px, py = ii + disp[0], jj + disp[1]
    for i in range(0, h, step):
        ax.plot(px[i, :], py[i, :], color="yellow", linewidth=0.4)
    for j in range(0, w, step):
        ax.plot(px[:, j], py[:, j], color="yellow", linewidth=0.4)


def example_figure(results: dict[str, Result], names: list[str], path: Path, pair: int = 0) -> None:
    import torch
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from morphreg import io, spatial
    from morphreg.data import normalise_intensity, read_pairs_csv

    rows = read_pairs_csv(cfg.OASIS2D / "test_pairs_seg24.csv")
    row = rows[pair]
    moving = normalise_intensity(io.load_volume(row["moving"]).data)
    fixed = normalise_intensity(io.load_volume(row["fixed"]).data)
    fixed_seg = io.load_volume(row["fixed_seg"]).data
    moving_seg = torch.from_numpy(io.load_volume(row["moving_seg"]).data.astype(np.int64))[None, None]
    from morphreg import metrics

    fixed_seg_t = torch.from_numpy(fixed_seg.astype(np.int64))[None, None]
    labels = sorted(cfg.read_label_names(cfg.data_dir() / "oasis2d_neurite" / "seg24_labels.txt"))
    names = [n for n in names if (results[n].folder / "examples.npz").exists()]
    cols = 2 + len(names)
    fig = Figure(figsize=(1.9 * cols, 5.4))
    FigureCanvasAgg(fig)

    def show(ax: Any, image: np.ndarray, title: str, **kw: Any) -> Any:
        im = ax.imshow(image.T, origin="upper", **kw)
        ax.set_title(title, fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
        return im

    ax = fig.add_subplot(2, cols, 1)
    show(ax, fixed, "fixed", cmap="gray", vmin=0, vmax=1)
    ax.contour(
        np.arange(fixed.shape[0]),
        np.arange(fixed.shape[1]),
        (fixed_seg > 0).T.astype(float),
        levels=[0.5],
        colors="cyan",
        linewidths=0.4,
    )
    before = float(metrics.dice(moving_seg, fixed_seg_t, labels).mean[0])
    show(fig.add_subplot(2, cols, 2), moving, f"moving\nDice {before:.3f}", cmap="gray", vmin=0, vmax=1)
    im = None
    for j, name in enumerate(names):
        disp = np.load(results[name].folder / "examples.npz")["disp"][pair]
        moved = spatial.warp(torch.from_numpy(moving)[None, None], torch.from_numpy(disp)[None])[0, 0].numpy()
        label = results[name].info.get("label", name)
        moved_seg = spatial.warp(moving_seg, torch.from_numpy(disp)[None], mode="nearest")
        dice = float(metrics.dice(moved_seg, fixed_seg_t, labels).mean[0])
        ax = fig.add_subplot(2, cols, 3 + j)
        show(ax, moved, label.replace(" (", "\n(") + f"\nDice {dice:.3f}", cmap="gray", vmin=0, vmax=1)
        ax.contour(
            np.arange(fixed.shape[0]),
            np.arange(fixed.shape[1]),
            (fixed_seg > 0).T.astype(float),
            levels=[0.5],
            colors="cyan",
            linewidths=0.4,
        )
        ax2 = fig.add_subplot(2, cols, cols + 3 + j)
        det = spatial.jacobian_det(torch.from_numpy(disp)[None])[0].numpy()
        im = show(ax2, det, f"det J ≤ 0: {100 * float((det <= 0).mean()):.3f} %", cmap="RdBu_r", vmin=0, vmax=2)
        _grid_lines(ax2, disp)
        ax2.set_xlim(-0.5, fixed.shape[0] - 0.5)
        ax2.set_ylim(fixed.shape[1] - 0.5, -0.5)
    ax = fig.add_subplot(2, cols, cols + 1)
    ax.axis("off")
    ax.text(
        0,
        0.5,
        f"test pair {pair}\nmoving {row['moving'].name.split('.')[0][6:]}\n"
        f"fixed {row['fixed'].name.split('.')[0][6:]}\n\ntop: moved image,\nseg24 Dice of the pair\n"
        "(cyan: fixed brain)\nbottom: det J and\ndeformed grid",
        fontsize=7,
        va="center",
    )
    fig.subplots_adjust(left=0.01, right=0.99, top=0.9, bottom=0.02, wspace=0.05, hspace=0.25)
    if im is not None:
        slot = fig.add_subplot(2, cols, cols + 2)
        box = slot.get_position()
        slot.remove()
        cax = fig.add_axes([box.x0 + 0.4 * box.width, box.y0, 0.12 * box.width, box.height])
        cbar = fig.colorbar(im, cax=cax)
        cbar.ax.tick_params(labelsize=6)
        cbar.set_label("det J", fontsize=7)
    fig.savefig(path, dpi=110)
    _quantise_png(path)  # many panels: keep the committed PNG well under 1 MB


def _quantise_png(path: Path) -> None:
    """Re-save a PNG with a 256-colour palette (figures of images compress 2-3x)."""
    from PIL import Image

    with Image.open(path) as image:
        palette = image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    palette.save(path, optimize=True)


def figure_3d(results3: dict[str, Result], path: Path) -> bool:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = [
        m.name
        for m in cfg.methods_3d()
        if m.name in results3 and m.name != "none" and (results3[m.name].folder / "examples.npz").exists()
    ]
    if not names:
        return False
    data = {n: np.load(results3[n].folder / "examples.npz") for n in names}
    first = data[names[0]]
    cols = 2 + 2 * len(names)
    fig = Figure(figsize=(1.6 * cols, 5.2))
    FigureCanvasAgg(fig)
    titles = ["fixed", "moving"]
    for n in names:
        label = results3[n].info.get("label", n).replace(" (", "\n(")
        titles += [f"{label}\nmoved", "det J"]
    for k in range(3):
        panels = [first[f"fixed{k}"], first[f"moving{k}"]]
        for n in names:
            panels += [data[n][f"moved{k}"], data[n][f"det{k}"]]
        for j, panel in enumerate(panels):
            ax = fig.add_subplot(3, cols, k * cols + j + 1)
            is_det = j >= 2 and (j - 2) % 2 == 1
            ax.imshow(panel.T, origin="upper", cmap="RdBu_r" if is_det else "gray", vmin=0, vmax=2 if is_det else 1)
            ax.set_xticks([])
            ax.set_yticks([])
            if k == 0:
                ax.set_title(titles[j], fontsize=6)
    pair = results3[names[0]].pairs["seg35"][0]["pair"] if results3[names[0]].pairs["seg35"] else ""
    fig.suptitle(f"3D, direction {pair}: central slices across each axis (det J colour range 0 to 2)", fontsize=8)
    fig.subplots_adjust(left=0.01, right=0.99, top=0.86, bottom=0.01, wspace=0.04, hspace=0.06)
    fig.savefig(path, dpi=110)
    return True


def training_figure(study: Path, results: dict[str, Result], path: Path) -> bool:
    """Similarity loss during training for the models trained with NCC λ=1 (same pairs, same order)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    curves = {}
    for name in ("morphreg_ncc_l1", "morphreg_diffeo", "morphreg_semisup", *PEERS):
        if name not in results:
            continue
        rows = _csv(cfg.run_dir(cfg.method(name)) / "metrics.csv")
        if rows:
            curves[name] = (np.array([_float(r["step"]) for r in rows]), np.array([_float(r["sim"]) for r in rows]))
    if not curves:
        return False
    fig = Figure(figsize=(7, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for name, (step, sim) in curves.items():
        window = max(1, len(sim) // 20)
        smooth = np.convolve(sim, np.ones(window) / window, mode="valid")
        ax.plot(step[window - 1 :], smooth, label=results[name].info.get("label", name))
    ax.set_xlabel("training step")
    ax.set_ylabel("NCC similarity loss (each tool's own; lower is better)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title("Training: similarity term (running mean)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


# ---------------------------------------------------------------------------------------------
# the report


def paired(results: dict[str, Result], a: str, b: str, seg: str = "seg24") -> tuple[float, float, int]:
    """Mean paired difference of Dice (a - b) over pairs both scored, and the Wilcoxon p-value."""
    from scipy.stats import wilcoxon

    da = {r["pair"]: _float(r["dice_after"]) for r in results[a].pairs[seg]}
    db = {r["pair"]: _float(r["dice_after"]) for r in results[b].pairs[seg]}
    keys = [k for k in da if k in db and math.isfinite(da[k]) and math.isfinite(db[k])]
    diff = np.array([da[k] - db[k] for k in keys])
    if diff.size == 0:
        return math.nan, math.nan, 0
    p = float(wilcoxon(diff).pvalue) if np.any(diff != 0) else 1.0
    return float(diff.mean()), p, int(diff.size)


def write_report(study: Path, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    results, results3 = load_results(study)
    machine = _json(study / "machine.json") or {}
    check = _json(study / "check.json") or {}
    steps = os.environ.get("STEPS") or machine.get("STEPS") or "?"
    started, finished = (study / "started"), (study / "finished")
    wall = (
        (int(finished.read_text()) - int(started.read_text())) / 60
        if started.exists() and finished.exists()
        else math.nan
    )
    present = [m for m in cfg.methods_2d() if m.name in results]
    missing = [m for m in cfg.methods_2d() if m.name not in results]
    missing3 = [m for m in cfg.methods_3d() if m.name not in results3]
    syn_seconds = {s: seconds(results[s]) for s in SYN if s in results}

    md: list[str] = []
    md.append("# OASIS study: MSE vs NCC, the λ trade-off, and morphreg next to ANTs, voxelmorph and MONAI\n")
    only = machine.get("ONLY", "")
    only_prefix = f'ONLY="{only}" ' if only else ""
    if only:
        md.append(
            f"**Partial run**: only the 2D methods `{only}` were run (`ONLY=...` of `run_study.sh`, no 3D); "
            "every other method is listed as missing. The full study is `docs/results/study.md`.\n"
        )
    md.append(
        "Generated by `bash benchmarks/run_study.sh` (then `python benchmarks/report_study.py`); every "
        "number below is read from the study's output files. Do not edit by hand.\n"
    )
    versions = machine.get("versions", {})
    md.append("## Machine and settings\n")
    md.append(
        table(
            ["", ""],
            [
                [
                    "CPU",
                    f"{machine.get('cpu', '?')}, {machine.get('logical_cores', '?')} logical cores "
                    f"({machine.get('affinity_cores', '?')} usable), {machine.get('memory', '?')} RAM",
                ],
                [
                    "threads",
                    f"{machine.get('threads_per_job', 1)} per job (torch.set_num_threads(1), "
                    "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=1), at most "
                    f"{machine.get('PARALLEL', os.environ.get('PARALLEL', '2'))} jobs at once",
                ],
                ["software", ", ".join(f"{k} {v}" for k, v in versions.items())],
                [
                    "training budget",
                    f"STEPS={steps} steps for every learned 2D model (batch 1, Adam lr {cfg.LR:g}, "
                    f"seed {cfg.SEED}), one thread each",
                ],
                [
                    "run",
                    f"{machine.get('date', '?')}; whole command {wall:.0f} min wall"
                    if math.isfinite(wall)
                    else machine.get("date", "?"),
                ],
            ],
        )
    )
    md.append(
        f"\nCommand: `{only_prefix}STEPS={steps} bash benchmarks/run_study.sh` "
        "(peers: `pip install -r benchmarks/requirements.txt "
        "-c benchmarks/constraints.txt`).\n"
    )

    n_pairs = results["none"].info.get("n_pairs", "?") if "none" in results else "?"
    md.append("## Data and protocol\n")
    md.append(
        "* **2D**: neurite-OASIS 2D slices (160×192, 1 mm), prepared by `benchmarks/prepare_oasis2d.py`: the "
        "first 300 subjects train, the last 64 are test subjects never used in training. The same fixed "
        f"**{n_pairs} test pairs** "
        "(`benchmarks/oasis2d_test_pairs.csv`: subject i → i+1 and i+2) for every method; Dice on the 24 "
        "structures (seg24) and the 4 tissue classes (seg4) of the same pairs; "
        "HD95 on seg24 in mm (spacing from the image affine: 1 mm voxels).\n"
        f"* **Inputs**: every method gets the same normalised images: `{cfg.NORMALISE}` (morphreg's default "
        "normalisation: clip to the 0.5th/99.5th percentiles, scale to [0, 1]); the learned models are trained "
        "on the same. The colleagues' acceptance models get the normalisation recorded in their checkpoints.\n"
        "* **Training** (all learned 2D models): morphreg's subject-wise split of the 300 training subjects "
        f"(`split_subjects(300, {cfg.VAL_FRACTION}, seed={cfg.SEED})`: 240 train, 60 validation), random "
        "inter-subject pairs in the *same order* for every model (the peers replay morphreg's seeded sampler), "
        f"batch 1, Adam lr {cfg.LR:g}, NCC window {cfg.NCC_WINDOW}, λ=1 for NCC and 0.01 for MSE unless stated, "
        f"STEPS={steps}. morphreg models are trained by `morphreg train` and scored at their *last* step "
        "(`last.pt`, no checkpoint selection), like the peers. The semi-supervised model adds "
        f"γ={cfg.SEG_WEIGHT:g} × Dice loss on the warped seg24 maps of the training subjects.\n"
        "* **Peers**: voxelmorph 0.3.4 `VxmPairwise` with its own defaults (neurite `BasicUNet`: one 16-channel "
        "convolution per level from full resolution down to 1/32, ReLU; flow head N(0, 1e-5); 5 scaling-and-squaring "
        "steps, i.e. diffeomorphic) and its own losses (neurite `NCC(window 9)`, `SpatialGradient('l2')` on the "
        "velocity, as voxelmorph's scripts do). MONAI 1.6.1 `VoxelMorph` with the backbone its documentation "
        "gives as the paper's (`VoxelMorphUNet` channels 16,32,32,32,32,32, final convolutions 16,16, LeakyReLU "
        "0.2), displacement variant (`integration_steps=0`), and MONAI's losses "
        "(`LocalNormalizedCrossCorrelationLoss(kernel 9, rectangular)`, `DiffusionLoss` weighted λ/2 because it "
        "sums squared central differences over the 2 axes where morphreg and voxelmorph average squared forward "
        "differences). Against morphreg's `VxmDense` (the paper's encoder 16,32,32,32 at 1/2…1/16 resolution, "
        "decoder 32,32,32,32,32,16,16, flow head N(0, 1e-5)), MONAI's U-Net convolves at 1, 1/2, 1/4 and 1/8 "
        "resolution (one level fewer), has decoder 32,32,32 then 16,16, and a default-initialised flow head; "
        "voxelmorph 0.3.4's default network is a different, smaller design (see the parameter counts). "
        "*voxelmorph 0.3.4, paper architecture* is the same library with VxmDense's network "
        "(`study_peers.build_vxm_paper`: `VxmPairwise(nb_features=[[16,32,32,32],[32,32,32,32]], LeakyReLU 0.2, "
        "nearest upsampling, integration_steps=0)` with neurite's convolutions 32→16→16 and a 16→2 flow head "
        "N(0, 1e-5): the same 109,170 parameters, convolution shapes and order, and the same field as VxmDense "
        "with copied weights, checked in `bench_speed.py`), non-diffeomorphic like morphreg's NCC model, with "
        "voxelmorph's own losses (`NCC(9)`, `SpatialGradient('l2')` on the displacement): it separates the "
        "architecture from the implementation.\n"
        "* **ANTs**: `ants.registration(fixed, moving, type_of_transform=...)` with `SyN` (antspyx's default: "
        "affine + SyN, Mattes MI) and `SyNCC` (rigid + affine + SyN with CC), random seed 0. The dense "
        "displacement is recovered exactly by pushing coordinate images through `fwdtransforms` "
        "(linear interpolation of a linear function is exact). ANTs is not bit-reproducible here even with "
        "`--random-seed 0` and one ITK thread (antspyx itself calls only its `*Repro` transforms "
        "reproducible): repeated runs of a pair give slightly different fields.\n"
        "* **Time per pair**: the registration call only: network forward pass in `torch.inference_mode()` "
        "or the `ants.registration` call (field extraction not counted); one thread; measured in a dedicated "
        "phase after all scoring, one method at a time.\n"
        "* **Peak memory**: in the timing run, each method in its own process: `ru_maxrss` (resident "
        "high-water mark) is read after imports, the model and the test images are loaded, and again after "
        "the warm-up and timed registrations; the table gives the increase (what registration needs on top of "
        "a loaded process) and the absolute peak.\n"
    )

    if check:
        md.append(
            "**Convention checks** (`study_oasis2d.py check`, synthetic): each adapter's field warps the "
            "moving image exactly as the peer does itself — voxelmorph transformer vs morphreg warp: max "
            f"abs {check.get('vxm_transformer_max_abs', math.nan):.2g}; MONAI `Warp`: "
            f"{check.get('monai_warp_max_abs', math.nan):.2g}; models' own warped outputs vs morphreg warp "
            f"of the adapter field: voxelmorph {check.get('vxm_model_warp_max_abs', math.nan):.2g} "
            f"(paper architecture {check.get('vxm_paper_model_warp_max_abs', math.nan):.2g}), MONAI "
            f"{check.get('monai_model_warp_max_abs', math.nan):.2g} (fields up to "
            f"{check.get('monai_model_disp_abs_max', math.nan):.1f} voxels); ANTs on a known shift "
            f"{check.get('ants_shift_expected')}: recovered median "
            f"{[round(v, 3) for v in check.get('ants_shift_median', [])]}, correlation of morphreg's warp "
            f"with ANTs' `warpedmovout` {check.get('ants_warp_corr_inside', math.nan):.6f}."
        )
        corr = [results[s].info.get("ants_warp_corr_min") for s in SYN if s in results]
        if corr:
            md.append(
                f" On the real test pairs, the minimum such correlation over all pairs is "
                f"{min(c for c in corr if c is not None):.6f}."
            )
        md.append("\n")

    # ---- 2D table
    md.append(f"## 1. Accuracy on real 2D brains ({n_pairs} test pairs)\n")
    rows = []
    for m in present:
        r = results[m.name]
        sec = seconds(r)
        speed = ""
        if "ants_syn" in syn_seconds and m.kind in ("peer", "morphreg") and sec > 0:
            speed = f"{syn_seconds['ants_syn'] / sec:,.0f}×"
        mem = r.timing.get("memory", {})
        rows.append(
            [
                r.info.get("label", m.name),
                training_text(r),
                pm(r.stat("seg24", "dice_after")),
                pm(r.stat("seg4", "dice_after")),
                pm(r.stat("seg24", "hd95_after"), 2),
                f"{fmt_pct(r.stat('seg24', 'folding_pct')['mean'])} ± {fmt_pct(r.stat('seg24', 'folding_pct')['sd'])}",
                pm(r.stat("seg24", "sdlogj"), 3),
                f"{fmt_seconds(sec)} ± {fmt_seconds(r.timing.get('sd', math.nan))}" if r.timing else "–",
                fmt_seconds(r.stat("seg24", "seconds")["mean"]),
                speed,
                f"{mem.get('registration_mib', math.nan):.0f} / {mem.get('peak_maxrss_mib', math.nan):.0f}",
                f"{r.info['parameters']:,}" if r.info.get("parameters") else "–",
            ]
        )
    md.append(
        table(
            [
                "method",
                "training",
                "Dice seg24",
                "Dice seg4",
                "HD95 seg24 (mm)",
                "% folding",
                "SDlogJ",
                "s / pair",
                "s / pair (in eval.)",
                "speed-up vs SyN",
                "memory MiB (+reg / peak)",
                "parameters",
            ],
            rows,
        )
    )
    tp = next((r.timing for r in results.values() if r.timing), {})
    md.append(
        "\nMean ± sd over pairs. % folding: voxels with det J ≤ 0. SDlogJ: sd of log det J "
        f"(clamped at 1e-9). **s / pair**: the dedicated timing phase (first {tp.get('pairs', '?')} test pairs "
        f"after {tp.get('warmup_pairs', '?')} warm-up registrations, one method at a time, one thread); "
        "*s / pair (in eval.)*: mean over all pairs during the scoring run, when another study job "
        "shared the 2 cores. Speed-up: ANTs SyN (default) s / pair over the method's s / pair.\n"
    )
    loads = [r.timing.get("loadavg_before", [math.nan])[0] for r in results.values() if r.timing]
    if loads:
        md.append(
            f"System load (1-min load average) at the start of the timing runs: {min(loads):.2f} to "
            f"{max(loads):.2f} on {machine.get('logical_cores', '?')} cores (other users' jobs included).\n"
        )
    if missing:
        md.append("Missing (no outputs): " + ", ".join(m.label for m in missing) + ".\n")
    box_names = [n for n in ["none", "ants_syn", "ants_syncc", *PEERS, *MAIN] if n in results]
    if box_names:
        boxplot_figure(results, box_names, out / "study_dice_boxplot.png")
        md.append("![per-structure Dice](study_dice_boxplot.png)\n")
    ex_names = [n for n in ["ants_syn", "ants_syncc", *PEERS, *MAIN] if n in results]
    if ex_names:
        example_figure(results, ex_names, out / "study_examples.png")
        md.append("![example registrations](study_examples.png)\n")

    # ---- targets
    md.append("### Targets\n")
    trows = []
    for name in MAIN:
        if name not in results:
            continue
        r = results[name]
        for syn in SYN:
            if syn not in results:
                continue
            diff, p, n = paired(results, name, syn)
            trows.append(
                [
                    r.info["label"],
                    f"Dice seg24 ≥ {results[syn].info['label']}",
                    f"{r.stat('seg24', 'dice_after')['mean']:.4f} vs "
                    f"{results[syn].stat('seg24', 'dice_after')['mean']:.4f}"
                    f" (paired Δ {diff:+.4f}, Wilcoxon p={p:.2g}, n={n})",
                    "met" if diff >= 0 else f"missed by {-diff:.4f}",
                ]
            )
        fold = r.stat("seg24", "folding_pct")
        worst = float(np.nanmax(r.per_pair("seg24", "folding_pct"))) if r.pairs["seg24"] else math.nan
        trows.append(
            [
                r.info["label"],
                f"< {FOLD_TARGET} % folding" + (" (≈ 0 for diffeomorphic)" if "diffeo" in name else ""),
                f"mean {fmt_pct(fold['mean'])} %, worst pair {fmt_pct(worst)} %",
                ("met" if fold["mean"] < FOLD_TARGET else f"missed by {fold['mean'] - FOLD_TARGET:.3f} points")
                + ("" if "diffeo" not in name else (" (exactly 0 in every pair)" if worst == 0 else "")),
            ]
        )
        sec = seconds(r)
        for syn in SYN:
            if syn in syn_seconds:
                ratio = syn_seconds[syn] / sec
                trows.append(
                    [
                        r.info["label"],
                        f"≥ {SPEED_TARGET:.0f}× faster than {results[syn].info['label']}",
                        f"{fmt_seconds(sec)} s vs {fmt_seconds(syn_seconds[syn])} s per pair: {ratio:,.0f}×",
                        "met"
                        if ratio >= SPEED_TARGET
                        else f"missed by a factor {SPEED_TARGET / ratio:,.0f} "
                        f"({ratio:,.0f}× instead of {SPEED_TARGET:,.0f}×)",
                    ]
                )
    md.append(table(["model", "target", "measured", "verdict"], trows) if trows else "No morphreg results.")
    md.append("")

    # ---- study
    md.append("\n## 2. The study: MSE vs NCC and the smoothness weight λ\n")
    srows = []
    for loss in ("ncc", "mse"):
        for value, r in sweep_points(results, loss):
            srows.append(
                [
                    loss.upper(),
                    f"{value:g}",
                    pm(r.stat("seg24", "dice_after")),
                    pm(r.stat("seg4", "dice_after")),
                    pm(r.stat("seg24", "hd95_after"), 2),
                    f"{fmt_pct(r.stat('seg24', 'folding_pct')['mean'])} "
                    f"± {fmt_pct(r.stat('seg24', 'folding_pct')['sd'])}",
                    pm(r.stat("seg24", "sdlogj"), 3),
                ]
            )
    md.append(table(["loss", "λ", "Dice seg24", "Dice seg4", "HD95 seg24", "% folding", "SDlogJ"], srows))
    sweep_figure(results, out / "study_lambda_sweep.png")
    md.append("\n![lambda sweep](study_lambda_sweep.png)\n")
    if training_figure(study, results, out / "study_training.png"):
        md.append(
            "Training curves of the NCC models (the peers' losses are their own implementations of the "
            "same local NCC, so the curves are comparable up to their numerical details):\n"
        )
        md.append("![training curves](study_training.png)\n")

    # ---- 3D
    md.append("## 3. 3D: the two OASIS volumes, both directions\n")
    if results3:
        shape = next(iter(results3.values())).info.get("shape")
        rows3 = []
        for m in cfg.methods_3d():
            if m.name not in results3:
                continue
            r = results3[m.name]
            per35 = {row["pair"]: _float(row["dice_after"]) for row in r.pairs["seg35"]}
            per4 = {row["pair"]: _float(row["dice_after"]) for row in r.pairs["seg4"]}
            fold = {row["pair"]: _float(row["folding_pct"]) for row in r.pairs["seg35"]}
            secs = {row["pair"]: _float(row["seconds"]) for row in r.pairs["seg35"]}
            keys = list(per35)
            rows3.append(
                [
                    r.info.get("label", m.name),
                    " / ".join(f"{per35[k]:.3f}" for k in keys) + f" (mean {np.mean(list(per35.values())):.3f})",
                    " / ".join(f"{per4[k]:.3f}" for k in keys),
                    " / ".join(fmt_pct(fold[k]) for k in keys),
                    pm(r.stat("seg35", "sdlogj"), 3),
                    " / ".join(fmt_seconds(secs[k]) for k in keys),
                ]
            )
        order = " / ".join(row["pair"] for row in next(iter(results3.values())).pairs["seg35"])
        md.append(
            f"Volumes {shape} (1 mm), directions {order} (0001 = OAS1_0001). Same protocol: "
            f"`{cfg.NORMALISE}` inputs, one thread, Dice over the labels present.\n"
        )
        md.append(table(["method", "Dice seg35", "Dice seg4", "% folding", "SDlogJ (mean ± sd)", "seconds"], rows3))
        loads = [r.info.get("loadavg_after", [math.nan])[0] for r in results3.values()]
        md.append(
            f"\nSeconds: the registration call per direction (ANTs: `ants.registration`; morphreg: "
            f"`register_dense`), one thread, measured while another study job shared the 2 cores "
            f"(1-min load average after the runs: {min(loads):.1f} to {max(loads):.1f})."
        )
        dense = dict(cfg.DENSE3D)
        md.append(
            f"\nmorphreg's entry is instance optimisation (`morphreg.optimize.register_dense`; two volumes "
            f"are too few to train a network): {dense['loss'].upper()} (window 9) + λ={dense['weight']:g} × "
            f"{dense['regulariser']} regulariser, Adam lr {dense['lr']:g} (cosine-decayed), {dense['levels']} "
            f"levels with {tuple(dense['iterations'])} iterations coarse to fine: the full-resolution level "
            "gets no iterations (one costs several seconds on one thread here), so the half-resolution "
            "field is upsampled and scored at full resolution. The diffeomorphic variant optimises a "
            "stationary velocity (7 scaling-and-squaring steps). SyNCC was not run in 3D: its default "
            "schedule (CC radius 4, 2100×1200×1200×20 iterations) takes far longer than this study's time "
            "budget on one thread. HD95 is not computed in 3D.\n"
        )
    if results3 and figure_3d(results3, out / "study_3d.png"):
        md.append("![3D example](study_3d.png)\n")
    if missing3:
        md.append("Missing 3D results: " + ", ".join(m.label for m in missing3) + ".\n")

    # ---- conclusion
    md.append("## Conclusion (generated from the numbers above)\n")
    md.extend(conclusion(results, results3, steps))
    path = out / "study.md"
    path.write_text("\n".join(md) + "\n")
    return path


def _dice(results: dict[str, Result], name: str, seg: str = "seg24") -> float:
    return results[name].stat(seg, "dice_after")["mean"] if name in results else math.nan


def _fold(results: dict[str, Result], name: str) -> float:
    return results[name].stat("seg24", "folding_pct")["mean"] if name in results else math.nan


def _trend(values: list[float]) -> str:
    d = np.diff(values)
    if np.all(d < 0):
        return "falls monotonically"
    if np.all(d > 0):
        return "rises monotonically"
    return "is not monotone"


def conclusion(results: dict[str, Result], results3: dict[str, Result], steps: str) -> list[str]:
    out: list[str] = []
    ncc, mse = "morphreg_ncc_l1", "morphreg_mse_l0.01"
    if ncc in results and mse in results:
        diff, p, n = paired(results, ncc, mse)
        better = "NCC" if diff > 0 else "MSE"
        out.append(
            f"* **MSE vs NCC** (paper's λ, {steps} steps): NCC reaches Dice {_dice(results, ncc):.3f} (seg24) / "
            f"{_dice(results, ncc, 'seg4'):.3f} (seg4), MSE "
            f"{_dice(results, mse):.3f} / {_dice(results, mse, 'seg4'):.3f}; "
            f"{better} is ahead by {abs(diff):.3f} seg24 Dice on the same pairs (Wilcoxon p={p:.2g}, n={n}), "
            f"with {_fold(results, ncc):.3f} % vs {_fold(results, mse):.3f} % folding."
        )
    for loss in ("ncc", "mse"):
        pts = sweep_points(results, loss)
        if len(pts) >= 2:
            lam = [p[0] for p in pts]
            dice = [p[1].stat("seg24", "dice_after")["mean"] for p in pts]
            fold = [p[1].stat("seg24", "folding_pct")["mean"] for p in pts]
            best = lam[int(np.argmax(dice))]
            out.append(
                f"* **λ sweep, {loss.upper()}** (λ = {', '.join(f'{v:g}' for v in lam)}): Dice "
                f"{' → '.join(f'{v:.3f}' for v in dice)} ({_trend(dice)}; best at λ={best:g}); folding "
                f"{' → '.join(f'{v:.3f}' for v in fold)} % ({_trend(fold)}). From λ={lam[0]:g} to λ={lam[-1]:g}, "
                f"Dice changes by {dice[-1] - dice[0]:+.3f} and folding by {fold[-1] - fold[0]:+.3f} points."
            )
    if "morphreg_diffeo" in results and ncc in results:
        out.append(
            "* **Diffeomorphic** (NCC λ=1, 7 steps at half resolution): "
            f"Dice {_dice(results, 'morphreg_diffeo'):.3f} vs "
            f"{_dice(results, ncc):.3f} for the displacement model, "
            f"folding {fmt_pct(_fold(results, 'morphreg_diffeo'))} % vs "
            f"{fmt_pct(_fold(results, ncc))} %."
        )
    if "morphreg_semisup" in results and ncc in results:
        diff, p, n = paired(results, "morphreg_semisup", ncc)
        d4, _, _ = paired(results, "morphreg_semisup", ncc, "seg4")
        out.append(
            f"* **Semi-supervised** (γ={cfg.SEG_WEIGHT:g}, seg24 of training subjects): {diff:+.3f} seg24 Dice "
            f"(p={p:.2g}) and {d4:+.3f} seg4 Dice relative to the unsupervised NCC model, folding "
            f"{_fold(results, 'morphreg_semisup'):.3f} %."
        )
    for syn in SYN:
        if syn in results and ncc in results:
            diff, p, n = paired(results, ncc, syn)
            best_name = max((n2 for n2 in MAIN if n2 in results), key=lambda n2: _dice(results, n2))
            d_best, p_best, _ = paired(results, best_name, syn)
            r = results[syn]
            ratio = seconds(r) / seconds(results[ncc])
            out.append(
                f"* **vs {r.info['label']}** (Dice {_dice(results, syn):.3f}, {seconds(r):.2f} s/pair, "
                f"folding {fmt_pct(_fold(results, syn))} %): morphreg NCC {diff:+.3f} Dice (p={p:.2g}); the best "
                f"morphreg model ({results[best_name].info['label']}) {d_best:+.3f} (p={p_best:.2g}); "
                f"morphreg NCC is {ratio:,.0f}× faster per pair."
            )
    for peer in ("monai", "vxm034", "vxm034_paper"):
        if peer in results and ncc in results:
            diff, p, n = paired(results, ncc, peer)
            same = peer == "vxm034_paper"
            out.append(
                f"* **vs {results[peer].info['label']}** (same data, order, steps and NCC loss; "
                + ("the same architecture as VxmDense" if same else "its own architecture")
                + f"): morphreg NCC {diff:+.3f} seg24 Dice (p={p:.2g}); folding "
                f"{fmt_pct(_fold(results, ncc))} % vs {fmt_pct(_fold(results, peer))} %."
            )
    if "vxm034" in results and "vxm034_paper" in results:
        arch, p_arch, _ = paired(results, "vxm034_paper", "vxm034")
        line = (
            f"* **Architecture vs implementation**: within voxelmorph 0.3.4, the paper's architecture scores "
            f"{arch:+.3f} seg24 Dice over its small default (p={p_arch:.2g})"
        )
        if ncc in results:
            impl, p_impl, _ = paired(results, ncc, "vxm034_paper")
            line += (
                f"; with the architecture matched, morphreg NCC differs from voxelmorph by {impl:+.3f} "
                f"(p={p_impl:.2g}): the gap to voxelmorph's default is its architecture, not the implementation"
                if abs(impl) < abs(arch) / 4
                else f"; with the architecture matched, morphreg NCC differs from voxelmorph by {impl:+.3f} "
                f"(p={p_impl:.2g})"
            )
        out.append(line + ".")
    if "none" in results and ncc in results:
        out.append(
            f"* Without registration the pairs overlap at Dice {_dice(results, 'none'):.3f} (seg24) / "
            f"{_dice(results, 'none', 'seg4'):.3f} (seg4)."
        )
    for loss in ("ncc", "mse"):
        main = ncc if loss == "ncc" else mse
        runs = [
            n
            for n, r in results.items()
            if r.info.get("group") == "acceptance" and (r.info.get("train") or {}).get("loss") == loss
        ]
        if runs and main in results:
            acc = max(runs, key=lambda n: (results[n].info.get("train") or {}).get("steps") or 0)
            train = results[acc].info.get("train", {})
            out.append(
                f"* **Training length** ({loss.upper()}): the longest acceptance model, {results[acc].info['label']} "
                f"({train.get('steps')} steps, {_float(str(train.get('seconds'))) / 60:.0f} min, "
                f"{results[acc].info.get('normalise')} inputs, best-validation checkpoint), reaches Dice "
                f"{_dice(results, acc):.3f} with {fmt_pct(_fold(results, acc))} "
                f"% folding, vs {_dice(results, main):.3f} "
                f"and {fmt_pct(_fold(results, main))} % after the study's {steps} steps."
            )
    if results3:
        parts = []
        for name in ("none", "ants_syn", "morphreg_dense", "morphreg_dense_diffeo"):
            if name in results3:
                r = results3[name]
                parts.append(
                    f"{r.info['label']} Dice {r.stat('seg35', 'dice_after')['mean']:.3f} (seg35) / "
                    f"{r.stat('seg4', 'dice_after')['mean']:.3f} (seg4), "
                    f"{fmt_pct(r.stat('seg35', 'folding_pct')['mean'])} % "
                    f"folding, {r.stat('seg35', 'seconds')['mean']:.0f} s"
                )
        out.append("* **3D** (mean of both directions): " + "; ".join(parts) + ".")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", type=Path, default=cfg.STUDY)
    parser.add_argument("--out", type=Path, default=cfg.RESULTS)
    args = parser.parse_args(argv)
    path = write_report(args.study, args.out)
    print(f"report: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
