"""Training and validation pairs from what the user gives: image collections, label maps, an atlas,
a pairs CSV, a validation fraction (error messages name these parameters in backquotes)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import io
from .._files import RunDir, atomic_write_text
from ..data import PairDataset, as_label_map, load_collection, read_pairs_csv, split_subjects


@dataclass
class TrainingData:
    """Training and validation pair sets built from one collection."""

    train: PairDataset
    val: PairDataset | None
    train_names: list[str]
    val_names: list[str]
    n_labels: int | None
    #: which label map holds the largest label value (messages name it), ``None`` without labels
    label_source: str | None = None


def _largest(maps: list[np.ndarray], what: list[str]) -> tuple[int | None, str | None]:
    """``(largest label value + 1, description of the map holding it)``; ``(None, None)`` for no maps."""
    if not maps:
        return None, None
    highest = [int(m.max()) if m.size else 0 for m in maps]
    at = int(np.argmax(highest))
    return highest[at] + 1, what[at]


def subset(arrays: list[np.ndarray] | None, indices: list[int]) -> list[np.ndarray] | None:
    """``arrays[i] for i in indices`` (``None`` stays ``None``)."""
    return None if arrays is None else [arrays[i] for i in indices]


def load_optional_segs(segs: str | None, seg_key: str | None, n: int) -> list[np.ndarray] | None:
    """Label maps matching ``n`` images (integer arrays), or ``None`` without ``segs``."""
    loaded = _load_segs(segs, seg_key, n)
    return None if loaded is None else loaded[0]


def _load_segs(segs: str | None, seg_key: str | None, n: int) -> tuple[list[np.ndarray], list[str]] | None:
    """The label maps of ``segs`` and how messages name each one."""
    if segs is None:
        return None
    arrays, names = load_collection(segs, key=seg_key)
    if len(arrays) != n:
        raise ValueError(f"`segs` '{segs}' holds {len(arrays)} label maps but `data` holds {n} images")
    what = [f"`segs` '{segs}': label map {i} ({name})" for i, name in enumerate(names)]
    return [as_label_map(seg, w) for seg, w in zip(arrays, what)], what


def build_training_data(
    data: str,
    *,
    key: str | None = None,
    segs: str | None = None,
    seg_key: str | None = None,
    atlas: str | None = None,
    atlas_seg: str | None = None,
    pairs_csv: str | None = None,
    val_fraction: float = 0.2,
    val_pairs: int = 16,
    seed: int = 0,
    augment: bool = False,
    normalise: str | None = "minmax",
) -> TrainingData:
    """Read ``data`` (and ``segs``), split subjects (seeded), and pair them.

    Pairing: random inter-subject (default), atlas-to-subject (``atlas``), or the explicit
    pairs of ``pairs_csv`` (then ``data`` is not used; the last ``val_fraction`` of the CSV's
    rows validate, the others train).
    Validation pairs are consecutive validation subjects (``i -> i+1``), at most ``val_pairs``.
    """
    if pairs_csv is not None:
        return _from_pairs_csv(pairs_csv, key, seg_key, val_fraction, seed, normalise, augment)
    images, names = load_collection(data, key=key)
    loaded = _load_segs(segs, seg_key, len(images))
    seg_arrays, seg_what = (None, []) if loaded is None else loaded
    split = split_subjects(len(images), val_fraction=val_fraction, seed=seed)
    if atlas is None and len(split.train) < 2:
        raise ValueError(
            f"`data` '{data}' holds {len(images)} image(s); with `val_fraction` {val_fraction:g}, "
            f"{len(split.val)} of them validate and {len(split.train)} is left for training, but random "
            "pairs need at least 2 training images: give more images or a smaller `val_fraction` (0 for none)"
        )
    atlas_img = atlas_lab = None
    if atlas is not None:
        atlas_img = io.load_volume(atlas).data
        if atlas_seg is not None:
            atlas_lab = as_label_map(io.load_volume(atlas_seg).data, f"`atlas_seg` '{atlas_seg}'")
        elif seg_arrays is not None:
            raise ValueError("`atlas` with `segs` needs `atlas_seg` (the atlas label map)")
    n_labels, label_source = (None, None) if seg_arrays is None else _largest(
        seg_arrays + ([atlas_lab] if atlas_lab is not None else []),
        seg_what + ([f"`atlas_seg` '{atlas_seg}'"] if atlas_lab is not None else []))
    pairing = "atlas" if atlas is not None else "random"
    extra = {"atlas": atlas_img, "atlas_seg": atlas_lab} if atlas is not None else {}
    train = PairDataset(subset(images, split.train), subset(seg_arrays, split.train), pairing, seed=seed,
                        augment=augment, normalise=normalise, **extra)
    val = None
    if len(split.val) >= 2 or (atlas is not None and split.val):
        val_images, val_segs = subset(images, split.val), subset(seg_arrays, split.val)
        if atlas is not None:
            val = PairDataset(val_images[:val_pairs], None if val_segs is None else val_segs[:val_pairs],
                              "atlas", normalise=normalise, **extra)
        else:
            count = min(val_pairs, len(split.val) - 1)
            val = PairDataset(val_images, val_segs, "pairs", pairs=[(i, i + 1) for i in range(count)],
                              normalise=normalise)
    return TrainingData(train, val, [names[i] for i in split.train], [names[i] for i in split.val], n_labels,
                        label_source)


def _from_pairs_csv(pairs_csv: str, key: str | None, seg_key: str | None, val_fraction: float, seed: int,
                    normalise: str | None, augment: bool) -> TrainingData:
    rows = read_pairs_csv(pairs_csv)
    line = {id(row): number for number, row in enumerate(rows, start=2)}
    files: list[Path] = []
    for row in rows:
        for col in ("moving", "fixed"):
            if row[col] not in files:
                files.append(row[col])
    index = {f: i for i, f in enumerate(files)}
    images = [io.load_volume(f, key=key if io.split_ext(f)[1] == ".npz" else None).data for f in files]
    has_segs = "moving_seg" in rows[0]
    segs = None
    if has_segs:
        seg_of: dict[int, np.ndarray] = {}
        what_of: dict[int, str] = {}
        for row in rows:
            for col in ("moving", "fixed"):
                file = row[f"{col}_seg"]
                what = f"`pairs_csv` '{pairs_csv}' line {line[id(row)]}: {col}_seg '{file}'"
                seg_key_of = seg_key if io.split_ext(file)[1] == ".npz" else None
                seg_of[index[row[col]]] = as_label_map(io.load_volume(file, key=seg_key_of).data, what)
                what_of[index[row[col]]] = what
        segs = [seg_of[i] for i in range(len(files))]
    pairs = [(index[r["moving"]], index[r["fixed"]]) for r in rows]
    n_val = int(round(len(pairs) * val_fraction)) if len(pairs) > 1 else 0
    train_pairs, val_pairs = pairs[: len(pairs) - n_val], pairs[len(pairs) - n_val:]
    train = PairDataset(images, segs, "pairs", pairs=train_pairs, seed=seed, augment=augment, normalise=normalise)
    val = PairDataset(images, segs, "pairs", pairs=val_pairs, normalise=normalise) if val_pairs else None
    n_labels, label_source = (None, None) if segs is None else _largest(segs, [what_of[i] for i in range(len(files))])
    names = [io.split_ext(f)[0] for f in files]
    return TrainingData(train, val, names, [], n_labels, label_source)


#: The data options stored in a run's ``split.json`` and checked when it is resumed.
SPLIT_OPTIONS = ("val_fraction", "val_pairs", "augment")


def split_record(data: TrainingData, **options: object) -> dict[str, object]:
    """What ``split.json`` holds: the training and validation subjects and the data options."""
    return {"train": list(data.train_names), "val": list(data.val_names),
            "options": {k: options[k] for k in SPLIT_OPTIONS if k in options}}


def split_changes(saved: dict[str, object], record: dict[str, object]) -> dict[str, tuple[object, object]]:
    """What differs between a run's saved ``split.json`` and the split asked for now.

    Returns ``{option or "train"/"val": (saved, now)}``; subject lists are compared as lists.
    """
    changes: dict[str, tuple[object, object]] = {}
    old_options = saved.get("options") if isinstance(saved.get("options"), dict) else {}
    for key, value in record["options"].items():  # type: ignore[union-attr]
        if key in old_options and old_options[key] != value:  # type: ignore[operator]
            changes[key] = (old_options[key], value)  # type: ignore[index]
    for key in ("train", "val"):
        if key in saved and list(saved[key]) != list(record[key]):  # type: ignore[call-overload]
            changes[key] = (saved[key], record[key])
    return changes


def read_split(run_dir: str | Path) -> dict[str, object] | None:
    """A run's saved ``split.json`` (``None`` when it has none).

    Raises:
        ValueError: the file is damaged or is not a split record.
    """
    path = RunDir(run_dir).split
    if not path.exists():
        return None
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as err:
        raise ValueError(f"'{path}' is damaged ({str(err).splitlines()[0][:120]})") from None
    if not isinstance(saved, dict):
        raise ValueError(f"'{path}' is not a split record")
    return saved


def write_split(run_dir: str | Path, record: dict[str, object]) -> None:
    """Write ``split.json`` (atomically); a run's split is written once and never rewritten."""
    atomic_write_text(RunDir(run_dir).split, json.dumps(record, indent=1))
