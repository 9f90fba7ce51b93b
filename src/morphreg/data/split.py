"""Seeded train/validation split of subject indices."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Split(NamedTuple):
    """Subject indices of a train/validation split (each sorted ascending, disjoint)."""

    train: list[int]
    val: list[int]


def split_subjects(n: int, val_fraction: float = 0.2, seed: int = 0) -> Split:
    """Random, seeded split of subjects ``0..n-1`` into training and validation.

    Args:
        n: number of subjects (>= 1).
        val_fraction: fraction in [0, 1) for validation; ``round(n * val_fraction)``
            subjects, at least 1 (when ``val_fraction > 0`` and ``n >= 2``) and at most
            ``n - 1``.
        seed: the same seed always gives the same split.

    Returns:
        :class:`Split` ``(train, val)``, sorted lists of ints covering ``range(n)``.
    """
    fn = "morphreg.data.split_subjects"
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"{fn}: argument 'n' must be an integer >= 1, got {n!r}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"{fn}: argument 'val_fraction' must be in [0, 1), got {val_fraction!r}")
    n_val = int(round(n * val_fraction))
    if val_fraction > 0 and n >= 2:
        n_val = min(max(n_val, 1), n - 1)
    order = np.random.default_rng(seed).permutation(n)
    return Split(sorted(int(i) for i in order[n_val:]), sorted(int(i) for i in order[:n_val]))
