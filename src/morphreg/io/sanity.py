"""Refuse bad files early: missing or empty files, NaN/inf, unsupported dtypes, sizes beyond the
memory budget (from the header, before any allocation), singular affines (damaged gzip streams:
:mod:`.gzip_files`).

Every refusal is an :class:`~.formats.ImageReadError` with a one-line message naming the file.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .. import _limits
from .formats import ImageReadError


def first_line(err: BaseException) -> str:
    text = str(err).strip()
    line = text.splitlines()[0] if text else type(err).__name__
    return line[:200]


def check_readable(fn: str, path: Path) -> None:
    if not path.exists():
        raise ImageReadError(f"{fn}: cannot read '{path}': file does not exist")
    if not path.is_file():
        raise ImageReadError(f"{fn}: cannot read '{path}': not a regular file")
    if path.stat().st_size == 0:
        raise ImageReadError(f"{fn}: cannot read '{path}': file is empty (0 bytes)")


def check_finite(fn: str, path: Path, data: np.ndarray) -> None:
    if data.dtype.kind not in "fc":
        return
    finite = np.isfinite(data)
    if not finite.all():
        n_nan = int(np.isnan(data).sum())
        n_inf = int(data.size - finite.sum()) - n_nan
        raise ImageReadError(
            f"{fn}: cannot use '{path}': data contain {n_nan} NaN and {n_inf} infinite "
            "value(s); replace them (e.g. numpy.nan_to_num) before registration"
        )


def normalise_dtype(fn: str, path: Path, data: np.ndarray) -> np.ndarray:
    kind = data.dtype.kind
    if kind == "b":
        return data.astype(np.uint8)
    if kind == "f":
        if data.dtype.itemsize > 4 and data.size:
            check_finite(fn, path, data)  # count NaN/inf before float32 turns large values into inf
            biggest = float(np.abs(data).max())
            if biggest > float(np.finfo(np.float32).max):
                raise ImageReadError(
                    f"{fn}: cannot use '{path}': its {data.dtype} values reach {biggest:.3g}, beyond the "
                    f"float32 range (+-{float(np.finfo(np.float32).max):.3g}) morphreg computes in; rescale the image"
                )
        return data.astype(np.float32, copy=False)
    if kind in "iu":
        return data
    raise ImageReadError(
        f"{fn}: cannot use '{path}': unsupported data type {data.dtype} "
        "(expected integer, boolean or real floating point)"
    )


def unreadable(fn: str, path: Path, detail: str) -> ImageReadError:
    return ImageReadError(f"{fn}: cannot read '{path}': not a readable image (truncated or corrupt?): {detail}")


def _shape_text(shape: tuple[int, ...]) -> str:
    return "x".join(str(int(s)) for s in shape) if shape else "()"


def check_declared_size(
    fn: str, path: Path, shape: tuple[int, ...], dtype: np.dtype, stored: int | None, *, share: int = 0
) -> int:
    """Refuse, before any allocation, data whose header-declared size cannot fit or is not there.

    Args:
        shape, dtype: as declared by the file's header.
        stored: bytes of data the file actually holds after its header (``None``: unknown).
        share: the budget is ``memory_limit() / share`` (default: one image's share).

    Returns:
        The declared data size in bytes.
    """
    voxels = math.prod(int(s) for s in shape)
    nbytes = voxels * dtype.itemsize
    in_memory = voxels * max(dtype.itemsize, 4)  # images are computed on as float32
    budget = _limits.memory_limit() // (share or _limits.IMAGE_SHARE)
    if in_memory > budget:
        raise ImageReadError(
            f"{fn}: cannot read '{path}': its header declares {_shape_text(shape)} voxels of {dtype} "
            f"({_limits.format_bytes(in_memory)} in memory), more than the {_limits.format_bytes(budget)} one "
            f"input may take (1/{share or _limits.IMAGE_SHARE} of the {_limits.budget_note()})"
        )
    if stored is not None and nbytes > stored:
        raise unreadable(
            fn, path, f"its header declares {_shape_text(shape)} voxels of {dtype} "
            f"({_limits.format_bytes(nbytes)}) but the file holds only {stored} bytes of data"
        ) from None
    return nbytes


def check_geometry(fn: str, path: Path, affine: np.ndarray) -> None:
    """Refuse a degenerate voxel-to-world matrix (a zero voxel size, a singular sform)."""
    if not np.isfinite(affine).all():
        raise ImageReadError(f"{fn}: cannot use '{path}': its affine contains NaN or inf")
    singular = np.linalg.svd(affine[:3, :3], compute_uv=False)
    if not singular.min() > 1e-6 * max(float(singular.max()), 1e-12):
        sizes = ", ".join(f"{v:.3g}" for v in np.linalg.norm(affine[:3, :3], axis=0))
        raise ImageReadError(
            f"{fn}: cannot use '{path}': its voxel-to-world affine is singular (voxel sizes {sizes} mm); "
            "every axis needs a non-zero voxel size (for a 2D image too: set the third pixdim or sform "
            "column), so fix the header's pixdim/sform/qform first"
        )
