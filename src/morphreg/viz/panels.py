"""Figures of one registration: images and differences, warped grid, flow colour, Jacobian, overview.

Inputs are one image or pair without batch or channel dimensions (:mod:`.inputs`): images and label
maps ``(*spatial)``, displacement fields ``(ndim, *spatial)`` in voxels, component ``k`` along array
axis ``k`` (:mod:`morphreg.spatial`'s convention without the batch dimension). A view of a field
shows its two in-plane components; the out-of-plane component is not drawn.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.patches import Patch

from ._common import DIFF_CMAP, FOLD_COLOR, ArrayLike, PathLike, percent, robust_range, save_figure
from .draw import draw_flow, draw_grid, draw_jacobian, draw_labels, flow_scale, fold_text, jacobian_map
from .inputs import as_field, as_image, as_labels, as_spacing
from .views import clean_axes, new_figure, show_slice, single_panel_in, slice_views


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
    fixed = as_image(fn, "fixed", fixed)
    shape = fixed.shape
    moving = as_image(fn, "moving", moving, like=shape, like_name="fixed")
    moved = as_image(fn, "moved", moved, like=shape, like_name="fixed")
    segs = [
        None if s is None else as_labels(fn, n, s, like=shape, like_name="fixed")
        for n, s in (("fixed_seg", fixed_seg), ("moving_seg", moving_seg), ("moved_seg", moved_seg))
    ]
    diff_before = np.abs(fixed - moving)
    diff_after = np.abs(fixed - moved)
    vmin, vmax = robust_range(fixed, moving)
    dmax = robust_range(diff_before, diff_after, lo=0.0, hi=99.5)[1]

    views = slice_views(shape)
    fig, axes = new_figure(views, shape, 5, extra_w=1.4)
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
                draw_labels(row[k], view.image(seg))
        for k, diff in ((3, diff_before), (4, diff_after)):
            dim = show_slice(row[k], view.image(diff), cmap=DIFF_CMAP, vmin=0.0, vmax=dmax)
        for ax in row:
            clean_axes(ax)
        row[0].set_ylabel(view.label, fontsize=9)
    for ax, header in zip(axes[0], headers):
        ax.set_title(header, fontsize=10)
    fig.colorbar(im, ax=axes[:, :3].ravel().tolist(), shrink=0.8, label="intensity")
    fig.colorbar(dim, ax=axes[:, 3:].ravel().tolist(), shrink=0.8, label="|difference|")
    fig.suptitle(title or "registration", fontsize=12)
    return save_figure(fig, path)


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
    disp = as_field(fn, "disp", disp)
    shape = disp.shape[1:]
    bg = None if background is None else as_image(
        fn, "background", background, like=shape, like_name="disp")
    spacing = as_spacing(fn, spacing)
    views = slice_views(shape)
    fig, axes = new_figure(views, shape, 1, panel_in=single_panel_in(views), extra_w=0.4)
    for ax, view in zip(axes[:, 0], views):
        draw_grid(ax, view.field(disp), spacing, None if bg is None else view.image(bg))
        clean_axes(ax)
        ax.set_ylabel(view.label, fontsize=9)
    magnitude = np.sqrt((disp**2).sum(axis=0))
    fig.suptitle(
        (title or "deformation grid x + u(x)")
        + f"\nlines every {spacing} voxels; |u| max {np.nanmax(magnitude):.2f} voxels",
        fontsize=11,
    )
    return save_figure(fig, path)


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
    disp = as_field(fn, "disp", disp)
    shape = disp.shape[1:]
    bg = None if background is None else as_image(
        fn, "background", background, like=shape, like_name="disp")
    scale = flow_scale(disp)
    views = slice_views(shape)
    fig, axes = new_figure(views, shape, 1, panel_in=single_panel_in(views), extra_w=0.4)
    for ax, view in zip(axes[:, 0], views):
        magnify = draw_flow(ax, view.field(disp), None if bg is None else view.image(bg), scale)
        clean_axes(ax)
        ax.set_ylabel(view.label, fontsize=9)
        ax.set_title(f"arrows ×{magnify:.2g}", fontsize=9)
    fig.suptitle(
        (title or "displacement (hue = direction)")
        + f"\nwheel edge = |u| {scale:.2f} voxels (99th percentile)",
        fontsize=11,
    )
    return save_figure(fig, path)


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
    disp = as_field(fn, "disp", disp)
    shape = disp.shape[1:]
    det = jacobian_map(disp)
    views = slice_views(shape)
    fig, axes = new_figure(views, shape, 1, panel_in=single_panel_in(views), extra_w=1.2)
    for ax, view in zip(axes[:, 0], views):
        det2d = view.image(det)
        im = draw_jacobian(ax, det2d)
        clean_axes(ax)
        ax.set_ylabel(view.label, fontsize=9)
        if view.name:
            ax.set_title(f"slice: {fold_text(det2d)}", fontsize=9)
    fig.colorbar(im, ax=axes[:, 0].tolist(), shrink=0.8 / len(views) ** 0.5, extend="both",
                 label="det J")
    axes[-1, 0].legend(
        handles=[Patch(color=FOLD_COLOR, label="det J ≤ 0")],
        loc="upper center", bbox_to_anchor=(0.5, -0.02), fontsize=8, frameon=False,
    )
    fig.suptitle(f"{title or 'Jacobian determinant'}\n{fold_text(det)}", fontsize=11)
    return save_figure(fig, path)


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
    fixed = as_image(fn, "fixed", fixed)
    shape = fixed.shape
    moving = as_image(fn, "moving", moving, like=shape, like_name="fixed")
    moved = as_image(fn, "moved", moved, like=shape, like_name="fixed")
    disp = as_field(fn, "disp", disp, like=shape, like_name="fixed")
    segs = [
        None if s is None else as_labels(fn, n, s, like=shape, like_name="fixed")
        for n, s in (("fixed_seg", fixed_seg), ("moving_seg", moving_seg), ("moved_seg", moved_seg))
    ]
    spacing = as_spacing(fn, spacing)
    view = slice_views(shape)[-1]
    vmin, vmax = robust_range(fixed, moving)
    diff_after = np.abs(fixed - moved)
    dmax = robust_range(np.abs(fixed - moving), diff_after, lo=0.0, hi=99.5)[1]
    det = jacobian_map(disp)
    scale = flow_scale(disp)

    fig, axes = new_figure([view], shape, 7, panel_in=2.3, extra_w=1.6)
    row = axes[0]
    for k, (img, seg, name) in enumerate(zip((fixed, moving, moved), segs,
                                             ("fixed", "moving", "moved"))):
        im = show_slice(row[k], view.image(img), cmap="gray", vmin=vmin, vmax=vmax)
        if seg is not None:
            draw_labels(row[k], view.image(seg))
        row[k].set_title(name, fontsize=10)
    dim = show_slice(row[3], view.image(diff_after), cmap=DIFF_CMAP, vmin=0.0, vmax=dmax)
    mae_before = float(np.nanmean(np.abs(fixed - moving)))
    row[3].set_title(
        f"|fixed − moved|\nMAE {mae_before:.3g} → {float(np.nanmean(diff_after)):.3g}",
        fontsize=10,
    )
    draw_grid(row[4], view.field(disp), spacing, view.image(moving), linewidth=0.6)
    row[4].set_title(f"grid x + u(x)\non moving, every {spacing}", fontsize=10)
    magnify = draw_flow(row[5], view.field(disp), None, scale, arrows=14)
    row[5].set_title(f"flow (edge |u| {scale:.2g})\narrows ×{magnify:.2g}", fontsize=10)
    jim = draw_jacobian(row[6], view.image(det))
    row[6].set_title(f"det J, folds green\n{percent(float((det <= 0).mean()))} folding",
                     fontsize=10)
    for ax in row:
        clean_axes(ax)
    row[0].set_ylabel(view.label, fontsize=9)
    fig.colorbar(im, ax=row[:3].tolist(), shrink=0.8, label="intensity", pad=0.01)
    fig.colorbar(dim, ax=row[3], shrink=0.8, pad=0.01)
    fig.colorbar(jim, ax=row[6], shrink=0.8, extend="both", pad=0.01)
    fig.suptitle(title or "registration overview", fontsize=12)
    return save_figure(fig, path)
