"""Input validation shared by every public entry point.

One helper per kind of argument, each raising ``TypeError``/``ValueError`` with a message
that names the calling function, the argument, what was expected and what was given.
"""

from __future__ import annotations

import math
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


def check_number(
    fn: str,
    name: str,
    value: object,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    exclusive_minimum: bool = False,
) -> float:
    """Raise ``ValueError`` unless ``value`` is a finite real number in the given range.

    ``bool`` is refused (it is an ``int`` to Python, never a number to the caller).

    Args:
        minimum, maximum: inclusive bounds, or ``None`` for none.
        exclusive_minimum: ``minimum`` itself is refused (``> minimum``).

    Returns:
        ``value`` as a ``float``.
    """
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    if ok and minimum is not None:
        ok = value > minimum if exclusive_minimum else value >= minimum
    if ok and maximum is not None:
        ok = value <= maximum
    if not ok:
        raise ValueError(f"{_where(fn, name)} must be {_number_range(minimum, maximum, exclusive_minimum)}, "
                         f"got {value!r}")
    return float(value)  # type: ignore[arg-type]


def _number_range(minimum: float | None, maximum: float | None, exclusive_minimum: bool) -> str:
    if minimum == 0 and exclusive_minimum and maximum is None:
        return "a positive finite number"
    if minimum is not None and maximum is not None:
        return f"a finite number in {'(' if exclusive_minimum else '['}{minimum:g}, {maximum:g}]"
    if minimum is not None:
        return f"a finite number {'>' if exclusive_minimum else '>='} {minimum:g}"
    if maximum is not None:
        return f"a finite number <= {maximum:g}"
    return "a finite number"


#: What :func:`check_pair` requires the two images to share besides their number of spatial dims.
PAIR_MATCHES = ("shape", "grid", "channels")


def check_pair(
    fn: str,
    a: object,
    b: object,
    *,
    names: tuple[str, str] = ("moving", "fixed"),
    match: str = "grid",
    channels: int | None = None,
) -> int:
    """Check two images ``(B, C, *spatial)`` that are compared or registered; return ndim.

    Both must be floating-point images (:func:`check_image`) with the same number of spatial
    dims and, if ``channels`` is given, that many channels. ``match`` says what else they share:

    * ``"shape"``: the whole shape, batch included (losses, networks).
    * ``"grid"``: channels and spatial shape; batch sizes equal or one of them 1 (optimisers).
    * ``"channels"``: channels only, the grids may differ; batch as for ``"grid"`` (affine).

    Args:
        fn: name of the calling function, for the message.
        a, b: the two images.
        names: their argument names, for the message.
    """
    check_choice(fn, "match", match, PAIR_MATCHES)
    name_a, name_b = names
    a = check_tensor(fn, name_a, a)
    b = check_tensor(fn, name_b, b)
    ndim = check_image(fn, name_a, a, channels=channels)
    ndim_b = check_image(fn, name_b, b, channels=channels)
    shapes = f"{tuple(a.shape)} and {tuple(b.shape)}"
    if ndim != ndim_b:
        raise ValueError(f"{fn}: '{name_a}' has {ndim} spatial dims but '{name_b}' has {ndim_b} (shapes {shapes})")
    if match == "shape":
        check_same_shape(fn, name_a, a, name_b, b)
        return ndim
    if match == "grid" and a.shape[1:] != b.shape[1:]:
        raise ValueError(
            f"{fn}: arguments '{name_a}' and '{name_b}' must have the same channels and spatial shape, got {shapes}"
        )
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"{fn}: '{name_a}' and '{name_b}' must have the same number of channels, got "
            f"{a.shape[1]} and {b.shape[1]}"
        )
    check_batch(fn, name_a, a, name_b, b)
    return ndim


def check_matrix(
    fn: str,
    name: str,
    matrix: object,
    ndim: int | None = None,
    *,
    invertible: bool = True,
) -> torch.Tensor:
    """Check a voxel matrix ``(B, n, n + 1)`` or ``(B, n + 1, n + 1)`` (batch dim optional).

    The matrix maps a voxel index ``x`` (ij order) to ``A x + t`` (see :mod:`morphreg.geometry`).
    It must be a floating-point tensor with finite values and, with ``invertible``, a linear
    part ``A`` whose determinant is not 0.

    Args:
        ndim: the required ``n`` (the spatial dims of the images), or ``None`` for 2 or 3.

    Returns:
        The matrix with a batch dim, ``(B, n, n + 1)`` or ``(B, n + 1, n + 1)``; same dtype and
        device, still attached to the autograd graph.
    """
    m = check_tensor(fn, name, matrix)
    if m.dim() == 2:
        m = m.unsqueeze(0)
    n = m.shape[-1] - 1 if ndim is None else ndim
    if m.dim() != 3 or n not in SUPPORTED_NDIMS or m.shape[-1] != n + 1 or m.shape[-2] not in (n, n + 1):
        images = "2D or 3D images" if ndim is None else f"{ndim}D images"
        n_text = "ndim" if ndim is None else str(n)
        n1_text = "ndim + 1" if ndim is None else str(n + 1)
        raise ValueError(
            f"{_where(fn, name)} must have shape (B, {n_text}, {n1_text}) or (B, {n1_text}, {n1_text}) "
            f"(a voxel matrix for {images}), got {tuple(matrix.shape)}"  # type: ignore[union-attr]
        )
    if not m.is_floating_point():
        raise TypeError(f"{_where(fn, name)} must be floating-point, got {m.dtype}")
    if not torch.isfinite(m).all():
        raise ValueError(f"{_where(fn, name)} contains NaN or inf")
    if invertible:
        check_invertible(fn, name, m[:, :n, :n], "an affine registration must be invertible")
    return m


def check_invertible(fn: str, name: str, linear: torch.Tensor, why: str) -> None:
    """Raise ``ValueError`` if any matrix of ``linear`` ``(B, n, n)`` has ``|det| < 1e-12``."""
    det = torch.linalg.det(linear.detach().to(torch.float64))
    if (det.abs() < 1e-12).any():
        raise ValueError(
            f"{_where(fn, name)} is singular (det of the linear part = {det.abs().min().item():.3g}); {why}"
        )
