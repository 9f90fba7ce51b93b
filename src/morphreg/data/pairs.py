"""The training dataset: moving/fixed image pairs (with their label maps) as tensors, seeded per item.

Items are tensors ``(1, *spatial)`` so that a :class:`torch.utils.data.DataLoader` batches them into
``(B, 1, *spatial)``. Which subjects form item ``i`` is the job of a sampler (:mod:`.samplers`);
this module prepares the arrays once and builds each item, with the optional intensity
augmentation drawn from the same per-item generator.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from .preprocess import NORMALISE_METHODS, normalise_intensity
from .samplers import PAIRINGS, ListedPairs, PairSampler, make_sampler

_GAMMA_RANGE = (0.8, 1.25)


def _as_arrays(fn: str, name: str, arrays: object) -> list[np.ndarray]:
    if isinstance(arrays, np.ndarray):
        arrays = list(arrays)
    if not isinstance(arrays, Sequence) or len(arrays) == 0:
        raise ValueError(f"{fn}: argument '{name}' must be a non-empty list of arrays")
    out = [np.asarray(a) for a in arrays]
    for i, a in enumerate(out):
        if a.ndim not in (2, 3):
            raise ValueError(
                f"{fn}: argument '{name}' must hold 2D or 3D arrays (*spatial), item {i} has shape {a.shape}"
            )
        if a.shape != out[0].shape:
            raise ValueError(
                f"{fn}: all arrays of '{name}' must have one shape, item 0 is {out[0].shape} "
                f"but item {i} is {a.shape}"
            )
    return out


def _as_labels(fn: str, name: str, seg: np.ndarray) -> np.ndarray:
    seg = np.asarray(seg)
    if seg.dtype.kind not in "iub":
        raise TypeError(f"{fn}: argument '{name}' must hold integer label maps, got {seg.dtype}")
    return seg.astype(np.int64)


def _prepare_image(fn: str, name: str, x: np.ndarray, normalise: str | None) -> np.ndarray:
    if normalise is not None:
        return normalise_intensity(x, normalise)
    x = np.asarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise ValueError(f"{fn}: argument '{name}' contains NaN or inf")
    return x


def _check_labels(fn: str, segs: object, n: int, shape: tuple[int, ...]) -> list[np.ndarray]:
    """``N`` integer label maps matching ``n`` images of ``shape``, as int64."""
    seg_list = _as_arrays(fn, "segs", segs)
    if len(seg_list) != n or seg_list[0].shape != shape:
        raise ValueError(
            f"{fn}: argument 'segs' must match 'images' ({n} x {shape}), got "
            f"{len(seg_list)} x {seg_list[0].shape}"
        )
    return [_as_labels(fn, "segs", s) for s in seg_list]


def _check_augmentable(fn: str, images: list[np.ndarray]) -> None:
    """The gamma augmentation needs intensities in [0, 1]."""
    lo = min(float(x.min()) for x in images)
    hi = max(float(x.max()) for x in images)
    if lo < 0.0 or hi > 1.0:
        raise ValueError(
            f"{fn}: augment=True needs images in [0, 1], got range [{lo:.3g}, {hi:.3g}]; "
            "use normalise='minmax'"
        )


def _prepare_atlas(
    fn: str,
    atlas: np.ndarray | None,
    atlas_seg: np.ndarray | None,
    shape: tuple[int, ...],
    with_segs: bool,
    normalise: str | None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """The atlas image (prepared as the subjects are) and its label map (given iff ``with_segs``)."""
    if atlas is None:
        raise ValueError(f"{fn}: pairing='atlas' needs argument 'atlas'")
    atlas = np.asarray(atlas)
    if atlas.shape != shape:
        raise ValueError(f"{fn}: argument 'atlas' must have the images' shape {shape}, got {atlas.shape}")
    image = _prepare_image(fn, "atlas", atlas, normalise)
    if (atlas_seg is None) == with_segs:
        raise ValueError(f"{fn}: give both 'segs' and 'atlas_seg' (label supervision) or neither")
    if atlas_seg is None:
        return image, None
    atlas_seg = np.asarray(atlas_seg)
    if atlas_seg.shape != shape:
        raise ValueError(f"{fn}: argument 'atlas_seg' must have shape {shape}, got {atlas_seg.shape}")
    return image, _as_labels(fn, "atlas_seg", atlas_seg)


class PairDataset(Dataset):
    """Moving/fixed image pairs for training a registration network.

    Items are dicts of tensors: ``"moving"``, ``"fixed"`` ``(1, *spatial)`` float32;
    ``"moving_seg"``, ``"fixed_seg"`` ``(1, *spatial)`` int64 **only when** label maps were
    given (the keys are then always present); and ``"moving_index"``, ``"fixed_index"`` (ints;
    ``-1`` stands for the atlas).

    Pairings:

    * ``"random"`` (inter-subject, :class:`~.samplers.RandomPairs`): item ``i`` is a pair
      ``(j, k)``, ``j != k``, drawn with a ``torch.Generator`` seeded from ``(seed, epoch, i)``
      only, so an index always gives the same pair (DistributedSampler and resuming are exact).
      Call :meth:`set_epoch` to draw new pairs each epoch. ``len`` is ``pairs_per_epoch``
      (default: number of images).
    * ``"atlas"`` (:class:`~.samplers.AtlasPairs`): moving = subject ``i``, fixed = ``atlas``
      (with ``atlas_seg`` when ``segs`` are given).
    * ``"pairs"`` (:class:`~.samplers.ListedPairs`): moving = subject ``pairs[i][0]``, fixed =
      subject ``pairs[i][1]``.

    Args:
        images: ``N`` arrays ``(*spatial)`` (or one ``(N, *spatial)`` array), one shape.
        segs: optional ``N`` integer label maps matching ``images``.
        pairing: ``"random"``, ``"atlas"`` or ``"pairs"``.
        atlas: ``(*spatial)`` fixed image for ``pairing="atlas"``.
        atlas_seg: ``(*spatial)`` atlas label map (required with ``segs`` for the atlas).
        pairs: ``(moving, fixed)`` index pairs for ``pairing="pairs"``.
        pairs_per_epoch: dataset length for ``pairing="random"``.
        seed: seed of the random pairing and augmentation.
        augment: random intensity gamma ``x ** g`` per image, ``g`` log-uniform in
            [0.8, 1.25], deterministic per index (labels untouched; images must be in [0, 1]).
        normalise: ``"minmax"``/``"percentile"`` (:func:`normalise_intensity`, applied once
            here, also to the atlas) or ``None`` to take the images as given.
    """

    def __init__(
        self,
        images: Sequence[np.ndarray] | np.ndarray,
        segs: Sequence[np.ndarray] | np.ndarray | None = None,
        pairing: str = "random",
        *,
        atlas: np.ndarray | None = None,
        atlas_seg: np.ndarray | None = None,
        pairs: Sequence[tuple[int, int]] | None = None,
        pairs_per_epoch: int | None = None,
        seed: int = 0,
        augment: bool = False,
        normalise: str | None = "minmax",
    ) -> None:
        fn = "morphreg.data.PairDataset"
        if pairing not in PAIRINGS:
            raise ValueError(f"{fn}: argument 'pairing' must be one of {list(PAIRINGS)}, got {pairing!r}")
        if normalise is not None and normalise not in NORMALISE_METHODS:
            raise ValueError(
                f"{fn}: argument 'normalise' must be one of {list(NORMALISE_METHODS)} or None, "
                f"got {normalise!r}"
            )
        self.images = [_prepare_image(fn, "images", x, normalise) for x in _as_arrays(fn, "images", images)]
        shape = self.images[0].shape
        n = len(self.images)
        self.segs: list[np.ndarray] | None = None if segs is None else _check_labels(fn, segs, n, shape)
        if augment:
            _check_augmentable(fn, self.images)
        self.pairing = pairing
        self.seed = int(seed)
        self.augment = bool(augment)
        self.epoch = 0
        self.sampler: PairSampler = make_sampler(fn, pairing, n, pairs=pairs, pairs_per_epoch=pairs_per_epoch)
        self.atlas: np.ndarray | None = None
        self.atlas_seg: np.ndarray | None = None
        if pairing == "atlas":
            self.atlas, self.atlas_seg = _prepare_atlas(fn, atlas, atlas_seg, shape, self.segs is not None, normalise)
        self.pairs: list[tuple[int, int]] | None = self.sampler.pairs if isinstance(self.sampler, ListedPairs) else None

    def __len__(self) -> int:
        return len(self.sampler)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose random pairs and augmentations are drawn (default 0)."""
        self.epoch = int(epoch)

    def _generator(self, index: int) -> torch.Generator:
        state = np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(2)
        seed = (int(state[0]) << 31 ^ int(state[1])) & ((1 << 63) - 1)
        return torch.Generator().manual_seed(seed)

    def _index(self, index: int) -> int:
        length = len(self.sampler)
        if not -length <= index < length:
            raise IndexError(f"morphreg.data.PairDataset: index {index} out of range [0, {length})")
        return index % length

    def pair_indices(self, index: int) -> tuple[int, int]:
        """``(moving, fixed)`` subject indices of item ``index`` (``-1`` = atlas)."""
        index = self._index(index)
        return self.sampler.pair(index, self._generator(index))

    def _image(self, i: int) -> np.ndarray:
        if i == -1:
            assert self.atlas is not None
            return self.atlas
        return self.images[i]

    def _seg(self, i: int) -> np.ndarray:
        if i == -1:
            assert self.atlas_seg is not None
            return self.atlas_seg
        assert self.segs is not None
        return self.segs[i]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int]:
        index = self._index(index)
        gen = self._generator(index)
        moving_i, fixed_i = self.sampler.pair(index, gen)  # the augmentation draws after the pair
        moving = torch.from_numpy(self._image(moving_i)).unsqueeze(0)
        fixed = torch.from_numpy(self._image(fixed_i)).unsqueeze(0)
        if self.augment:
            log_lo, log_hi = np.log(_GAMMA_RANGE[0]), np.log(_GAMMA_RANGE[1])
            gammas = torch.exp(log_lo + (log_hi - log_lo) * torch.rand(2, generator=gen))
            moving = moving.clamp(0, 1) ** gammas[0].item()
            fixed = fixed.clamp(0, 1) ** gammas[1].item()
        item: dict[str, torch.Tensor | int] = {
            "moving": moving.clone(),
            "fixed": fixed.clone(),
            "moving_index": moving_i,
            "fixed_index": fixed_i,
        }
        if self.segs is not None:
            item["moving_seg"] = torch.from_numpy(self._seg(moving_i)).unsqueeze(0).clone()
            item["fixed_seg"] = torch.from_numpy(self._seg(fixed_i)).unsqueeze(0).clone()
        return item
