"""Check and convert figure inputs: one image, label map or displacement field, numpy or torch.

Inputs describe **one** image or pair, without batch or channel dimensions; tensors are detached
and copied to the CPU here. Errors name the function and the argument.
"""

from __future__ import annotations

import numpy as np
import torch

from ._common import Array


def to_numpy(fn: str, name: str, x: object) -> Array:
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


def check_numeric(fn: str, name: str, arr: Array) -> None:
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool) or np.iscomplexobj(arr):
        raise TypeError(f"{fn}: argument '{name}' must be real-valued, got dtype {arr.dtype}")


def _check_spatial(fn: str, name: str, shape: tuple[int, ...], what: str) -> None:
    if len(shape) not in (2, 3) or min(shape) < 2:
        raise ValueError(
            f"{fn}: argument '{name}' must be {what} with 2 or 3 spatial dims of size >= 2 "
            f"and no batch/channel dims (e.g. pass x[0, 0] of a (B, C, *spatial) tensor), "
            f"got shape {shape}"
        )


def as_image(
    fn: str,
    name: str,
    x: object,
    *,
    like: tuple[int, ...] | None = None,
    like_name: str = "",
) -> Array:
    """One image ``(*spatial)`` as float64; optionally of spatial shape ``like``."""
    arr = to_numpy(fn, name, x)
    check_numeric(fn, name, arr)
    _check_spatial(fn, name, arr.shape, "an image (*spatial)")
    if like is not None and arr.shape != tuple(like):
        raise ValueError(
            f"{fn}: argument '{name}' must have the spatial shape {tuple(like)} of "
            f"'{like_name}', got {arr.shape}"
        )
    return arr.astype(np.float64)


def as_labels(fn: str, name: str, x: object, *, like: tuple[int, ...], like_name: str) -> Array:
    """One integer label map ``(*spatial)`` of spatial shape ``like``, as int64."""
    arr = to_numpy(fn, name, x)
    check_numeric(fn, name, arr)
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


def as_field(fn: str, name: str, x: object, *, like: tuple[int, ...] | None = None,
           like_name: str = "") -> Array:
    """One displacement ``(ndim, *spatial)`` in voxels as float64."""
    arr = to_numpy(fn, name, x)
    check_numeric(fn, name, arr)
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


def as_spacing(fn: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{fn}: argument 'spacing' must be an integer >= 1, got {value!r}")
    return int(value)
