"""Training data: image collections, intensity normalisation, subject splits and pairing.

Reading files is delegated to :mod:`morphreg.io`; this module never looks at a file format.
Arrays are ``(*spatial)`` (2D ``(X, Y)`` or 3D ``(X, Y, Z)``); dataset items are tensors
``(1, *spatial)`` so that a :class:`torch.utils.data.DataLoader` batches them into
``(B, 1, *spatial)``.

Randomness is explicit: every random choice comes from a seed (a ``numpy`` or ``torch``
generator built from it), never from global state.
"""

from __future__ import annotations

import csv
import glob
import os
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from scipy import ndimage
from torch.utils.data import Dataset

from . import io

__all__ = [
    "MAX_LABEL",
    "NORMALISE_METHODS",
    "PAIRINGS",
    "PairDataset",
    "Split",
    "as_label_map",
    "load_collection",
    "normalise_intensity",
    "read_pairs_csv",
    "split_subjects",
    "synthetic_shapes",
]

PathLike = str | os.PathLike[str]
NORMALISE_METHODS = ("minmax", "percentile")
PAIRINGS = ("random", "atlas", "pairs")
PAIR_COLUMNS = ("moving", "fixed", "moving_seg", "fixed_seg")
_GAMMA_RANGE = (0.8, 1.25)
_PERCENTILES = (0.5, 99.5)
#: Label maps hold whole numbers in [0, MAX_LABEL] (int32, what NIfTI tools and torch read alike).
MAX_LABEL = 2**31 - 1
#: The longest CSV line read (csv's own cell limit is 128 KiB, and a path is at most 4096 characters).
_MAX_CSV_CELL = 64 * 1024
_MAX_PATH = 4096


# --------------------------------------------------------------------------------------------
# Label maps


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


# --------------------------------------------------------------------------------------------
# Collections


def _unique_names(paths: Sequence[Path]) -> list[str]:
    """File names without extension; if they collide, paths relative to the common folder."""
    stems = [io.split_ext(p)[0] for p in paths]
    if len(set(stems)) == len(stems):
        return stems
    resolved = [p.resolve() for p in paths]
    root = Path(os.path.commonpath([str(p.parent) for p in resolved]))
    return [str(p.parent.relative_to(root) / io.split_ext(p)[0]).replace(os.sep, "/") for p in resolved]


def _is_pattern(spec: Path) -> bool:
    return any(c in str(spec) for c in "*?[") and not spec.exists()


def _collection_paths(fn: str, spec: Path) -> list[Path]:
    if _is_pattern(spec):
        paths = sorted(Path(p) for p in glob.glob(str(spec)) if Path(p).is_file())
        paths = [p for p in paths if io.split_ext(p)[1] and not p.name.startswith(".")]
        if not paths:
            raise ValueError(f"{fn}: pattern '{spec}' matches no image files")
        return paths
    if spec.is_dir():
        paths = sorted(
            (p for p in spec.iterdir() if p.is_file() and not p.name.startswith(".")),
            key=lambda p: p.name,
        )
        images = [p for p in paths if io.split_ext(p)[1]]
        if not images:
            raise ValueError(
                f"{fn}: directory '{spec}' holds no image files (looked for "
                f"{', '.join(io.SUPPORTED_EXTENSIONS)}; found {len(paths)} other file(s))"
            )
        return images
    if not spec.exists():
        raise ValueError(f"{fn}: '{spec}' does not exist")
    # a .txt list of paths
    try:
        lines = spec.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"{fn}: cannot read the list '{spec}': {err}") from None
    paths = []
    for number, line in enumerate(lines, start=1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        path = Path(entry).expanduser()
        if not path.is_absolute():
            path = spec.parent / path
        if not path.is_file():
            raise ValueError(f"{fn}: '{spec}' line {number}: file '{path}' does not exist")
        paths.append(path)
    if not paths:
        raise ValueError(f"{fn}: the list '{spec}' names no files")
    return paths


def load_collection(spec: PathLike, key: str | None = None) -> tuple[list[np.ndarray], list[str]]:
    """Read a collection of equally shaped images or label maps.

    Args:
        spec: one of

            * a directory: every image file in it (extensions of
              :data:`morphreg.io.SUPPORTED_EXTENSIONS`, hidden files skipped), sorted by name;
            * a ``.txt`` file listing one path per line (relative to the list's folder;
              blank lines and ``#`` comments ignored);
            * a glob pattern, e.g. ``"data/*/slice_norm.nii.gz"`` (sorted);
            * an ``.npz``/``.npy`` stack ``(N, *spatial)``; ``key`` selects the ``.npz``
              array (e.g. ``"slice_norm"``).
        key: array key for ``.npz`` files (the stack, or each listed ``.npz`` file).

    Returns:
        ``(arrays, names)``: ``N`` arrays ``(*spatial)`` as read (float32 images or integer
        label maps, not normalised) and ``N`` names: file names without extension (made
        unique with their folders when they collide), the stack's ``subjects`` array, or
        zero-padded indices.

    Raises:
        ValueError: empty directory or list, missing files, inconsistent shapes (the message
            names ``spec``); :class:`morphreg.io.ImageReadError` for unreadable files.
    """
    fn = "morphreg.data.load_collection"
    spec = Path(spec)
    ext = io.split_ext(spec)[1]
    if _is_pattern(spec):
        ext = ""
    if ext in (".npz", ".npy"):
        stack = io.load_stack(spec, key=key)
        return list(stack.data), stack.names
    if ext or (spec.is_file() and spec.suffix.lower() != ".txt"):
        raise ValueError(
            f"{fn}: argument 'spec' must be a directory, a .txt list, a glob pattern or an "
            f".npz/.npy stack (N, *spatial), got the single file '{spec}'"
        )
    paths = _collection_paths(fn, spec)
    arrays = []
    for path in paths:
        volume_key = key if io.split_ext(path)[1] == ".npz" else None
        arrays.append(io.load_volume(path, key=volume_key).data)
        if arrays[-1].shape != arrays[0].shape:
            raise ValueError(
                f"{fn}: images in '{spec}' have inconsistent shapes: '{paths[0]}' is "
                f"{arrays[0].shape} but '{path}' is {arrays[-1].shape}; resample them to one "
                "grid first (morphreg.io.resample_to)"
            )
    return arrays, _unique_names(paths)


# --------------------------------------------------------------------------------------------
# Preprocessing and splits


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
    if method == "minmax":
        lo, hi = float(values.min()), float(values.max())
    else:
        lo, hi = (float(v) for v in np.percentile(values, _PERCENTILES))
    if not hi > lo:
        return np.zeros(values.shape, dtype=np.float32)
    scaled = (np.clip(values, lo, hi) - lo) / (hi - lo)
    return scaled.astype(np.float32)


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


# --------------------------------------------------------------------------------------------
# Pair dataset


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


class PairDataset(Dataset):
    """Moving/fixed image pairs for training a registration network.

    Items are dicts of tensors: ``"moving"``, ``"fixed"`` ``(1, *spatial)`` float32;
    ``"moving_seg"``, ``"fixed_seg"`` ``(1, *spatial)`` int64 **only when** label maps were
    given (the keys are then always present); and ``"moving_index"``, ``"fixed_index"`` (ints;
    ``-1`` stands for the atlas).

    Pairings:

    * ``"random"`` (inter-subject): item ``i`` is a pair ``(j, k)``, ``j != k``, drawn with a
      ``torch.Generator`` seeded from ``(seed, epoch, i)`` only, so an index always gives the
      same pair (DistributedSampler and resuming are exact). Call :meth:`set_epoch` to draw
      new pairs each epoch. ``len`` is ``pairs_per_epoch`` (default: number of images).
    * ``"atlas"``: moving = subject ``i``, fixed = ``atlas`` (with ``atlas_seg`` when ``segs``
      are given).
    * ``"pairs"``: moving = subject ``pairs[i][0]``, fixed = subject ``pairs[i][1]``.

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
        raw = _as_arrays(fn, "images", images)
        self.images = [_prepare_image(fn, "images", x, normalise) for x in raw]
        shape = self.images[0].shape
        n = len(self.images)
        self.segs: list[np.ndarray] | None = None
        if segs is not None:
            seg_list = _as_arrays(fn, "segs", segs)
            if len(seg_list) != n or seg_list[0].shape != shape:
                raise ValueError(
                    f"{fn}: argument 'segs' must match 'images' ({n} x {shape}), got "
                    f"{len(seg_list)} x {seg_list[0].shape}"
                )
            self.segs = [_as_labels(fn, "segs", s) for s in seg_list]
        if augment:
            lo = min(float(x.min()) for x in self.images)
            hi = max(float(x.max()) for x in self.images)
            if lo < 0.0 or hi > 1.0:
                raise ValueError(
                    f"{fn}: augment=True needs images in [0, 1], got range [{lo:.3g}, {hi:.3g}]; "
                    "use normalise='minmax'"
                )
        self.pairing = pairing
        self.seed = int(seed)
        self.augment = bool(augment)
        self.epoch = 0
        self.atlas: np.ndarray | None = None
        self.atlas_seg: np.ndarray | None = None
        self.pairs: list[tuple[int, int]] | None = None
        if pairing != "random" and pairs_per_epoch is not None:
            raise ValueError(f"{fn}: argument 'pairs_per_epoch' only applies to pairing='random'")
        if pairing == "random":
            if n < 2:
                raise ValueError(f"{fn}: pairing='random' needs at least 2 images, got {n}")
            if pairs_per_epoch is None:
                pairs_per_epoch = n
            if (
                isinstance(pairs_per_epoch, bool)
                or not isinstance(pairs_per_epoch, int)
                or (pairs_per_epoch < 1)
            ):
                raise ValueError(
                    f"{fn}: argument 'pairs_per_epoch' must be an integer >= 1, got {pairs_per_epoch!r}"
                )
            self._length = pairs_per_epoch
        elif pairing == "atlas":
            if atlas is None:
                raise ValueError(f"{fn}: pairing='atlas' needs argument 'atlas'")
            atlas = np.asarray(atlas)
            if atlas.shape != shape:
                raise ValueError(
                    f"{fn}: argument 'atlas' must have the images' shape {shape}, got {atlas.shape}"
                )
            self.atlas = _prepare_image(fn, "atlas", atlas, normalise)
            if (atlas_seg is None) != (self.segs is None):
                raise ValueError(f"{fn}: give both 'segs' and 'atlas_seg' (label supervision) or neither")
            if atlas_seg is not None:
                atlas_seg = np.asarray(atlas_seg)
                if atlas_seg.shape != shape:
                    raise ValueError(
                        f"{fn}: argument 'atlas_seg' must have shape {shape}, got {atlas_seg.shape}"
                    )
                self.atlas_seg = _as_labels(fn, "atlas_seg", atlas_seg)
            self._length = n
        else:
            if pairs is None or len(pairs) == 0:
                raise ValueError(f"{fn}: pairing='pairs' needs a non-empty argument 'pairs'")
            checked = []
            for p, pair in enumerate(pairs):
                if len(pair) != 2 or not all(
                    isinstance(i, int | np.integer) and 0 <= int(i) < n for i in pair
                ):
                    raise ValueError(
                        f"{fn}: argument 'pairs' item {p} must be two indices in [0, {n}), got {pair!r}"
                    )
                checked.append((int(pair[0]), int(pair[1])))
            self.pairs = checked
            self._length = len(checked)

    def __len__(self) -> int:
        return self._length

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose random pairs and augmentations are drawn (default 0)."""
        self.epoch = int(epoch)

    def _generator(self, index: int) -> torch.Generator:
        state = np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(2)
        seed = (int(state[0]) << 31 ^ int(state[1])) & ((1 << 63) - 1)
        return torch.Generator().manual_seed(seed)

    def pair_indices(self, index: int) -> tuple[int, int]:
        """``(moving, fixed)`` subject indices of item ``index`` (``-1`` = atlas)."""
        if not -self._length <= index < self._length:
            raise IndexError(f"morphreg.data.PairDataset: index {index} out of range [0, {self._length})")
        index %= self._length
        if self.pairing == "random":
            return self._random_pair(self._generator(index))
        if self.pairing == "atlas":
            return index, -1
        assert self.pairs is not None
        return self.pairs[index]

    def _random_pair(self, gen: torch.Generator) -> tuple[int, int]:
        n = len(self.images)
        j = int(torch.randint(n, (1,), generator=gen))
        k = int(torch.randint(n - 1, (1,), generator=gen))
        return j, k + (k >= j)

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
        moving_i, fixed_i = self.pair_indices(index)
        index %= self._length
        gen = self._generator(index)
        if self.pairing == "random":
            self._random_pair(gen)  # advance past the pair draw
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


# --------------------------------------------------------------------------------------------
# Pair lists


def read_pairs_csv(path: PathLike) -> list[dict[str, Path]]:
    """Read a CSV of registration pairs.

    Args:
        path: CSV with a header row naming columns ``moving,fixed`` and optionally
            ``moving_seg,fixed_seg`` (other columns are ignored). Relative paths are resolved
            against the CSV's folder.

    Returns:
        One dict per row with keys ``"moving"``, ``"fixed"`` (and ``"moving_seg"``,
        ``"fixed_seg"`` when those columns exist), values :class:`pathlib.Path`.

    Raises:
        ValueError: missing or empty file, no header, missing columns, empty cells, no rows,
            or a listed file that does not exist (the message names the CSV and the row).
    """
    fn = "morphreg.data.read_pairs_csv"
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{fn}: pairs file '{path}' does not exist")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        hint = " (it looks like UTF-16)" if path.read_bytes()[:2] in (b"\xff\xfe", b"\xfe\xff") else ""
        raise ValueError(
            f"{fn}: pairs file '{path}' is not UTF-8 text{hint}: byte {err.start} cannot be decoded; save it as UTF-8"
        ) from None
    if not text.strip():
        raise ValueError(f"{fn}: pairs file '{path}' is empty")
    if "\0" in text:
        line = text[: text.index("\0")].count("\n") + 1
        raise ValueError(f"{fn}: pairs file '{path}' line {line} holds a NUL byte; it is not a text CSV")
    try:
        return _pairs_rows(fn, path, text)
    except csv.Error as err:
        raise ValueError(f"{fn}: pairs file '{path}' is not a readable CSV: {err}") from None


def _pairs_rows(fn: str, path: Path, text: str) -> list[dict[str, Path]]:
    lines = text.splitlines()
    for number, line in enumerate(lines, start=1):
        if len(line) > _MAX_CSV_CELL:
            raise ValueError(
                f"{fn}: pairs file '{path}' line {number} is {len(line)} characters long, more than the "
                f"{_MAX_CSV_CELL} a row of file paths may have"
            )
    reader = csv.DictReader(lines)
    header = [h.strip() for h in (reader.fieldnames or [])]
    missing = [c for c in ("moving", "fixed") if c not in header]
    if missing:
        raise ValueError(
            f"{fn}: pairs file '{path}' must have a header row with columns moving,fixed"
            f"[,moving_seg,fixed_seg]; missing {missing}, found {header}"
        )
    seg_cols = [c for c in ("moving_seg", "fixed_seg") if c in header]
    if len(seg_cols) == 1:
        raise ValueError(
            f"{fn}: pairs file '{path}' has column {seg_cols[0]!r} but not its partner; give "
            "both moving_seg and fixed_seg or neither"
        )
    columns = ["moving", "fixed", *seg_cols]
    rows = []
    for number, raw in enumerate(reader, start=2):
        row = {(k or "").strip(): (v or "").strip() for k, v in raw.items() if k is not None}
        if not any(row.values()):
            continue
        entry = {}
        for col in columns:
            if not row.get(col):
                raise ValueError(f"{fn}: pairs file '{path}' line {number}: empty '{col}' cell")
            if len(row[col]) > _MAX_PATH:
                raise ValueError(
                    f"{fn}: pairs file '{path}' line {number}: the '{col}' cell is {len(row[col])} characters "
                    f"long, more than any file path ({_MAX_PATH})"
                )
            file = Path(row[col]).expanduser()
            if not file.is_absolute():
                file = path.parent / file
            if not file.exists():
                raise ValueError(
                    f"{fn}: pairs file '{path}' line {number}: {col} file '{file}' does not exist"
                )
            entry[col] = file
        rows.append(entry)
    if not rows:
        raise ValueError(f"{fn}: pairs file '{path}' has a header but no pairs")
    return rows


# --------------------------------------------------------------------------------------------
# Synthetic data


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Gaussian-smoothed white noise rescaled to unit standard deviation."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="reflect")
    return field / max(float(field.std()), 1e-12)


def _template(rng: np.random.Generator, shape: tuple[int, ...], n_labels: int) -> np.ndarray:
    """Base label map: a perturbed Voronoi partition of an ellipsoid-like foreground."""
    ndim = len(shape)
    axes = [np.linspace(-1.0, 1.0, s) for s in shape]
    coords = np.stack(np.meshgrid(*axes, indexing="ij"))  # (ndim, *shape) in [-1, 1]
    sigma = min(shape) / 10.0
    radii = rng.uniform(0.68, 0.8, size=ndim)
    radius = np.sqrt(sum((coords[k] / radii[k]) ** 2 for k in range(ndim)))
    mask = radius + 0.08 * _smooth_noise(rng, shape, sigma) < 1.0
    # label centres inside the mask, then each voxel takes the nearest centre (noisy distance);
    # redrawn (deterministically) until every structure has a reasonable size
    inside = np.argwhere(mask)
    scale = (1.0 / n_labels) ** (1.0 / ndim)
    min_size = 0.2 * len(inside) / n_labels
    for _ in range(50):
        picked = inside[rng.choice(len(inside), n_labels, replace=False)]
        centres = coords[(slice(None), *picked.T)]  # (ndim, n_labels)
        scores = np.stack(
            [
                -np.sqrt(sum((coords[k] - centres[k, l]) ** 2 for k in range(ndim))) / scale
                + 0.35 * _smooth_noise(rng, shape, sigma)
                for l in range(n_labels)
            ]
        )
        labels = np.argmax(scores, axis=0).astype(np.uint8) + 1
        labels[~mask] = 0
        sizes = np.bincount(labels.ravel(), minlength=n_labels + 1)[1:]
        if sizes.min() >= min_size:
            break
    return labels


def synthetic_shapes(
    n: int,
    shape: Sequence[int] = (96, 112),
    n_labels: int = 8,
    seed: int = 0,
    *,
    disp_std: float | None = None,
    contrast_jitter: float = 0.05,
    noise_std: float = 0.03,
) -> tuple[np.ndarray, np.ndarray]:
    """Brain-like synthetic subjects for demos and tests (SynthMorph in spirit).

    One smooth base label map is drawn for the seed (``n_labels`` compact structures inside an
    ellipse-like foreground, label 0 outside). Each subject is that template warped by its own
    random smooth displacement (Gaussian-smoothed noise, standard deviation ``disp_std``
    voxels), so subjects share structures in roughly the same places, like affinely aligned
    brains. Its image gives each label a mean intensity (a random permutation of evenly spaced
    levels drawn once per seed, jittered per subject by ``contrast_jitter``; background 0),
    then blur (sigma 1 voxel), Gaussian noise ``noise_std`` and min-max scaling to [0, 1].

    Subject ``i`` depends only on ``(seed, i)``: the first ``m`` subjects of ``n > m`` equal
    those of ``n = m``.

    Args:
        n: number of subjects.
        shape: spatial shape, 2 or 3 entries (each >= 8).
        n_labels: number of foreground structures (1..254); labels are ``0..n_labels``.
        seed: random seed.
        disp_std: deformation amplitude in voxels (default ``0.04 * min(shape)``, about 4 for
            96 x 112).
        contrast_jitter: per-subject standard deviation of each label's mean intensity.
        noise_std: standard deviation of the additive noise (before scaling).

    Returns:
        ``(images, labels)``: float32 ``(n, *shape)`` in [0, 1] and uint8 ``(n, *shape)``.
    """
    fn = "morphreg.data.synthetic_shapes"
    shape = tuple(int(s) for s in shape)
    if len(shape) not in (2, 3) or min(shape) < 8:
        raise ValueError(f"{fn}: argument 'shape' must have 2 or 3 entries, each >= 8, got {shape}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"{fn}: argument 'n' must be an integer >= 1, got {n!r}")
    if isinstance(n_labels, bool) or not isinstance(n_labels, int) or not 1 <= n_labels <= 254:
        raise ValueError(f"{fn}: argument 'n_labels' must be an integer in [1, 254], got {n_labels!r}")
    ndim = len(shape)
    if disp_std is None:
        disp_std = 0.04 * min(shape)
    children = np.random.SeedSequence(seed).spawn(n + 1)
    base_rng = np.random.default_rng(children[0])
    template = _template(base_rng, shape, n_labels)
    levels = base_rng.permutation(np.linspace(0.25, 1.0, n_labels))
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float64) for s in shape], indexing="ij"))
    smooth = min(shape) / 8.0
    images = np.empty((n, *shape), dtype=np.float32)
    labels = np.empty((n, *shape), dtype=np.uint8)
    for i in range(n):
        rng = np.random.default_rng(children[i + 1])
        disp = np.stack([_smooth_noise(rng, shape, smooth) * disp_std for _ in range(ndim)])
        # pull-back, as morphreg.spatial.warp: subject(x) = template(x + disp(x))
        seg = ndimage.map_coordinates(template, grid + disp, order=0, mode="nearest")
        means = np.concatenate([[0.0], levels + contrast_jitter * rng.standard_normal(n_labels)])
        image = ndimage.gaussian_filter(means[seg], 1.0)
        image += noise_std * rng.standard_normal(shape)
        images[i] = normalise_intensity(image)
        labels[i] = seg
    return images, labels
