"""Find and read a collection of images: a folder, a ``.txt`` list, a glob pattern or a numpy stack.

Reading files is delegated to :mod:`morphreg.io`; this module only decides which files.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .. import io

PathLike = str | os.PathLike[str]


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
