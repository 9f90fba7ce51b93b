"""The QC strip of a population template: the template after each iteration, side by side.

Columns are iterations (the affine average first), rows the anatomical views of
:mod:`morphreg.viz.qc` (one for a 2D slice, axial/coronal/sagittal middle slices in 3D), every
panel in the closest RAS orientation of the template's affine, neurological view, one grey scale.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from ._common import PANEL_IN, PathLike, robust_range, save_figure
from .qc import _cut, _mark, anatomical_views, to_ras


def plot_template_iterations(
    templates: Sequence[np.ndarray],
    affine: np.ndarray,
    path: PathLike,
    *,
    titles: Sequence[str] | None = None,
    suptitle: str | None = None,
) -> Path:
    """Write one PNG strip of ``templates`` (each ``(*spatial)``, one grid with voxel -> RAS ``affine`` ``(4, 4)``).

    Args:
        templates: the template after each iteration, first to last (2D or 3D, one shape).
        affine: the grid's voxel -> world matrix (orientation and voxel aspect of the panels).
        path: output image (PNG unless the suffix says otherwise).
        titles: one title per template (default ``iteration 0, 1, ...``).
        suptitle: figure title.

    Returns:
        ``path``.
    """
    fn = "morphreg.viz.plot_template_iterations"
    if not templates:
        raise ValueError(f"{fn}: argument 'templates' is empty")
    shapes = {np.shape(t) for t in templates}
    if len(shapes) != 1:
        raise ValueError(f"{fn}: argument 'templates' must share one shape, got {sorted(shapes)}")
    titles = list(titles) if titles is not None else [f"iteration {k}" for k in range(len(templates))]
    ras = [to_ras(np.asarray(t, dtype=np.float32), affine) for t in templates]
    views = anatomical_views(ras[0][0].shape, ras[0][1])
    lo, hi = robust_range(*[r[0] for r in ras])
    fig = Figure(figsize=(PANEL_IN * len(templates), PANEL_IN * len(views) + 0.5))
    axes = fig.subplots(len(views), len(templates), squeeze=False)
    for row, view in zip(axes, views):
        for ax, (volume, _), title in zip(row, ras, titles):
            ax.imshow(_cut(volume, view).T, cmap="gray", vmin=lo, vmax=hi, origin="lower", extent=view.extent,
                      interpolation="nearest")
            ax.set_aspect("equal")
            ax.set_xticks([])
            ax.set_yticks([])
            _mark(ax, view)
            if row is axes[0]:
                ax.set_title(title, fontsize=9)
        row[0].set_ylabel(view.name)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    return save_figure(fig, path)
