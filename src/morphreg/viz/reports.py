"""Figures of a run or an evaluation from its tables: training curves (metrics.csv), Dice box plots."""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib import colors as mcolors
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from ._common import Array, PathLike, save_figure
from .inputs import to_numpy

#: Columns plotted by :func:`plot_training_curves`, in this order, when present.
TRAINING_QUANTITIES = ("loss", "sim", "smooth", "seg", "val_dice", "lr")


def _read_metrics(fn: str, source: PathLike | Mapping[str, Sequence[float]]) -> dict[str, Array]:
    if isinstance(source, Mapping):
        columns = {str(k): list(v) for k, v in source.items()}
    else:
        try:
            with open(source, newline="") as f:
                rows = list(csv.DictReader(f))
        except OSError as err:
            raise ValueError(f"{fn}: cannot read metrics CSV {str(source)!r}: {err}") from err
        names = list(rows[0].keys()) if rows else []
        columns = {n: [r.get(n) for r in rows] for n in names if n is not None}

    def as_float(v: object) -> float:
        if v is None or (isinstance(v, str) and v.strip() == ""):
            return math.nan
        try:
            return float(v)
        except (TypeError, ValueError):
            return math.nan

    out = {k: np.array([as_float(v) for v in vals], dtype=np.float64) for k, vals in columns.items()}
    if "step" not in out:
        raise ValueError(
            f"{fn}: argument 'csv_path_or_dict' must have a 'step' column, got columns "
            f"{sorted(out)}"
        )
    lengths = {k: len(v) for k, v in out.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(
            f"{fn}: argument 'csv_path_or_dict' columns must have equal lengths, got {lengths}"
        )
    return out


def _is_noisy(values: Array) -> bool:
    """Step-to-step jitter above 2% of the range (a smooth curve needs no moving average)."""
    spread = float(np.ptp(values))
    jitter = float(np.median(np.abs(np.diff(values, 2)))) if len(values) > 2 else 0.0
    return spread > 0 and jitter > 0.02 * spread


def _smooth(values: Array, window: int) -> Array:
    """Moving average over the finite points (same length, edges use fewer points)."""
    kernel = np.ones(window)
    num = np.convolve(values, kernel, mode="same")
    den = np.convolve(np.ones_like(values), kernel, mode="same")
    return num / den


def plot_training_curves(
    csv_path_or_dict: PathLike | Mapping[str, Sequence[float]],
    path: PathLike,
    *,
    quantities: Sequence[str] = TRAINING_QUANTITIES,
    title: str | None = None,
) -> Path:
    """One subplot per logged quantity against ``step``.

    Columns of ``quantities`` that are missing or empty are skipped; empty cells (e.g.
    ``val_dice`` logged every N steps) are ignored. Long noisy series are drawn faint with a
    moving average on top; ``lr`` uses a log axis when positive.

    Args:
        csv_path_or_dict: a metrics CSV with a header row, or ``{column: values}``; needs
            ``step``.
        path: output file.
        quantities: the columns to plot, in order.
        title: figure title.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    fn = "morphreg.viz.plot_training_curves"
    data = _read_metrics(fn, csv_path_or_dict)
    step = data["step"]
    present = []
    for name in quantities:
        if name in data:
            keep = np.isfinite(data[name]) & np.isfinite(step)
            if keep.any():
                present.append((name, step[keep], data[name][keep]))
    if not present:
        raise ValueError(
            f"{fn}: argument 'csv_path_or_dict' has none of the columns {list(quantities)} "
            f"with values, got columns {sorted(data)}"
        )
    ncols = min(3, len(present))
    nrows = math.ceil(len(present) / ncols)
    fig = Figure(figsize=(4.2 * ncols, 2.9 * nrows + 0.4), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax, (name, x, y) in zip(axes.ravel(), present):
        order = np.argsort(x, kind="stable")
        x, y = x[order], y[order]
        if len(y) > 50 and _is_noisy(y):
            window = max(5, len(y) // 25)
            ax.plot(x, y, color="C0", alpha=0.3, linewidth=0.8, label="raw")
            ax.plot(x, _smooth(y, window), color="C0", linewidth=1.6,
                    label=f"mean of {window}")
            ax.legend(fontsize=7, loc="best")
        else:
            ax.plot(x, y, color="C0", marker="o" if len(y) <= 30 else None, markersize=3)
        if name == "val_dice":
            best = int(np.argmax(y))
            ax.set_title(f"{name}: best {y[best]:.4g} @ step {x[best]:g}", fontsize=10)
        else:
            ax.set_title(f"{name}: last {y[-1]:.4g}", fontsize=10)
        if name == "lr" and (y > 0).all():
            ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in axes.ravel()[len(present):]:
        ax.set_visible(False)
    fig.suptitle(title or "training", fontsize=12)
    return save_figure(fig, path)


def _dice_table(fn: str, per_structure: object) -> dict[str, dict[str, Array]]:
    if not isinstance(per_structure, Mapping) or not per_structure:
        raise ValueError(
            f"{fn}: argument 'per_structure' must be a non-empty mapping "
            f"{{method: {{structure: [values]}}}}, got {type(per_structure).__name__}"
        )
    # a single method given as {structure: [values]}
    if not any(isinstance(v, Mapping) for v in per_structure.values()):
        per_structure = {"": per_structure}
    table: dict[str, dict[str, Array]] = {}
    for method, structures in per_structure.items():
        if not isinstance(structures, Mapping):
            raise ValueError(
                f"{fn}: argument 'per_structure' must map every method to "
                f"{{structure: [values]}}, got {type(structures).__name__} for {method!r}"
            )
        table[str(method)] = {}
        for structure, values in structures.items():
            arr = to_numpy(fn, "per_structure", values).astype(np.float64).ravel()
            table[str(method)][str(structure)] = arr[np.isfinite(arr)]
    if not any(v.size for s in table.values() for v in s.values()):
        raise ValueError(f"{fn}: argument 'per_structure' holds no finite values")
    return table


def plot_dice_boxplot(
    per_structure: Mapping[str, Mapping[str, Sequence[float]]] | Mapping[str, Sequence[float]],
    path: PathLike,
    *,
    title: str | None = None,
) -> Path:
    """Per-structure Dice box plots, methods side by side within each structure.

    Boxes show quartiles, whiskers 1.5 IQR, a white diamond the mean; the legend gives each
    method's mean over structures.

    Args:
        per_structure: ``{method: {structure: [dice per pair]}}`` (or ``{structure: values}``
            for one method). Structures appear in first-seen order; NaNs are dropped.
        path: output file.
        title: figure title.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    fn = "morphreg.viz.plot_dice_boxplot"
    table = _dice_table(fn, per_structure)
    methods = list(table)
    structures: list[str] = []
    for s in table.values():
        structures += [k for k in s if k not in structures]
    n_m, n_s = len(methods), len(structures)
    width = 0.8 / n_m
    fig = Figure(figsize=(min(24.0, max(6.0, 0.35 * n_s * max(1.5, n_m) + 2.0)), 4.4),
                 layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    handles = []
    for m, method in enumerate(methods):
        color = f"C{m % 10}"
        names = [s for s in structures if table[method].get(s, np.empty(0)).size]
        data = [table[method][s] for s in names]
        pos = [structures.index(s) + (m - (n_m - 1) / 2) * width for s in names]
        if data:
            ax.boxplot(
                data, positions=pos, widths=width * 0.85, patch_artist=True, showmeans=True,
                boxprops={"facecolor": mcolors.to_rgba(color, 0.55), "edgecolor": color},
                medianprops={"color": "black", "linewidth": 1.0},
                whiskerprops={"color": color}, capprops={"color": color},
                flierprops={"marker": ".", "markersize": 3, "markeredgecolor": color},
                meanprops={"marker": "D", "markersize": 3.5, "markerfacecolor": "white",
                           "markeredgecolor": "black"},
                manage_ticks=False,
            )
        mean = np.mean([d.mean() for d in data]) if data else math.nan
        label = f"{method} (mean {mean:.3f})" if method else f"mean {mean:.3f}"
        handles.append(Patch(facecolor=mcolors.to_rgba(color, 0.55), edgecolor=color,
                             label=label))
    ax.set_xticks(range(n_s))
    long_names = n_s > 8 or max(len(s) for s in structures) > 8
    ax.set_xticklabels(structures, rotation=45 if long_names else 0,
                       ha="right" if long_names else "center", fontsize=8)
    ax.set_xlim(-0.6, n_s - 0.4)
    lo = min((v.min() for s in table.values() for v in s.values() if v.size), default=0.0)
    ax.set_ylim(min(0.0, lo - 0.02), 1.0)
    ax.set_ylabel("Dice")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(handles=handles, loc="lower left", fontsize=8)
    ax.set_title(title or "Dice per structure", fontsize=12)
    return save_figure(fig, path)
