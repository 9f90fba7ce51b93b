"""Input validation shared by every public entry point.

One helper per kind of argument, each raising ``TypeError``/``ValueError`` with a message
that names the calling function, the argument, what was expected and what was given.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

SUPPORTED_NDIMS = (2, 3)


def _where(fn: str, name: str) -> str:
    return f"{fn}: argument '{name}'"


def check_tensor(fn: str, name: str, x: object) -> torch.Tensor:
    """Raise ``TypeError`` unless ``x`` is a ``torch.Tensor``."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{_where(fn, name)} must be a torch.Tensor, got {type(x).__name__}")
    return x


def as_float64_tensor(fn: str, name: str, value: object, expected: str) -> torch.Tensor:
    """A float64 CPU tensor from a tensor or array-like; ``TypeError`` naming ``expected`` otherwise."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", torch.float64)
    try:
        return torch.as_tensor(np.asarray(value, dtype=np.float64))
    except (TypeError, ValueError):
        raise TypeError(f"{_where(fn, name)} must be {expected}, got {type(value).__name__}") from None


def check_image(
    fn: str,
    name: str,
    x: object,
    *,
    channels: int | None = None,
    floating: bool = True,
) -> int:
    """Check an image tensor of layout ``(B, C, *spatial)`` and return its spatial ndim.

    Args:
        fn: name of the calling function, for the message.
        name: name of the argument, for the message.
        x: the tensor, expected ``(B, C, H, W)`` or ``(B, C, D, H, W)``.
        channels: required channel count, or ``None`` for any.
        floating: require a floating-point dtype.
    """
    x = check_tensor(fn, name, x)
    if x.dim() - 2 not in SUPPORTED_NDIMS:
        raise ValueError(
            f"{_where(fn, name)} must have shape (B, C, *spatial) with 2 or 3 spatial dims, "
            f"got shape {tuple(x.shape)} ({x.dim()} dims)"
        )
    if channels is not None and x.shape[1] != channels:
        raise ValueError(
            f"{_where(fn, name)} must have {channels} channel(s) (dim 1), "
            f"got shape {tuple(x.shape)}"
        )
    if floating and not x.is_floating_point():
        raise TypeError(
            f"{_where(fn, name)} must be a floating-point tensor, got dtype {x.dtype}"
        )
    if any(s == 0 for s in x.shape):
        raise ValueError(f"{_where(fn, name)} must not be empty, got shape {tuple(x.shape)}")
    return x.dim() - 2


def check_field(fn: str, name: str, disp: object, *, spatial: Sequence[int] | None = None) -> int:
    """Check a displacement/velocity field ``(B, ndim, *spatial)``; return ndim.

    Args:
        spatial: if given, the spatial shape the field must have.
    """
    disp = check_tensor(fn, name, disp)
    ndim = disp.dim() - 2
    if ndim not in SUPPORTED_NDIMS or disp.shape[1] != ndim:
        raise ValueError(
            f"{_where(fn, name)} must be a field of shape (B, ndim, *spatial) with ndim = number "
            f"of spatial dims (2 or 3), got shape {tuple(disp.shape)}"
        )
    if not disp.is_floating_point():
        raise TypeError(f"{_where(fn, name)} must be floating-point, got dtype {disp.dtype}")
    if spatial is not None and tuple(disp.shape[2:]) != tuple(spatial):
        raise ValueError(
            f"{_where(fn, name)} must have spatial shape {tuple(spatial)}, "
            f"got {tuple(disp.shape[2:])}"
        )
    return ndim


def check_same_shape(fn: str, name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    """Raise ``ValueError`` unless ``a`` and ``b`` have the same shape."""
    if a.shape != b.shape:
        raise ValueError(
            f"{fn}: arguments '{name_a}' and '{name_b}' must have the same shape, "
            f"got {tuple(a.shape)} and {tuple(b.shape)}"
        )


def check_batch(fn: str, name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    """Raise unless batch sizes are equal or one of them is 1 (broadcast)."""
    if a.shape[0] != b.shape[0] and 1 not in (a.shape[0], b.shape[0]):
        raise ValueError(
            f"{fn}: batch sizes of '{name_a}' ({a.shape[0]}) and '{name_b}' ({b.shape[0]}) "
            "must match or one of them must be 1"
        )


def check_choice(fn: str, name: str, value: object, options: Sequence[object]) -> None:
    """Raise ``ValueError`` unless ``value`` is one of ``options``."""
    if value not in options:
        raise ValueError(
            f"{_where(fn, name)} must be one of {list(options)}, got {value!r}"
        )


def check_positive_int(fn: str, name: str, value: object, *, minimum: int = 1, maximum: int | None = None) -> int:
    """Raise unless ``value`` is an int >= ``minimum`` (and <= ``maximum`` when given)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        expected = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise ValueError(f"{_where(fn, name)} must be an integer {expected}, got {value!r}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{_where(fn, name)} must be an integer in [{minimum}, {maximum}], got {value!r}")
    return value
