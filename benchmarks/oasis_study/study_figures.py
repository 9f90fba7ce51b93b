"""The figures of the OASIS study report (PNG, written next to ``study.md``)."""

from __future__ import annotations

import math
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.oasis_study import study_config as cfg
from benchmarks.oasis_study.study_results import PEERS, Result, read_csv, to_float


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
            value = to_float(row["dice_after"])
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
        rows = read_csv(cfg.run_dir(cfg.method(name)) / "metrics.csv")
        if rows:
            curves[name] = (np.array([to_float(r["step"]) for r in rows]), np.array([to_float(r["sim"]) for r in rows]))
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
