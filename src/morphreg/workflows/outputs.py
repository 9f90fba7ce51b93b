"""Writing what a registration of one pair produced: moved image and labels, fields, matrix, QC.

Every file goes through the atomic writers of :mod:`morphreg.io` (a reader sees the old file or
the complete new one). Error messages name this module's parameters in backquotes.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import __version__, io
from ..io import save_itk_warp, save_matrix
from ..spatial import jacobian_det
from .files import PairOnGrid, RegisteredPair, load_image
from .pipeline import world_matrix

PathLike = str | Path


@dataclass(frozen=True)
class OutputPaths:
    """Where to write a registration's outputs (``None``: not written; ``moved`` is required)."""

    moved: PathLike
    warp: PathLike | None = None
    moved_seg: PathLike | None = None
    matrix: PathLike | None = None
    jacobian: PathLike | None = None
    inverse_warp: PathLike | None = None
    qc: PathLike | None = None
    uncertainty: PathLike | None = None


@dataclass(frozen=True)
class OutputFormats:
    """How to write them.

    Attributes:
        warp_format: ``"morphreg"`` (:func:`morphreg.io.save_warp`) or ``"itk"`` (ITK/ANTs, LPS mm).
        warp_units: ``"voxel"`` or ``"mm"`` (morphreg warps).
        matrix_format: ``"ras"``, ``"itk"``, ``"fsl"`` or ``"lta"``.
        labels: a label table for the QC figure's names (:func:`morphreg.io.read_label_table`).
        names: the subjects' names for titles ``(moving, fixed)``.
    """

    warp_format: str = "morphreg"
    warp_units: str = "voxel"
    matrix_format: str = "ras"
    labels: Any = None
    names: tuple[str, str] | None = None


def check_itk_plane(pair: PairOnGrid) -> None:
    """Refuse ITK/ANTs exports of a 2D slice whose axes leave the world x-y plane (ITK reads 2D
    images in that plane only), before any work."""
    if pair.fixed.ndim == 2 and abs(pair.fixed.affine[2, :2]).max() > 1e-6:
        raise ValueError("`warp_format`/`matrix_format` itk: the 2D `fixed` slice's axes leave the world x-y plane "
                         "(e.g. a coronal slice), and ITK/ANTs read 2D images in that plane only; write morphreg "
                         "formats, or register the 3D volumes")


def _save_field(disp: np.ndarray, path: PathLike, pair: PairOnGrid, formats: OutputFormats) -> None:
    if formats.warp_format == "itk":
        save_itk_warp(disp, path, pair.fixed.affine)
    else:
        io.save_warp(disp, path, pair.fixed.affine, units=formats.warp_units, header=pair.fixed.header)


def jacobian_map(disp: np.ndarray) -> np.ndarray:
    """``(*spatial)`` Jacobian determinant of a ``(ndim, *spatial)`` voxel field (float64 arithmetic)."""
    return jacobian_det(torch.as_tensor(disp)[None].double())[0].numpy()


def fixed_point_inverse(disp: np.ndarray, report: Callable[[str], None]) -> np.ndarray:
    """A fixed-point inverse of ``disp`` ``(ndim, *spatial)``, reporting its residual."""
    from ..inverse import invert_disp

    result = invert_disp(torch.as_tensor(disp)[None], iterations=100, tolerance=1e-3)
    report(f"note: the inverse warp is a fixed-point inverse ({result.iterations} iterations); residual "
           f"|v + u(x + v)|: max {result.residual_max:.3g}, mean {result.residual_mean:.3g} voxels")
    return result.inverse_disp[0].numpy()


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


def write_outputs(pair: PairOnGrid, result: RegisteredPair, paths: OutputPaths,
                  formats: OutputFormats | None = None, *, moving_path: PathLike, fixed_path: PathLike,
                  key: str | None = None,
                  report: Callable[[str], None] = _stderr) -> None:
    """Write the outputs ``paths`` asks for.

    Args:
        pair, result: the pair on the fixed grid and its registration.
        moving_path, fixed_path: the input files (descriptions; FSL/LTA matrices need the
            moving image's own grid).
        key: array name when the moving image is an ``.npz``.
        report: receives notes (a fixed-point inverse and its residual).
    """
    formats = formats or OutputFormats()
    if paths.uncertainty and result.uncertainty is None:  # refused before anything is written
        raise ValueError("`uncertainty` is written by a probabilistic network (train --model probabilistic)")
    description = f"morphreg {__version__}: {Path(moving_path).name} registered to {Path(fixed_path).name}"
    io.save_volume(result.moved, paths.moved, description=description)
    if paths.warp:
        _save_field(result.disp, paths.warp, pair, formats)
    det = jacobian_map(result.disp) if paths.jacobian or paths.qc else None  # once for both outputs
    if paths.jacobian:
        io.save_volume(io.Volume(det.astype(np.float32), pair.fixed.affine, pair.fixed.header), paths.jacobian,
                       description=f"morphreg {__version__}: Jacobian determinant of {Path(moving_path).name} to "
                                   f"{Path(fixed_path).name}")
    if paths.qc:
        from ..viz.qc import plot_qc

        plot_qc(paths.qc, pair.fixed, pair.moving, result.moved, det,
                moved_seg=result.moved_seg, labels=formats.labels, names=formats.names)
    if paths.inverse_warp:
        inverse = result.inverse_disp if result.inverse_disp is not None else fixed_point_inverse(result.disp, report)
        # the inverse maps moving points back to fixed ones; it lives on the fixed grid too (the moving
        # image was resampled onto it), so it carries the fixed image's geometry
        _save_field(inverse, paths.inverse_warp, pair, formats)
    if paths.moved_seg:
        io.save_volume(result.moved_seg, paths.moved_seg, description=description)
    if paths.uncertainty:
        io.save_volume(io.Volume(result.uncertainty.astype(np.float32), pair.fixed.affine, pair.fixed.header),
                       paths.uncertainty, description=f"morphreg {__version__}: velocity posterior std (voxels) of "
                                                      f"{Path(moving_path).name} to {Path(fixed_path).name}")
    if paths.matrix and result.matrix is not None:
        moving = load_image(moving_path, key) if formats.matrix_format in ("fsl", "lta") else pair.moving
        try:
            save_matrix(world_matrix(result.matrix, pair.fixed.affine), paths.matrix, formats.matrix_format,
                        pair.fixed, moving)
        except ValueError as err:
            raise ValueError(f"`matrix_format` {formats.matrix_format}: {err}") from None
