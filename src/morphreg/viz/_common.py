"""House style and saving of every figure: sizes, colours, robust value ranges, the atomic write.

Every ``plot_*`` function draws on a private :class:`matplotlib.figure.Figure` (no pyplot state) and
writes it with :func:`save_figure` (:func:`morphreg._files.atomic_write`) at :data:`DPI`; the
format comes from the suffix (PNG if there is none).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from .._files import atomic_write

DPI = 120

PANEL_IN = 2.5  # width of one image panel, inches
FOLD_COLOR = "#00e000"  # folds: green, away from the red-white-blue Jacobian colormap
DIFF_CMAP = "inferno"
JAC_CMAP = "RdBu_r"
GRID_COLOR_ON_IMAGE = "#ffb000"
_ROBUST_PERCENTILE = 99.0

Array = np.ndarray
ArrayLike = Any  # numpy array, torch tensor or nested sequence
PathLike = str | os.PathLike


def save_figure(fig: Figure, path: PathLike) -> Path:
    """Write ``fig`` with :func:`morphreg._files.atomic_write` (format from the suffix)."""
    path = Path(path)
    fmt = path.suffix[1:].lower() or "png"
    if fmt not in fig.canvas.get_supported_filetypes():
        raise ValueError(
            f"morphreg.viz: cannot write '{path.name}': format '{fmt}' is not one of "
            f"{sorted(fig.canvas.get_supported_filetypes())}"
        )
    atomic_write(path, lambda tmp: fig.savefig(tmp, format=fmt, dpi=DPI, bbox_inches="tight", pad_inches=0.08))
    return path


def _sample(arr: Array, limit: int = 1 << 20) -> Array:
    """The finite values of ``arr``, strided down to about ``limit`` (for fast percentiles)."""
    flat = np.ravel(arr)
    flat = flat[:: max(1, flat.size // limit)]
    return flat[np.isfinite(flat)]


def robust_range(*arrays: Array, lo: float = 0.5, hi: float = 99.5) -> tuple[float, float]:
    """Percentiles ``lo``/``hi`` of the finite values (a strided sample of large arrays)."""
    values = np.concatenate([_sample(a) for a in arrays])
    if values.size == 0:
        return 0.0, 1.0
    vmin, vmax = np.percentile(values, [lo, hi])
    if not vmax > vmin:
        vmin, vmax = float(values.min()), float(values.max())
    if not vmax > vmin:
        vmax = vmin + 1.0
    return float(vmin), float(vmax)


def robust_max(values: Array) -> float:
    """99th percentile of the finite ``values``, or 1 if that is not positive."""
    finite = _sample(values)
    top = float(np.percentile(finite, _ROBUST_PERCENTILE)) if finite.size else 0.0
    return top if top > 0 else 1.0


def percent(fraction: float) -> str:
    """``0%``, ``0.0781%``, ``12.3%``: small but non-zero fractions stay visible."""
    return "0%" if fraction == 0 else f"{100.0 * fraction:.3g}%"
