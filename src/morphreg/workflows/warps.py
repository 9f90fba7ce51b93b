"""Warp files: read a field in any supported format, apply it to an image, start from one.

Error messages name this module's parameters in backquotes (`` `warp` ``); the command line
replaces them with its flags.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import __version__, io, spatial
from ..geometry import world_to_voxel_matrix
from ..io import load_itk_warp, load_matrix
from ..io.itk_warp import is_itk_warp
from ..io.matrices import detect_matrix_format
from ..io.warp import states_units
from .files import PairOnGrid, check_overlap, load_image, warp_across_grids

PathLike = str | Path
WARP_FORMATS = ("auto", "morphreg", "itk")


def read_warp(path: PathLike, fmt: str = "auto", name: str = "warp", unlabelled: str | None = None) -> io.WarpField:
    """The field of a warp file in voxels.

    Args:
        fmt: ``"morphreg"`` (:func:`morphreg.io.save_warp`'s files, which state their units),
            ``"itk"`` (ITK/ANTs, LPS mm), or ``"auto"``: as the file says (morphreg's ITK export
            is labelled). A file whose header states the other format is refused.
        name: how messages name the file's parameter.
        unlabelled: with ``"auto"``, the format of a file that states none (``"itk"``), else such
            a file is refused.
    """
    stated = _stated_format(path)
    if fmt != "auto" and stated not in (None, fmt):
        raise ValueError(f"`{name}` '{path}' states that it is {_FORMAT_TEXT[stated]}, but `warp_format` {fmt} reads "
                         f"it as {_FORMAT_TEXT[fmt]}; drop `warp_format` (the file's own statement is read)")
    if fmt == "auto" and stated is None and unlabelled is not None:
        fmt = unlabelled
    if fmt == "itk" or (fmt == "auto" and stated == "itk"):
        return load_itk_warp(path)
    try:
        return io.load_warp(path)
    except io.ImageReadError as err:
        if fmt == "auto" and "does not state its units" in str(err):
            raise ValueError(f"`{name}` '{path}' does not state its units or format; give `warp_format` itk for an "
                             "ITK/ANTs field (LPS mm), or rewrite it with morphreg register --warp") from None
        raise


_FORMAT_TEXT = {"itk": "an ITK/ANTs field (LPS mm)", "morphreg": "a morphreg field (its units stated)"}


def _stated_format(path: PathLike) -> str | None:
    """``"itk"`` or ``"morphreg"`` when the file's header says which, else ``None``."""
    if is_itk_warp(path):
        return "itk"
    return "morphreg" if states_units(path) else None


@dataclass(frozen=True)
class WarpedFile:
    """What :func:`warp_file` did: the interpolation used and whether the image was resampled first."""

    interp: str
    resampled: bool


def warp_file(moving: PathLike, warp: PathLike, moved: PathLike, *, warp_format: str = "auto",
              interp: str | None = None, key: str | None = None) -> WarpedFile:
    """Apply the field of ``warp`` to the image ``moving`` and write ``moved`` on the field's grid.

    Args:
        warp_format: see :func:`read_warp`.
        interp: ``"linear"`` or ``"nearest"``; default nearest for integer images (label maps).
        key: array name when ``moving`` is an ``.npz``.

    ``moving`` not on the field's grid is sampled once through the affines and the field
    (:func:`morphreg.workflows.files.warp_across_grids`), as ITK/ANTs apply an exported field.
    """
    field = read_warp(warp, warp_format)
    image = io.load_volume(moving, key=key)
    ndim = field.disp.shape[0]
    if image.ndim != ndim:
        raise ValueError(f"`moving` '{moving}' is {image.ndim}D but `warp` '{warp}' is a {ndim}D field")
    grid = io.Volume(field.disp[0], field.affine)
    check_overlap(image, grid, torch.from_numpy(field.disp)[None], f"`warp` '{warp}'")
    integer = image.data.dtype.kind in "iu"
    interp = interp or ("nearest" if integer else "linear")
    resampled = not io.same_grid(image, grid)
    if resampled:  # one interpolation, from the image's own grid through the affines and the field
        result = warp_across_grids(image, grid, torch.from_numpy(field.disp)[None], mode=interp)
    else:
        tensor = io.to_tensor(image)
        if interp == "linear":
            tensor = tensor.float()
        result = io.from_tensor(spatial.warp(tensor, torch.from_numpy(field.disp)[None], mode=interp), grid)
    if interp == "nearest" and integer:
        result.data = result.data.astype(image.data.dtype)
    io.save_volume(result, moved, description=f"morphreg {__version__}: warped by {Path(warp).name}")
    return WarpedFile(interp, resampled)


def matrix_disp(matrix_world: np.ndarray, fixed: io.Volume) -> tuple[torch.Tensor, torch.Tensor]:
    """Voxel displacement ``(1, ndim, *spatial)`` and voxel matrix ``(1, ndim, ndim + 1)`` of a world matrix.

    Args:
        matrix_world: ``(4, 4)`` RAS mm, fixed-image point -> moving-image point. The moving
            image is assumed resampled onto the fixed grid (as :func:`load_pair` does), so the
            voxel matrix is :func:`morphreg.geometry.world_to_voxel_matrix` on the fixed grid.
        fixed: the fixed image (its grid).
    """
    matrix = torch.from_numpy(world_to_voxel_matrix(matrix_world, fixed.affine, fixed.ndim)).float()
    return spatial.affine_to_disp(matrix, fixed.shape), matrix[None]


def initial_transform(pair: PairOnGrid, *, moving_path: PathLike, init_matrix: PathLike | None = None,
                      init_warp: PathLike | None = None, matrix_format: str | None = "ras",
                      warp_format: str = "auto",
                      key: str | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The initial transform of a registration: ``(disp (1, ndim, *spatial), voxel matrix or None)``.

    Args:
        pair: the loaded pair (the transform is expressed on its fixed grid).
        moving_path: the moving image's file (FSL and LTA matrices are relative to its own grid).
        init_matrix: a matrix file (ITK, LTA and morphreg's RAS files are detected; otherwise
            ``matrix_format``, and ``None`` refuses the file as ambiguous).
        init_warp: a warp file on the fixed grid, read as it states (morphreg's or ITK/ANTs);
            ``warp_format`` ``"itk"`` reads a field that states nothing as ITK/ANTs.
        key: array name when the moving image is an ``.npz``.

    Raises:
        ValueError: an unreadable or ambiguous file, a singular or non-affine matrix, a field
            on another grid, or a transform that maps no fixed voxel inside the moving image.
    """
    if (init_matrix is None) == (init_warp is None):
        raise ValueError("give one of `init_matrix` or `init_warp`")
    moving = pair.moving_native if pair.moving_native is not None else pair.moving
    if init_matrix is not None:
        try:
            world = load_matrix(init_matrix, _matrix_format(init_matrix, matrix_format), pair.fixed,
                                load_image(moving_path, key))
            disp, matrix = matrix_disp(world, pair.fixed)
        except ValueError as err:
            raise ValueError(f"`init_matrix`: {err}") from None
        check_overlap(moving, pair.fixed, disp, f"`init_matrix` '{init_matrix}'")
        return disp, matrix
    field = read_warp(init_warp, "auto", name="init_warp", unlabelled="itk" if warp_format == "itk" else None)
    if not io.same_grid(io.Volume(field.disp[0], field.affine), pair.fixed):
        raise ValueError(f"`init_warp` '{init_warp}' (grid {field.disp.shape[1:]}) is not on the `fixed` grid "
                         f"{pair.fixed.shape}; give a field on the fixed image's grid")
    disp = torch.from_numpy(field.disp)[None]
    check_overlap(moving, pair.fixed, disp, f"`init_warp` '{init_warp}'")
    return disp, None


def _matrix_format(path: PathLike, given: str | None) -> str:
    """The format of an initial matrix file: what the file names unambiguously, else ``given``.

    A plain text 4x4 without morphreg's header is written by FSL FLIRT (moving -> fixed, scaled
    voxels) and by hand or other tools as RAS (fixed -> moving mm): read as one of them it gives a
    wrong start, so without ``given`` it is refused.
    """
    detected = detect_matrix_format(path)
    if detected is not None:
        return detected
    if given is None and _is_text(Path(path)):
        raise ValueError(f"'{path}' is a plain text matrix, which FSL FLIRT writes (moving->fixed, scaled voxels) "
                         "as morphreg does (ras: fixed->moving, RAS mm) without its header; say which with "
                         "`matrix_format` fsl or ras")
    return given or "ras"  # the reader names what is wrong with a missing, empty or binary file


def _is_text(path: Path) -> bool:
    try:
        head = path.read_bytes()[:4096] if path.is_file() else b""
        head.decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return False
    return bool(head.strip()) and b"\0" not in head
