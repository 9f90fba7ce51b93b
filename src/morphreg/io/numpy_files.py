"""numpy files (``.npy``, ``.npz``): pick the array, check declared sizes before loading, read."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from .. import _limits
from .formats import ImageReadError
from .sanity import check_declared_size, first_line

NAMES_KEY = "subjects"


def _npz_pick(fn: str, path: Path, files: list[str], key: str | None) -> str:
    if key is not None:
        if key not in files:
            raise ImageReadError(
                f"{fn}: cannot read '{path}': no array named {key!r}; available keys: {files}"
            )
        return key
    candidates = [k for k in files if k != NAMES_KEY]
    if len(candidates) == 1:
        return candidates[0]
    raise ImageReadError(
        f"{fn}: cannot read '{path}': it holds {len(candidates)} arrays, pass key= one of {files}"
    )


def _npy_header(handle) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype from an ``.npy`` header (the stream is left at the data)."""
    version = np.lib.format.read_magic(handle)
    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    if version in readers:
        shape, _, dtype = readers[version](handle)
    else:
        shape, _, dtype = np.lib.format._read_array_header(handle, version)
    return tuple(shape), np.dtype(dtype)


def _check_numpy_sizes(fn: str, path: Path, fmt: str, members: list[str], share: int) -> None:
    """Check the declared shapes (and an ``.npz``'s declared uncompressed sizes) before loading."""
    if fmt == "npy":
        with open(path, "rb") as handle:
            shape, dtype = _npy_header(handle)
            stored = path.stat().st_size - handle.tell()
        check_declared_size(fn, path, shape, dtype, stored, share=share)
        return
    with zipfile.ZipFile(path) as archive:
        for name in members:
            info = archive.getinfo(f"{name}.npy")
            budget = _limits.memory_limit() // share
            if info.file_size > budget:
                raise ImageReadError(
                    f"{fn}: cannot read '{path}': array {name!r} declares {_limits.format_bytes(info.file_size)} "
                    f"uncompressed, more than the {_limits.format_bytes(budget)} one input may take "
                    f"(1/{share} of the {_limits.budget_note()})"
                )
            with archive.open(info) as handle:
                shape, dtype = _npy_header(handle)
                header_size = handle.tell()
            check_declared_size(fn, path, shape, dtype, info.file_size - header_size, share=share)


def read_numpy(
    fn: str, path: Path, fmt: str, key: str | None, names_key: str | None = None, share: int = 0
) -> tuple[np.ndarray, np.ndarray | None]:
    """Return (array, names array or None)."""
    share = share or _limits.IMAGE_SHARE
    try:
        if fmt == "npy":
            _check_numpy_sizes(fn, path, fmt, [], share)
            return np.load(path, allow_pickle=False), None
        with np.load(path, allow_pickle=False) as npz:
            files = list(npz.files)
            chosen = _npz_pick(fn, path, files, key)
            wanted = [chosen] + ([names_key] if names_key is not None and names_key in files else [])
            _check_numpy_sizes(fn, path, fmt, wanted, share)
            names = npz[names_key] if names_key is not None and names_key in files else None
            return npz[chosen], names
    except (ImageReadError, MemoryError):
        raise
    except Exception as err:
        raise ImageReadError(
            f"{fn}: cannot read '{path}': not a readable {fmt} file (truncated or corrupt?): "
            f"{first_line(err)}"
        ) from None
