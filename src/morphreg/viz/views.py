"""Slicing and display: the one place that decides orientation, and the figure grid of views.

2D inputs give one view; 3D inputs give three orthogonal views through the centre of the volume,
one figure row per view (slice across axis 0, then 1, then 2), all from :func:`slice_views`.

Display convention (:func:`display_array` and :data:`ORIGIN`): the first in-plane axis runs left to
right, the second from top to bottom, i.e. ``imshow(arr.T, origin="upper")``. Voxel ``[0, 0]`` is
the top-left corner and ``[0, -1]`` the bottom-left corner. Contours, arrows and grid lines use the
same data coordinates (``x`` = first in-plane index, ``y`` = second).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations
from typing import Any, NamedTuple

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ._common import PANEL_IN, Array

#: ``imshow`` origin used with the transposed array: first axis left->right, second top->bottom.
ORIGIN = "upper"


class SliceView(NamedTuple):
    """A 2D view of a 2D or 3D array: which axes are shown and where the others are cut.

    Attributes:
        axes: the two spatial axes shown ``(horizontal, vertical)``.
        index: indexes a ``(*spatial)`` array down to the ``(len_h, len_v)`` view.
        name: ``""`` in 2D, else e.g. ``"axis 2 = 112"`` (the cut).
    """

    axes: tuple[int, int]
    index: tuple[slice | int, ...]
    name: str

    def image(self, arr: Array) -> Array:
        """``(*spatial)`` -> ``(len_h, len_v)``."""
        return arr[self.index]

    def field(self, disp: Array) -> Array:
        """``(ndim, *spatial)`` -> ``(2, len_h, len_v)``: the in-plane components."""
        return np.stack([disp[a][self.index] for a in self.axes])

    @property
    def label(self) -> str:
        """Text for the row: the cut and which axis runs where."""
        cut = f"{self.name}\n" if self.name else ""
        return f"{cut}→ axis {self.axes[0]}, ↓ axis {self.axes[1]}"


def slice_views(shape: Sequence[int]) -> list[SliceView]:
    """The views shown for an array of spatial ``shape``.

    2D: the whole image. 3D: three orthogonal slices through the centre ``s // 2``, cutting
    axis 0, then 1, then 2; the remaining axes keep their order (lower axis horizontal).
    """
    shape = tuple(int(s) for s in shape)
    ndim = len(shape)
    views = []
    for axes in reversed(list(combinations(range(ndim), 2))):
        cut = [k for k in range(ndim) if k not in axes]
        index = tuple(shape[k] // 2 if k in cut else slice(None) for k in range(ndim))
        name = ", ".join(f"axis {k} = {shape[k] // 2}" for k in cut)
        views.append(SliceView(axes=axes, index=index, name=name))
    return views


def display_array(arr2d: Array) -> Array:
    """Reorder a view ``(len_h, len_v[, channels])`` for ``imshow(..., origin=ORIGIN)``.

    Swaps the first two axes so that the first array axis is horizontal.
    """
    return np.swapaxes(np.asarray(arr2d), 0, 1)


def show_slice(ax: Axes, arr2d: Array, **imshow_kwargs: Any) -> Any:
    """``imshow`` a view ``(len_h, len_v[, 3|4])`` with morphreg's display convention.

    Pixel centres land on integer data coordinates ``(i, j)`` = array index, so contours,
    arrows and lines drawn in index coordinates line up.
    """
    imshow_kwargs.setdefault("interpolation", "nearest")
    im = ax.imshow(display_array(arr2d), origin=ORIGIN, **imshow_kwargs)
    set_extent(ax, np.shape(arr2d)[:2])
    return im


def set_extent(ax: Axes, shape2d: Sequence[int]) -> None:
    h, v = int(shape2d[0]), int(shape2d[1])
    ax.set_xlim(-0.5, h - 0.5)
    ax.set_ylim((v - 0.5, -0.5) if ORIGIN == "upper" else (-0.5, v - 0.5))
    ax.set_aspect("equal")


def contour(ax: Axes, arr2d: Array, offset: Sequence[int] = (0, 0), **kwargs: Any) -> None:
    """Contour a view (or a crop starting at index ``offset``) in the display convention.

    Data coordinates are array indices, as for :func:`show_slice`.
    """
    h, v = np.shape(arr2d)[:2]
    x = np.arange(h) + offset[0]
    y = np.arange(v) + offset[1]
    ax.contour(x, y, display_array(arr2d), **kwargs)


def clean_axes(ax: Axes) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def new_figure(
    views: Sequence[SliceView],
    spatial: Sequence[int],
    ncols: int,
    *,
    panel_in: float = PANEL_IN,
    extra_w: float = 1.0,
    title: bool = True,
) -> tuple[Figure, np.ndarray]:
    """A constrained-layout figure with one row per view and ``ncols`` image panels."""
    ratios = [spatial[v.axes[1]] / spatial[v.axes[0]] for v in views]
    heights = [panel_in * min(max(r, 0.3), 3.0) + 0.45 for r in ratios]
    size = (ncols * panel_in + extra_w, sum(heights) + (0.5 if title else 0.1))
    # "compressed" packs fixed-aspect panels; the tight bbox on saving trims what is left over
    fig = Figure(figsize=size, layout="compressed")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(views), ncols, squeeze=False, gridspec_kw={"height_ratios": heights})
    return fig, axes


def single_panel_in(views: Sequence[SliceView]) -> float:
    """Panel width of one-column figures: large for one view, smaller for a 3-view column."""
    return 4.0 if len(views) == 1 else 3.2
