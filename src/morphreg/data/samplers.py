"""Pairing strategies: which ``(moving, fixed)`` subject indices item ``i`` of an epoch holds.

One class per strategy, each checking its own settings and answering :meth:`PairSampler.pair`;
:func:`make_sampler` picks one by name (``"random"``, ``"atlas"``, ``"pairs"``). Subject index
``-1`` stands for the atlas. A sampler that draws at random takes its numbers from the generator
it is given (seeded per item by :class:`~.pairs.PairDataset`), so an index always gives the same
pair and the generator goes on to the item's augmentation.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

PAIRINGS = ("random", "atlas", "pairs")

#: Subject index of the atlas in a pair.
ATLAS = -1


class PairSampler:
    """Base class: ``len(sampler)`` items, item ``index`` is the pair :meth:`pair` returns."""

    def __init__(self, length: int) -> None:
        self._length = length

    def __len__(self) -> int:
        return self._length

    def pair(self, index: int, gen: torch.Generator) -> tuple[int, int]:
        """``(moving, fixed)`` subject indices of item ``index`` (in ``[0, len)``; ``-1`` = atlas).

        ``gen`` is the item's seeded generator; strategies that draw at random consume from it.
        """
        raise NotImplementedError


class RandomPairs(PairSampler):
    """Inter-subject pairs ``(j, k)``, ``j != k``, drawn uniformly from ``gen``; ``pairs_per_epoch`` items.

    Args:
        n_images: number of subjects (>= 2).
        pairs_per_epoch: items per epoch (default: ``n_images``).
    """

    def __init__(self, fn: str, n_images: int, pairs_per_epoch: int | None = None) -> None:
        if n_images < 2:
            raise ValueError(f"{fn}: pairing='random' needs at least 2 images, got {n_images}")
        if pairs_per_epoch is None:
            pairs_per_epoch = n_images
        if isinstance(pairs_per_epoch, bool) or not isinstance(pairs_per_epoch, int) or pairs_per_epoch < 1:
            raise ValueError(f"{fn}: argument 'pairs_per_epoch' must be an integer >= 1, got {pairs_per_epoch!r}")
        super().__init__(pairs_per_epoch)
        self.n_images = n_images

    def pair(self, index: int, gen: torch.Generator) -> tuple[int, int]:
        j = int(torch.randint(self.n_images, (1,), generator=gen))
        k = int(torch.randint(self.n_images - 1, (1,), generator=gen))
        return j, k + (k >= j)


class AtlasPairs(PairSampler):
    """Every subject to the atlas: item ``i`` is ``(i, -1)``; one item per subject."""

    def __init__(self, fn: str, n_images: int) -> None:
        super().__init__(n_images)

    def pair(self, index: int, gen: torch.Generator) -> tuple[int, int]:
        return index, ATLAS


class ListedPairs(PairSampler):
    """A fixed list of ``(moving, fixed)`` subject indices, one item per listed pair.

    Args:
        n_images: number of subjects; every index must lie in ``[0, n_images)``.
        pairs: the non-empty list of index pairs.
    """

    def __init__(self, fn: str, n_images: int, pairs: Sequence[tuple[int, int]] | None) -> None:
        if pairs is None or len(pairs) == 0:
            raise ValueError(f"{fn}: pairing='pairs' needs a non-empty argument 'pairs'")
        checked = []
        for p, pair in enumerate(pairs):
            if len(pair) != 2 or not all(isinstance(i, int | np.integer) and 0 <= int(i) < n_images for i in pair):
                raise ValueError(
                    f"{fn}: argument 'pairs' item {p} must be two indices in [0, {n_images}), got {pair!r}"
                )
            checked.append((int(pair[0]), int(pair[1])))
        super().__init__(len(checked))
        self.pairs = checked

    def pair(self, index: int, gen: torch.Generator) -> tuple[int, int]:
        return self.pairs[index]


def make_sampler(
    fn: str,
    pairing: str,
    n_images: int,
    *,
    pairs: Sequence[tuple[int, int]] | None = None,
    pairs_per_epoch: int | None = None,
) -> PairSampler:
    """The sampler of strategy ``pairing`` (one of :data:`PAIRINGS`) over ``n_images`` subjects.

    ``fn`` names the caller in error messages; ``pairs_per_epoch`` is refused for strategies
    other than ``"random"``.
    """
    if pairing not in PAIRINGS:
        raise ValueError(f"{fn}: argument 'pairing' must be one of {list(PAIRINGS)}, got {pairing!r}")
    if pairing != "random" and pairs_per_epoch is not None:
        raise ValueError(f"{fn}: argument 'pairs_per_epoch' only applies to pairing='random'")
    if pairing == "random":
        return RandomPairs(fn, n_images, pairs_per_epoch)
    if pairing == "atlas":
        return AtlasPairs(fn, n_images)
    return ListedPairs(fn, n_images, pairs)
