"""Draw one view on one axes: label contours, a warped grid, the flow colour code, the Jacobian."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from matplotlib import colors as mcolors
from matplotlib.axes import Axes
from matplotlib.collections import LineCollection

from ..spatial import jacobian_det
from ._common import FOLD_COLOR, GRID_COLOR_ON_IMAGE, JAC_CMAP, Array, ArrayLike, percent, robust_max, robust_range
from .inputs import check_numeric, to_numpy
from .views import contour, set_extent, show_slice


def label_color(label: int) -> tuple[float, float, float]:
    """A bright colour per label value (golden-ratio hues: neighbours differ, any count)."""
    hue = (0.08 + label * 0.618034) % 1.0
    return tuple(mcolors.hsv_to_rgb((hue, 0.85, 1.0)))


def draw_labels(ax: Axes, seg2d: Array) -> None:
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
        contour(ax, crop, offset=lo, levels=[0.5], colors=[label_color(int(label))],
                 linewidths=0.7)


def draw_grid(
    ax: Axes, field2d: Array, spacing: int, background: Array | None, linewidth: float = 0.8
) -> None:
    h, v = field2d.shape[1:]
    if background is not None:
        vmin, vmax = robust_range(background)
        show_slice(ax, background, cmap="gray", vmin=vmin, vmax=vmax)
        color = GRID_COLOR_ON_IMAGE
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
    set_extent(ax, (h, v))


def flow_scale(disp: Array) -> float:
    return robust_max(np.sqrt((disp**2).sum(axis=0)))


def _colour_wheel(size: int = 65) -> Array:
    """RGBA ``(size, size, 4)`` disc showing :func:`flow_to_rgb`'s code (in index coordinates)."""
    r = np.linspace(-1.0, 1.0, size)
    grid = np.stack(np.meshgrid(r, r, indexing="ij"))  # component k along axis k
    rgba = np.ones((size, size, 4))
    rgba[..., :3] = flow_to_rgb(grid, max_magnitude=1.0)
    radius = np.sqrt((grid**2).sum(0))
    rgba[..., 3] = np.clip((1.0 - radius) * (size - 1) / 2 + 0.5, 0.0, 1.0)  # soft edge
    return rgba


def draw_flow(
    ax: Axes, field2d: Array, background: Array | None, max_magnitude: float, arrows: int = 20
) -> float:
    """Colour code + ~``arrows`` arrows along the longer axis + wheel; returns the magnification."""
    rgb = flow_to_rgb(field2d, max_magnitude=max_magnitude)
    if background is not None:
        vmin, vmax = robust_range(background)
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
    set_extent(ax, (h, v))
    inset = ax.inset_axes([0.76, 0.76, 0.23, 0.23])
    show_slice(inset, _colour_wheel(), interpolation="antialiased")
    inset.set_axis_off()
    return magnify


def draw_jacobian(ax: Axes, det2d: Array) -> Any:
    norm = mcolors.TwoSlopeNorm(vmin=0.0, vcenter=1.0, vmax=2.0)
    im = show_slice(ax, det2d, cmap=JAC_CMAP, norm=norm)
    folds = det2d <= 0
    if folds.any():
        overlay = np.zeros((*det2d.shape, 4))
        overlay[folds] = mcolors.to_rgba(FOLD_COLOR)
        show_slice(ax, overlay)
    return im


def fold_text(det: Array) -> str:
    n = int((det <= 0).sum())
    return f"{percent(n / det.size)} folding ({n} voxels)"


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
    disp = to_numpy(fn, "disp2d", disp2d)
    check_numeric(fn, "disp2d", disp)
    if disp.ndim != 3 or disp.shape[0] != 2:
        raise ValueError(
            f"{fn}: argument 'disp2d' must be a 2D field of shape (2, H, W), got {disp.shape}"
        )
    disp = np.nan_to_num(disp.astype(np.float64))
    magnitude = np.sqrt((disp**2).sum(axis=0))
    if max_magnitude is None:
        max_magnitude = robust_max(magnitude)
    elif not max_magnitude > 0:
        raise ValueError(f"{fn}: argument 'max_magnitude' must be > 0, got {max_magnitude!r}")
    hue = (np.arctan2(disp[1], disp[0]) / (2 * np.pi)) % 1.0
    saturation = np.clip(magnitude / max_magnitude, 0.0, 1.0)
    hsv = np.stack([hue, saturation, np.ones_like(hue)], axis=-1)
    return mcolors.hsv_to_rgb(hsv)


def jacobian_map(disp: Array) -> Array:
    """``(ndim, *spatial)`` -> ``(*spatial)`` via :func:`morphreg.spatial.jacobian_det`.

    float32 (a full-resolution 3D Jacobian in float64 would need ~0.5 GB more memory).
    """
    field = torch.from_numpy(np.ascontiguousarray(disp, dtype=np.float32)).unsqueeze(0)
    return jacobian_det(field)[0].numpy()
