"""Figures for registration results: slices, overlays, deformation grid, flow colour, Jacobian.

Inputs describe **one** image or pair, without batch or channel dimensions, as numpy arrays or
torch tensors (any device; detached and copied to the CPU here):

* images ``(*spatial)``, label maps ``(*spatial)`` of integers,
* displacement fields ``(ndim, *spatial)`` in voxels, component ``k`` along array axis ``k``
  (:mod:`morphreg.spatial`'s convention without the batch dimension).

Slicing: 2D inputs give one view; 3D inputs give three orthogonal views through the centre of the
volume, one figure row per view (slice across axis 0, then 1, then 2), all from
:func:`slice_views`. A view of a field shows its two in-plane components; the out-of-plane
component is not drawn.

Display convention (one place: :func:`display_array` and :data:`ORIGIN`): the first in-plane axis
runs left to right, the second from top to bottom, i.e. ``imshow(arr.T, origin="upper")``. Voxel
``[0, 0]`` is the top-left corner and ``[0, -1]`` the bottom-left corner. This shows the neurite
OASIS slices upright (their axis 1 runs superior to inferior). Contours, arrows and grid lines
use the same data coordinates (``x`` = first in-plane index, ``y`` = second).

Every ``plot_*`` function draws on a private :class:`matplotlib.figure.Figure` (no pyplot state),
writes it atomically (temporary file in the same folder, then :func:`os.replace`) at
:data:`DPI` and returns the path. The format comes from the suffix (PNG if there is none).
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Mapping, Sequence
from itertools import combinations
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from matplotlib import colors as mcolors
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from ._files import atomic_write
from .spatial import jacobian_det

__all__ = [
    "DPI",
    "ORIGIN",
    "TRAINING_QUANTITIES",
    "SliceView",
    "display_array",
    "show_slice",
    "slice_views",
    "flow_to_rgb",
    "plot_registration",
    "plot_grid",
    "plot_flow",
    "plot_jacobian",
    "plot_training_curves",
    "plot_dice_boxplot",
    "plot_overview",
]

DPI = 120
#: ``imshow`` origin used with the transposed array: first axis left->right, second top->bottom.
ORIGIN = "upper"
#: Columns plotted by :func:`plot_training_curves`, in this order, when present.
TRAINING_QUANTITIES = ("loss", "sim", "smooth", "seg", "val_dice", "lr")

_PANEL_IN = 2.5  # width of one image panel, inches
_FOLD_COLOR = "#00e000"  # folds: green, away from the red-white-blue Jacobian colormap
_DIFF_CMAP = "inferno"
_JAC_CMAP = "RdBu_r"
_GRID_COLOR_ON_IMAGE = "#ffb000"
_ROBUST_PERCENTILE = 99.0

Array = np.ndarray
ArrayLike = Any  # numpy array, torch tensor or nested sequence
PathLike = str | os.PathLike


# --------------------------------------------------------------------------------------------
# input checking


def _to_numpy(fn: str, name: str, x: object) -> Array:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.is_floating_point() and x.dtype not in (torch.float32, torch.float64):
            x = x.float()
        return x.numpy()
    if isinstance(x, np.ndarray):
        return x
    try:
        arr = np.asarray(x)
    except Exception as err:  # re-raised as TypeError naming the argument
        raise TypeError(
            f"{fn}: argument '{name}' must be a numpy array or torch tensor, "
            f"got {type(x).__name__}"
        ) from err
    if arr.dtype == object:
        raise TypeError(
            f"{fn}: argument '{name}' must be a numeric numpy array or torch tensor, "
            f"got {type(x).__name__}"
        )
    return arr


def _check_numeric(fn: str, name: str, arr: Array) -> None:
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool) or np.iscomplexobj(arr):
        raise TypeError(f"{fn}: argument '{name}' must be real-valued, got dtype {arr.dtype}")


def _check_spatial(fn: str, name: str, shape: tuple[int, ...], what: str) -> None:
    if len(shape) not in (2, 3) or min(shape) < 2:
        raise ValueError(
            f"{fn}: argument '{name}' must be {what} with 2 or 3 spatial dims of size >= 2 "
            f"and no batch/channel dims (e.g. pass x[0, 0] of a (B, C, *spatial) tensor), "
            f"got shape {shape}"
        )


def _image(
    fn: str,
    name: str,
    x: object,
    *,
    like: tuple[int, ...] | None = None,
    like_name: str = "",
) -> Array:
    """One image ``(*spatial)`` as float64; optionally of spatial shape ``like``."""
    arr = _to_numpy(fn, name, x)
    _check_numeric(fn, name, arr)
    _check_spatial(fn, name, arr.shape, "an image (*spatial)")
    if like is not None and arr.shape != tuple(like):
        raise ValueError(
            f"{fn}: argument '{name}' must have the spatial shape {tuple(like)} of "
            f"'{like_name}', got {arr.shape}"
        )
    return arr.astype(np.float64)


def _labels(fn: str, name: str, x: object, *, like: tuple[int, ...], like_name: str) -> Array:
    """One integer label map ``(*spatial)`` of spatial shape ``like``, as int64."""
    arr = _to_numpy(fn, name, x)
    _check_numeric(fn, name, arr)
    if arr.shape != tuple(like):
        raise ValueError(
            f"{fn}: argument '{name}' must be a label map with the spatial shape {tuple(like)} "
            f"of '{like_name}', got {arr.shape}"
        )
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)) or not np.array_equal(arr, np.round(arr)):
            raise TypeError(
                f"{fn}: argument '{name}' must hold integer labels, got non-integer values "
                f"(dtype {arr.dtype})"
            )
    return arr.astype(np.int64)


def _field(fn: str, name: str, x: object, *, like: tuple[int, ...] | None = None,
           like_name: str = "") -> Array:
    """One displacement ``(ndim, *spatial)`` in voxels as float64."""
    arr = _to_numpy(fn, name, x)
    _check_numeric(fn, name, arr)
    ndim = arr.ndim - 1
    if ndim not in (2, 3) or arr.shape[0] != ndim or min(arr.shape[1:]) < 2:
        raise ValueError(
            f"{fn}: argument '{name}' must be a displacement field (ndim, *spatial) with "
            f"ndim = number of spatial dims (2 or 3) and no batch dim (e.g. pass disp[0] of a "
            f"(B, ndim, *spatial) tensor), got shape {arr.shape}"
        )
    if like is not None and arr.shape[1:] != tuple(like):
        raise ValueError(
            f"{fn}: argument '{name}' must have shape {(len(like), *like)} to match "
            f"'{like_name}' of shape {tuple(like)}, got {arr.shape}"
        )
    return arr.astype(np.float64)


def _spacing(fn: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{fn}: argument 'spacing' must be an integer >= 1, got {value!r}")
    return int(value)


# --------------------------------------------------------------------------------------------
# slicing and display: the one place that decides orientation


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
    _set_extent(ax, np.shape(arr2d)[:2])
    return im


def _set_extent(ax: Axes, shape2d: Sequence[int]) -> None:
    h, v = int(shape2d[0]), int(shape2d[1])
    ax.set_xlim(-0.5, h - 0.5)
    ax.set_ylim((v - 0.5, -0.5) if ORIGIN == "upper" else (-0.5, v - 0.5))
    ax.set_aspect("equal")


def _contour(ax: Axes, arr2d: Array, offset: Sequence[int] = (0, 0), **kwargs: Any) -> None:
    """Contour a view (or a crop starting at index ``offset``) in the display convention.

    Data coordinates are array indices, as for :func:`show_slice`.
    """
    h, v = np.shape(arr2d)[:2]
    x = np.arange(h) + offset[0]
    y = np.arange(v) + offset[1]
    ax.contour(x, y, display_array(arr2d), **kwargs)


def _clean(ax: Axes) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


# --------------------------------------------------------------------------------------------
# figures and saving


def _new_figure(
    views: Sequence[SliceView],
    spatial: Sequence[int],
    ncols: int,
    *,
    panel_in: float = _PANEL_IN,
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


def _single_panel_in(views: Sequence[SliceView]) -> float:
    """Panel width of one-column figures: large for one view, smaller for a 3-view column."""
    return 4.0 if len(views) == 1 else 3.2


def _save(fig: Figure, path: PathLike) -> Path:
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


def _robust_range(*arrays: Array, lo: float = 0.5, hi: float = 99.5) -> tuple[float, float]:
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


def _robust_max(values: Array) -> float:
    """99th percentile of the finite ``values``, or 1 if that is not positive."""
    finite = _sample(values)
    top = float(np.percentile(finite, _ROBUST_PERCENTILE)) if finite.size else 0.0
    return top if top > 0 else 1.0


def _label_color(label: int) -> tuple[float, float, float]:
    """A bright colour per label value (golden-ratio hues: neighbours differ, any count)."""
    hue = (0.08 + label * 0.618034) % 1.0
    return tuple(mcolors.hsv_to_rgb((hue, 0.85, 1.0)))


# --------------------------------------------------------------------------------------------
# panels (each draws one view on one axes)


def _draw_labels(ax: Axes, seg2d: Array) -> None:
    for label in np.unique(seg2d):
        if label == 0:
            continue
        mask = seg2d == label
        # contour only the label's bounding box (+1 voxel): much faster for small structures
        lo = [max(int(idx.min()) - 1, 0) for idx in np.nonzero(mask)]
        hi = [int(idx.max()) + 2 for idx in np.nonzero(mask)]
        crop = mask[lo[0]:hi[0], lo[1]:hi[1]].astype(np.float32)
        if crop.min() == crop.max() or min(crop.shape) < 2:
            continue
        _contour(ax, crop, offset=lo, levels=[0.5], colors=[_label_color(int(label))],
                 linewidths=0.7)


def _draw_grid(
    ax: Axes, field2d: Array, spacing: int, background: Array | None, linewidth: float = 0.8
) -> None:
    h, v = field2d.shape[1:]
    if background is not None:
        vmin, vmax = _robust_range(background)
        show_slice(ax, background, cmap="gray", vmin=vmin, vmax=vmax)
        color = _GRID_COLOR_ON_IMAGE
    else:
        color = "#303030"
    x = np.arange(h)[:, None] + field2d[0]  # transformed coordinates, (h, v)
    y = np.arange(v)[None, :] + field2d[1]
    # centre the lattice so the margins on both sides are equal
    rows = np.arange(((h - 1) % spacing) // 2, h, spacing)
    cols = np.arange(((v - 1) % spacing) // 2, v, spacing)
    segments = [np.column_stack([x[:, j], y[:, j]]) for j in cols]
    segments += [np.column_stack([x[i, :], y[i, :]]) for i in rows]
    ax.add_collection(LineCollection(segments, colors=color, linewidths=linewidth))
    _set_extent(ax, (h, v))


def _flow_scale(disp: Array) -> float:
    return _robust_max(np.sqrt((disp**2).sum(axis=0)))


def _colour_wheel(size: int = 65) -> Array:
    """RGBA ``(size, size, 4)`` disc showing :func:`flow_to_rgb`'s code (in index coordinates)."""
    r = np.linspace(-1.0, 1.0, size)
    grid = np.stack(np.meshgrid(r, r, indexing="ij"))  # component k along axis k
    rgba = np.ones((size, size, 4))
    rgba[..., :3] = flow_to_rgb(grid, max_magnitude=1.0)
    radius = np.sqrt((grid**2).sum(0))
    rgba[..., 3] = np.clip((1.0 - radius) * (size - 1) / 2 + 0.5, 0.0, 1.0)  # soft edge
    return rgba


def _draw_flow(
    ax: Axes, field2d: Array, background: Array | None, max_magnitude: float, arrows: int = 20
) -> float:
    """Colour code + ~``arrows`` arrows along the longer axis + wheel; returns the magnification."""
    rgb = flow_to_rgb(field2d, max_magnitude=max_magnitude)
    if background is not None:
        vmin, vmax = _robust_range(background)
        shade = np.clip((background - vmin) / (vmax - vmin), 0.0, 1.0)
        rgb = rgb * (0.3 + 0.7 * shade[..., None])
    show_slice(ax, rgb)
    h, v = field2d.shape[1:]
    step = max(2, int(round(max(h, v) / arrows)))
    ii = np.arange(step // 2, h, step)
    jj = np.arange(step // 2, v, step)
    xx, yy = np.meshgrid(ii, jj, indexing="ij")
    u = field2d[0][np.ix_(ii, jj)]
    w = field2d[1][np.ix_(ii, jj)]
    # the robust max arrow spans ~0.9 of the arrow spacing
    magnify = 0.9 * step / max_magnitude
    ax.quiver(
        xx, yy, u, w, angles="xy", scale_units="xy", scale=1.0 / magnify, color="black",
        width=0.005, headwidth=3.5, headlength=4, headaxislength=3.5, pivot="middle",
    )
    _set_extent(ax, (h, v))
    inset = ax.inset_axes([0.76, 0.76, 0.23, 0.23])
    show_slice(inset, _colour_wheel(), interpolation="antialiased")
    inset.set_axis_off()
    return magnify


def _draw_jacobian(ax: Axes, det2d: Array) -> Any:
    norm = mcolors.TwoSlopeNorm(vmin=0.0, vcenter=1.0, vmax=2.0)
    im = show_slice(ax, det2d, cmap=_JAC_CMAP, norm=norm)
    folds = det2d <= 0
    if folds.any():
        overlay = np.zeros((*det2d.shape, 4))
        overlay[folds] = mcolors.to_rgba(_FOLD_COLOR)
        show_slice(ax, overlay)
    return im


def _percent(fraction: float) -> str:
    """``0%``, ``0.0781%``, ``12.3%``: small but non-zero fractions stay visible."""
    return "0%" if fraction == 0 else f"{100.0 * fraction:.3g}%"


def _fold_text(det: Array) -> str:
    n = int((det <= 0).sum())
    return f"{_percent(n / det.size)} folding ({n} voxels)"


# --------------------------------------------------------------------------------------------
# public API


def flow_to_rgb(disp2d: ArrayLike, *, max_magnitude: float | None = None) -> Array:
    """Colour-code a 2D displacement field (HSV, white = no displacement).

    Hue is the direction ``atan2(u_1, u_0)`` (``+axis 0`` red, ``-axis 0`` cyan, ``+axis 1``
    chartreuse, ``-axis 1`` violet); saturation is the magnitude divided by ``max_magnitude``,
    clipped to 1; value is 1. A zero field is white.

    Args:
        disp2d: ``(2, H, W)`` displacement in voxels (component ``k`` along axis ``k``).
        max_magnitude: magnitude shown fully saturated; default: the 99th percentile of the
            magnitudes (1 if that is 0).

    Returns:
        ``(H, W, 3)`` float RGB in ``[0, 1]``, indexed like the field (``[i, j]``, not
        transposed for display; use :func:`show_slice`).
    """
    fn = "morphreg.viz.flow_to_rgb"
    disp = _to_numpy(fn, "disp2d", disp2d)
    _check_numeric(fn, "disp2d", disp)
    if disp.ndim != 3 or disp.shape[0] != 2:
        raise ValueError(
            f"{fn}: argument 'disp2d' must be a 2D field of shape (2, H, W), got {disp.shape}"
        )
    disp = np.nan_to_num(disp.astype(np.float64))
    magnitude = np.sqrt((disp**2).sum(axis=0))
    if max_magnitude is None:
        max_magnitude = _robust_max(magnitude)
    elif not max_magnitude > 0:
        raise ValueError(f"{fn}: argument 'max_magnitude' must be > 0, got {max_magnitude!r}")
    hue = (np.arctan2(disp[1], disp[0]) / (2 * np.pi)) % 1.0
    saturation = np.clip(magnitude / max_magnitude, 0.0, 1.0)
    hsv = np.stack([hue, saturation, np.ones_like(hue)], axis=-1)
    return mcolors.hsv_to_rgb(hsv)


def plot_registration(
    fixed: ArrayLike,
    moving: ArrayLike,
    moved: ArrayLike,
    path: PathLike,
    *,
    fixed_seg: ArrayLike | None = None,
    moving_seg: ArrayLike | None = None,
    moved_seg: ArrayLike | None = None,
    title: str | None = None,
) -> Path:
    """Fixed, moving, moved and the two absolute differences, one row per view.

    The three images share one grey scale (robust range of fixed and moving), the two
    difference panels share one colour scale, so "before" and "after" compare directly.
    Label maps, when given, are drawn as contours (one colour per label value, the same in
    every panel) over the matching image.

    Args:
        fixed, moving, moved: images ``(*spatial)``, 2D or 3D, same shape.
        path: output file (PNG unless the suffix says otherwise).
        fixed_seg, moving_seg, moved_seg: optional integer label maps ``(*spatial)``.
        title: figure title.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    fn = "morphreg.viz.plot_registration"
    fixed = _image(fn, "fixed", fixed)
    shape = fixed.shape
    moving = _image(fn, "moving", moving, like=shape, like_name="fixed")
    moved = _image(fn, "moved", moved, like=shape, like_name="fixed")
    segs = [
        None if s is None else _labels(fn, n, s, like=shape, like_name="fixed")
        for n, s in (("fixed_seg", fixed_seg), ("moving_seg", moving_seg), ("moved_seg", moved_seg))
    ]
    diff_before = np.abs(fixed - moving)
    diff_after = np.abs(fixed - moved)
    vmin, vmax = _robust_range(fixed, moving)
    dmax = _robust_range(diff_before, diff_after, lo=0.0, hi=99.5)[1]

    views = slice_views(shape)
    fig, axes = _new_figure(views, shape, 5, extra_w=1.4)
    mae_before = float(np.nanmean(diff_before))
    mae_after = float(np.nanmean(diff_after))
    headers = [
        "fixed",
        "moving",
        "moved",
        f"|fixed − moving|\nMAE {mae_before:.3g}",
        f"|fixed − moved|\nMAE {mae_after:.3g}",
    ]
    for row, view in zip(axes, views):
        for k, (img, seg) in enumerate(zip((fixed, moving, moved), segs)):
            im = show_slice(row[k], view.image(img), cmap="gray", vmin=vmin, vmax=vmax)
            if seg is not None:
                _draw_labels(row[k], view.image(seg))
        for k, diff in ((3, diff_before), (4, diff_after)):
            dim = show_slice(row[k], view.image(diff), cmap=_DIFF_CMAP, vmin=0.0, vmax=dmax)
        for ax in row:
            _clean(ax)
        row[0].set_ylabel(view.label, fontsize=9)
    for ax, header in zip(axes[0], headers):
        ax.set_title(header, fontsize=10)
    fig.colorbar(im, ax=axes[:, :3].ravel().tolist(), shrink=0.8, label="intensity")
    fig.colorbar(dim, ax=axes[:, 3:].ravel().tolist(), shrink=0.8, label="|difference|")
    fig.suptitle(title or "registration", fontsize=12)
    return _save(fig, path)


def plot_grid(
    disp: ArrayLike,
    path: PathLike,
    *,
    background: ArrayLike | None = None,
    spacing: int = 6,
    title: str | None = None,
) -> Path:
    """The deformation as a warped grid, one panel per view.

    Lines of the regular lattice (every ``spacing`` voxels along each in-plane axis) are drawn
    at the transformed coordinates ``x + u(x)``. With the pull-back convention these are the
    points of the *moving* image that the fixed image's lattice samples, so the natural
    background is the moving image. In 3D, each view shows the in-plane components only.

    Args:
        disp: ``(ndim, *spatial)`` displacement in voxels.
        path: output file.
        background: optional image ``(*spatial)`` drawn in grey below the grid.
        spacing: lattice spacing in voxels.
        title: figure title.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    fn = "morphreg.viz.plot_grid"
    disp = _field(fn, "disp", disp)
    shape = disp.shape[1:]
    bg = None if background is None else _image(
        fn, "background", background, like=shape, like_name="disp")
    spacing = _spacing(fn, spacing)
    views = slice_views(shape)
    fig, axes = _new_figure(views, shape, 1, panel_in=_single_panel_in(views), extra_w=0.4)
    for ax, view in zip(axes[:, 0], views):
        _draw_grid(ax, view.field(disp), spacing, None if bg is None else view.image(bg))
        _clean(ax)
        ax.set_ylabel(view.label, fontsize=9)
    magnitude = np.sqrt((disp**2).sum(axis=0))
    fig.suptitle(
        (title or "deformation grid x + u(x)")
        + f"\nlines every {spacing} voxels; |u| max {np.nanmax(magnitude):.2f} voxels",
        fontsize=11,
    )
    return _save(fig, path)


def plot_flow(
    disp: ArrayLike,
    path: PathLike,
    *,
    background: ArrayLike | None = None,
    title: str | None = None,
) -> Path:
    """Colour-coded displacement (:func:`flow_to_rgb`) with arrows, one panel per view.

    Colour: hue = direction, saturation = magnitude (white = none), one scale for all views
    (the 99th percentile magnitude of the whole field), decoded by the colour-wheel inset,
    drawn in the same orientation as the image. Arrows show subsampled in-plane displacements,
    magnified by the factor in the panel title. With a ``background``, brightness follows the
    image intensity.

    Args:
        disp: ``(ndim, *spatial)`` displacement in voxels.
        path: output file.
        background: optional image ``(*spatial)`` shading the colour code.
        title: figure title.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    fn = "morphreg.viz.plot_flow"
    disp = _field(fn, "disp", disp)
    shape = disp.shape[1:]
    bg = None if background is None else _image(
        fn, "background", background, like=shape, like_name="disp")
    scale = _flow_scale(disp)
    views = slice_views(shape)
    fig, axes = _new_figure(views, shape, 1, panel_in=_single_panel_in(views), extra_w=0.4)
    for ax, view in zip(axes[:, 0], views):
        magnify = _draw_flow(ax, view.field(disp), None if bg is None else view.image(bg), scale)
        _clean(ax)
        ax.set_ylabel(view.label, fontsize=9)
        ax.set_title(f"arrows ×{magnify:.2g}", fontsize=9)
    fig.suptitle(
        (title or "displacement (hue = direction)")
        + f"\nwheel edge = |u| {scale:.2f} voxels (99th percentile)",
        fontsize=11,
    )
    return _save(fig, path)


def plot_jacobian(disp: ArrayLike, path: PathLike, *, title: str | None = None) -> Path:
    """Jacobian determinant of ``x + u(x)``, one panel per view, folds in green.

    Colours: blue < 1 (contraction), white = 1, red > 1 (expansion), clipped to ``[0, 2]``;
    voxels with ``det <= 0`` (folding) are painted green. The determinant comes from
    :func:`morphreg.spatial.jacobian_det` on the full field, then is sliced.

    Args:
        disp: ``(ndim, *spatial)`` displacement in voxels.
        path: output file.
        title: figure title (the folding percentage is appended).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    fn = "morphreg.viz.plot_jacobian"
    disp = _field(fn, "disp", disp)
    shape = disp.shape[1:]
    det = _jacobian_det(disp)
    views = slice_views(shape)
    fig, axes = _new_figure(views, shape, 1, panel_in=_single_panel_in(views), extra_w=1.2)
    for ax, view in zip(axes[:, 0], views):
        det2d = view.image(det)
        im = _draw_jacobian(ax, det2d)
        _clean(ax)
        ax.set_ylabel(view.label, fontsize=9)
        if view.name:
            ax.set_title(f"slice: {_fold_text(det2d)}", fontsize=9)
    fig.colorbar(im, ax=axes[:, 0].tolist(), shrink=0.8 / len(views) ** 0.5, extend="both",
                 label="det J")
    axes[-1, 0].legend(
        handles=[Patch(color=_FOLD_COLOR, label="det J ≤ 0")],
        loc="upper center", bbox_to_anchor=(0.5, -0.02), fontsize=8, frameon=False,
    )
    fig.suptitle(f"{title or 'Jacobian determinant'}\n{_fold_text(det)}", fontsize=11)
    return _save(fig, path)


def _jacobian_det(disp: Array) -> Array:
    """``(ndim, *spatial)`` -> ``(*spatial)`` via :func:`morphreg.spatial.jacobian_det`.

    float32 (a full-resolution 3D Jacobian in float64 would need ~0.5 GB more memory).
    """
    field = torch.from_numpy(np.ascontiguousarray(disp, dtype=np.float32)).unsqueeze(0)
    return jacobian_det(field)[0].numpy()


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
    return _save(fig, path)


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
            arr = _to_numpy(fn, "per_structure", values).astype(np.float64).ravel()
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
    return _save(fig, path)


def plot_overview(
    fixed: ArrayLike,
    moving: ArrayLike,
    moved: ArrayLike,
    disp: ArrayLike,
    path: PathLike,
    *,
    fixed_seg: ArrayLike | None = None,
    moving_seg: ArrayLike | None = None,
    moved_seg: ArrayLike | None = None,
    spacing: int = 6,
    title: str | None = None,
) -> Path:
    """One row summarising a pair: images, difference, grid, flow colour and Jacobian.

    Panels: fixed | moving | moved | |fixed − moved| (MAE before -> after) | grid over the
    moving image | flow colour with arrows | Jacobian determinant (folds green). 3D inputs
    show the mid-slice across the last axis (the view with axes 0 and 1); the statistics in
    the titles (MAE, folding) are over the whole volume.

    Args:
        fixed, moving, moved: images ``(*spatial)``.
        disp: ``(ndim, *spatial)`` displacement in voxels, the field that produced ``moved``.
        path: output file.
        fixed_seg, moving_seg, moved_seg: optional integer label maps, drawn as contours.
        spacing: grid spacing in voxels.
        title: figure title.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    fn = "morphreg.viz.plot_overview"
    fixed = _image(fn, "fixed", fixed)
    shape = fixed.shape
    moving = _image(fn, "moving", moving, like=shape, like_name="fixed")
    moved = _image(fn, "moved", moved, like=shape, like_name="fixed")
    disp = _field(fn, "disp", disp, like=shape, like_name="fixed")
    segs = [
        None if s is None else _labels(fn, n, s, like=shape, like_name="fixed")
        for n, s in (("fixed_seg", fixed_seg), ("moving_seg", moving_seg), ("moved_seg", moved_seg))
    ]
    spacing = _spacing(fn, spacing)
    view = slice_views(shape)[-1]
    vmin, vmax = _robust_range(fixed, moving)
    diff_after = np.abs(fixed - moved)
    dmax = _robust_range(np.abs(fixed - moving), diff_after, lo=0.0, hi=99.5)[1]
    det = _jacobian_det(disp)
    scale = _flow_scale(disp)

    fig, axes = _new_figure([view], shape, 7, panel_in=2.3, extra_w=1.6)
    row = axes[0]
    for k, (img, seg, name) in enumerate(zip((fixed, moving, moved), segs,
                                             ("fixed", "moving", "moved"))):
        im = show_slice(row[k], view.image(img), cmap="gray", vmin=vmin, vmax=vmax)
        if seg is not None:
            _draw_labels(row[k], view.image(seg))
        row[k].set_title(name, fontsize=10)
    dim = show_slice(row[3], view.image(diff_after), cmap=_DIFF_CMAP, vmin=0.0, vmax=dmax)
    mae_before = float(np.nanmean(np.abs(fixed - moving)))
    row[3].set_title(
        f"|fixed − moved|\nMAE {mae_before:.3g} → {float(np.nanmean(diff_after)):.3g}",
        fontsize=10,
    )
    _draw_grid(row[4], view.field(disp), spacing, view.image(moving), linewidth=0.6)
    row[4].set_title(f"grid x + u(x)\non moving, every {spacing}", fontsize=10)
    magnify = _draw_flow(row[5], view.field(disp), None, scale, arrows=14)
    row[5].set_title(f"flow (edge |u| {scale:.2g})\narrows ×{magnify:.2g}", fontsize=10)
    jim = _draw_jacobian(row[6], view.image(det))
    row[6].set_title(f"det J, folds green\n{_percent(float((det <= 0).mean()))} folding",
                     fontsize=10)
    for ax in row:
        _clean(ax)
    row[0].set_ylabel(view.label, fontsize=9)
    fig.colorbar(im, ax=row[:3].tolist(), shrink=0.8, label="intensity", pad=0.01)
    fig.colorbar(dim, ax=row[3], shrink=0.8, pad=0.01)
    fig.colorbar(jim, ax=row[6], shrink=0.8, extend="both", pad=0.01)
    fig.suptitle(title or "registration overview", fontsize=12)
    return _save(fig, path)
