"""Per-image preparation: intensity normalisation to [0, 1] and the one label-map policy."""

from __future__ import annotations

import numpy as np

NORMALISE_METHODS = ("minmax", "percentile")
_PERCENTILES = (0.5, 99.5)
#: Label maps hold whole numbers in [0, MAX_LABEL] (int32, what NIfTI tools and torch read alike).
MAX_LABEL = 2**31 - 1


def as_label_map(values: np.ndarray, what: str) -> np.ndarray:
    """Check one label map against morphreg's one label policy; return it with an integer dtype.

    Policy: a label map holds whole numbers in ``[0, MAX_LABEL]``. Integer and boolean arrays
    keep their dtype (booleans become uint8); floating arrays must hold whole numbers only and
    become int32. Anything else (1.5, -1, 3e9, NaN) is refused, never rounded or wrapped.

    Args:
        values: the label map ``(*spatial)``.
        what: names the input in the message, e.g. ``"--moving-seg 'a.nii.gz'"``.

    Raises:
        ValueError: ``"<what> must be an integer label map (whole numbers in [0, 2147483647]); found ..."``.
    """
    values = np.asarray(values)
    kind = values.dtype.kind
    rule = f"{what} must be an integer label map (whole numbers in [0, {MAX_LABEL}]); found"
    if kind == "b":
        return values.astype(np.uint8)
    if kind not in "iuf":
        raise ValueError(f"{rule} values of dtype {values.dtype}")
    if values.size == 0:
        return values.astype(np.int32) if kind == "f" else values
    if kind == "f":
        bad = ~np.isfinite(values) | (np.mod(values, 1) != 0)
        if bad.any():
            example = float(values[bad].flat[0])
            raise ValueError(f"{rule} non-integer values such as {example:g} (dtype {values.dtype})")
    lo, hi = values.min(), values.max()
    if lo < 0:
        raise ValueError(f"{rule} negative values (smallest {float(lo):g})")
    if hi > MAX_LABEL:
        raise ValueError(f"{rule} values up to {float(hi):.4g}")
    return values.astype(np.int32) if kind == "f" else values


def intensity_range(x: np.ndarray, method: str = "minmax") -> tuple[float, float]:
    """The ``(lo, hi)`` that :func:`normalise_intensity` maps to ``(0, 1)`` for image ``x`` ``(*spatial)``.

    Lets another image (e.g. ``x`` warped) be put on the same scale with :func:`apply_range`.
    """
    fn = "morphreg.data.intensity_range"
    if method not in NORMALISE_METHODS:
        raise ValueError(f"{fn}: argument 'method' must be one of {list(NORMALISE_METHODS)}, got {method!r}")
    values = np.asarray(x, dtype=np.float64)
    if values.size == 0:
        return 0.0, 0.0
    if not np.isfinite(values).all():
        raise ValueError(f"{fn}: argument 'x' contains NaN or inf")
    if method == "minmax":
        return float(values.min()), float(values.max())
    lo, hi = (float(v) for v in np.percentile(values, _PERCENTILES))
    return lo, hi


def apply_range(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """``x`` clipped to ``[lo, hi]`` and scaled to [0, 1] (float32; zeros when ``hi <= lo``)."""
    values = np.asarray(x, dtype=np.float64)
    if not hi > lo:
        return np.zeros(values.shape, dtype=np.float32)
    return ((np.clip(values, lo, hi) - lo) / (hi - lo)).astype(np.float32)


def normalise_intensity(x: np.ndarray, method: str = "minmax") -> np.ndarray:
    """Scale one image to [0, 1].

    Args:
        x: image ``(*spatial)``.
        method: ``"minmax"`` (min -> 0, max -> 1) or ``"percentile"`` (clip to the 0.5th and
            99.5th percentiles, then min-max).

    Returns:
        float32 array of ``x``'s shape in [0, 1]; a constant image gives zeros.
    """
    fn = "morphreg.data.normalise_intensity"
    if method not in NORMALISE_METHODS:
        raise ValueError(f"{fn}: argument 'method' must be one of {list(NORMALISE_METHODS)}, got {method!r}")
    values = np.asarray(x, dtype=np.float64)
    if values.size == 0:
        return values.astype(np.float32)
    if not np.isfinite(values).all():
        raise ValueError(f"{fn}: argument 'x' contains NaN or inf")
    return apply_range(values, *intensity_range(values, method))
