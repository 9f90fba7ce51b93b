"""A quality-control figure of one registration, drawn in anatomical orientation.

Every panel is reoriented to the closest RAS axes of the volume's affine (nibabel's
``io_orientation``), drawn in neurological convention (the subject's right on the right of an
axial or coronal panel, anterior up in axial, superior up in coronal and sagittal) with
L/R/A/P/S/I marks on its edges, and with the voxel aspect ratio of the affine (extent in mm).
Structures are named from a label table (:func:`morphreg.io.read_label_table`).
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
from nibabel import orientations

from .. import io
from .._files import atomic_write
from ..io.label_table import LabelTable

_AXIS_ENDS = (("L", "R"), ("P", "A"), ("I", "S"))  # low/high end of each RAS axis


class AnatomicalView(NamedTuple):
    """One 2D panel in anatomical orientation.

    Attributes:
        name: ``axial``, ``coronal`` or ``sagittal``.
        axes: the two RAS axes shown (horizontal, vertical), 0 = x (L->R), 1 = y (P->A), 2 = z (I->S).
        extent: ``(0, width mm, 0, height mm)`` for ``imshow(..., origin="lower")``.
        marks: ``(left, right, bottom, top)`` letters, e.g. ``("L", "R", "P", "A")``.
    """

    name: str
    axes: tuple[int, int]
    extent: tuple[float, float, float, float]
    marks: tuple[str, str, str, str]


def to_ras(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reorder and flip array axes to the closest RAS orientation of ``affine``.

    Args:
        data: ``(X, Y)`` or ``(X, Y, Z)`` (a 2D image is a slice ``X x Y x 1``).
        affine: ``(4, 4)`` voxel-to-RAS matrix.

    Returns:
        ``(array (x, y, z) with x towards R, y towards A, z towards S, spacing (3,) mm)``.
    """
    volume = data if data.ndim == 3 else data[..., None]
    ornt = orientations.io_orientation(affine)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    out = orientations.apply_orientation(volume, ornt)
    ras_spacing = np.empty(3)
    ras_spacing[ornt[:, 0].astype(int)] = spacing
    return out, ras_spacing


_PLANES = {"axial": ((0, 1), 2), "coronal": ((0, 2), 1), "sagittal": ((1, 2), 0)}


def anatomical_views(ras_shape: tuple[int, ...], spacing: np.ndarray) -> list[AnatomicalView]:
    """The panels of a RAS-ordered volume: three planes in 3D, the image's own plane for a slice."""
    flat = [axis for axis in range(3) if ras_shape[axis] == 1]
    names = [name for name, (_, normal) in _PLANES.items() if not flat or normal == flat[0]]
    views = []
    for name in names:
        (h, v), _ = _PLANES[name]
        extent = (0.0, ras_shape[h] * spacing[h], 0.0, ras_shape[v] * spacing[v])
        views.append(AnatomicalView(name, (h, v), extent, (*_AXIS_ENDS[h], *_AXIS_ENDS[v])))
    return views


def _cut(ras: np.ndarray, view: AnatomicalView) -> np.ndarray:
    """The middle slice of ``ras`` for ``view``, as ``(horizontal, vertical)``."""
    normal = 3 - sum(view.axes)
    index = ras.shape[normal] // 2
    return np.take(ras, index, axis=normal)  # remaining axes keep their order (h < v)


def plot_qc(
    path: str | Path,
    fixed: io.Volume,
    moving: io.Volume,
    moved: io.Volume,
    jacobian_det: np.ndarray,
    *,
    names: tuple[str, str] = ("moving", "fixed"),
    moved_seg: io.Volume | None = None,
    labels: LabelTable | None = None,
) -> Path:
    """Write a QC figure: fixed, moving, moved, moved-vs-fixed difference, Jacobian over anatomy.

    Args:
        path: output PNG.
        fixed, moving, moved: volumes on the fixed grid (``moving`` resampled onto it).
        jacobian_det: ``(*spatial)`` determinant on the fixed grid.
        names: subject names (moving, fixed) for the titles.
        moved_seg: warped moving labels, drawn as outlines over the moved image and named from
            ``labels`` (label values are shown when no table is given).
        labels: a :class:`LabelTable`.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib import colors as mcolors

    fx, spacing = to_ras(fixed.data.astype(np.float32), fixed.affine)
    mv, _ = to_ras(moving.data.astype(np.float32), fixed.affine)
    md, _ = to_ras(moved.data.astype(np.float32), fixed.affine)
    jac, _ = to_ras(np.asarray(jacobian_det, dtype=np.float32), fixed.affine)
    seg = to_ras(moved_seg.data, fixed.affine)[0] if moved_seg is not None else None
    views = anatomical_views(fx.shape, spacing)
    lo, hi = np.percentile(np.concatenate([fx.ravel(), mv.ravel()]), [0.5, 99.5])
    columns = ["fixed: " + names[1], "moving: " + names[0], "moved" + (" + labels" if seg is not None else ""),
               "moved - fixed", "Jacobian det over fixed"]
    fig, grid = plt.subplots(len(views), len(columns), figsize=(3.2 * len(columns), 3.3 * len(views) + 0.6),
                             squeeze=False)
    norm = mcolors.TwoSlopeNorm(vmin=0.0, vcenter=1.0, vmax=2.0)
    present: dict[int, int] = {}
    for row, view in zip(grid, views):
        panels = [_cut(a, view) for a in (fx, mv, md, jac)]
        gray = dict(cmap="gray", vmin=lo, vmax=hi, origin="lower", extent=view.extent, interpolation="nearest")
        row[0].imshow(panels[0].T, **gray)
        row[1].imshow(panels[1].T, **gray)
        row[2].imshow(panels[2].T, **gray)
        if seg is not None:
            cut = _cut(seg, view)
            for value in np.unique(cut):
                if value == 0:
                    continue
                present[int(value)] = present.get(int(value), 0) + int((cut == value).sum())
                colour = _colour(int(value), labels)
                row[2].contour((cut == value).T.astype(float), levels=[0.5], colors=[colour], linewidths=0.6,
                               origin="lower", extent=view.extent)
        spread = float(np.abs(panels[2] - panels[0]).max()) or 1.0
        row[3].imshow((panels[2] - panels[0]).T, cmap="RdBu_r", vmin=-spread, vmax=spread, origin="lower",
                      extent=view.extent, interpolation="nearest")
        row[4].imshow(panels[0].T, **gray)
        image = row[4].imshow(panels[3].T, cmap="RdBu_r", norm=norm, alpha=0.55, origin="lower", extent=view.extent,
                              interpolation="nearest")
        folds = panels[3] <= 0
        if folds.any():
            row[4].contour(folds.T.astype(float), levels=[0.5], colors=["black"], linewidths=0.8, origin="lower",
                           extent=view.extent)
        for ax in row:
            ax.set_aspect("equal")
            ax.set_xticks([])
            ax.set_yticks([])
            _mark(ax, view)
        row[0].set_ylabel(view.name)
    for ax, title in zip(grid[0], columns):
        ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=grid[:, 4].tolist(), shrink=0.7, label="det J (<= 0: folding, outlined)")
    fold_pct = 100.0 * float((np.asarray(jacobian_det) <= 0).mean())
    fig.suptitle(f"{names[0]} -> {names[1]}   (folding {fold_pct:.3g}% of voxels; voxel "
                 f"{' x '.join(f'{s:g}' for s in spacing)} mm; closest RAS orientation, neurological view)",
                 fontsize=10)
    if present:
        top = sorted(present, key=present.get, reverse=True)[:12]
        handles = [plt.Line2D([], [], color=_colour(k, labels), lw=2, label=_label_name(k, labels)) for k in top]
        fig.legend(handles=handles, loc="lower center", ncol=min(6, len(handles)), fontsize=7, frameon=False)
    path = Path(path)

    def write(tmp: Path) -> None:
        fig.savefig(tmp, dpi=90, format="png", bbox_inches="tight")

    try:
        atomic_write(path, write)
    finally:
        plt.close(fig)
    return path


def _label_name(value: int, labels: LabelTable | None) -> str:
    if labels is not None and value in labels.names:
        return labels.names[value]
    return f"label {value}"


def _colour(value: int, labels: LabelTable | None) -> tuple[float, float, float]:
    """The table's colour (near-white, e.g. white matter, becomes amber to stay visible), else a hue per value."""
    from matplotlib import colors as mcolors

    colour = labels.colours.get(value) if labels is not None else None
    if colour is None:
        return tuple(mcolors.hsv_to_rgb(((0.08 + value * 0.618034) % 1.0, 0.85, 1.0)))  # type: ignore[return-value]
    return (1.0, 0.8, 0.2) if sum(colour) > 2.7 else colour


def _mark(ax, view: AnatomicalView) -> None:
    """Orientation letters at the middle of each edge."""
    left, right, bottom, top = view.marks
    style = dict(transform=ax.transAxes, color="yellow", fontsize=9, fontweight="bold", ha="center", va="center")
    ax.text(0.04, 0.5, left, **style)
    ax.text(0.96, 0.5, right, **style)
    ax.text(0.5, 0.04, bottom, **style)
    ax.text(0.5, 0.96, top, **style)
