"""Stacks of equally shaped images ``(N, *spatial)`` from one numpy file (training collections)."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np

from .formats import ImageReadError, PathLike, format_of
from .numpy_files import NAMES_KEY, read_numpy
from .sanity import check_finite, check_readable, normalise_dtype

# a training stack is kept in memory whole (and once more, normalised): it may take 1/4 of the limit
_STACK_SHARE = 4


class ImageStack(NamedTuple):
    """A stack of equally shaped images read from one numpy file.

    Attributes:
        data: ``(N, *spatial)`` array, 2 or 3 spatial dims.
        names: ``N`` subject names (from the file's ``"subjects"`` array when present, else
            zero-padded indices ``"000"``, ``"001"``, ...).
    """

    data: np.ndarray
    names: list[str]


def load_stack(path: PathLike, key: str | None = None) -> ImageStack:
    """Read a stack ``(N, *spatial)`` of 2D or 3D images from an ``.npy`` or ``.npz`` file.

    Args:
        path: ``.npy`` or ``.npz`` file.
        key: array name inside an ``.npz`` (e.g. ``"slice_norm"``); ``None`` picks its only
            array besides ``"subjects"``.

    Returns:
        :class:`ImageStack` ``(data (N, *spatial), names)``; floating data as float32.

    Raises:
        ImageReadError: as :func:`load_volume`, and for arrays that are not ``(N, X, Y)`` or
            ``(N, X, Y, Z)``.
    """
    fn = "morphreg.io.load_stack"
    path = Path(path)
    fmt = format_of(fn, path, ImageReadError)
    if fmt not in ("npy", "npz"):
        raise ImageReadError(
            f"{fn}: cannot read '{path}': a stack must be an .npy or .npz file (N, *spatial)"
        )
    check_readable(fn, path)
    data, names_arr = read_numpy(fn, path, fmt, key, names_key=NAMES_KEY, share=_STACK_SHARE)
    data = normalise_dtype(fn, path, data)
    if data.ndim not in (3, 4) or data.size == 0:
        raise ImageReadError(
            f"{fn}: cannot use '{path}': expected a non-empty stack (N, X, Y) or (N, X, Y, Z), "
            f"got shape {data.shape}"
        )
    check_finite(fn, path, data)
    n = data.shape[0]
    if names_arr is not None and names_arr.ndim == 1 and len(names_arr) == n:
        names = [str(s) for s in names_arr]
    else:
        width = len(str(n - 1))
        names = [f"{i:0{width}d}" for i in range(n)]
    return ImageStack(data, names)
