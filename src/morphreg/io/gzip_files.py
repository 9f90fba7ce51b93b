"""gzip streams of ``.nii.gz``/``.mgz`` files: one checked decompression on reading, fast compression on writing.

ISA-L's gzip (the ``isal`` package, :mod:`isal.igzip`) is used where it is installed: on the
83 MB float32 warp of a 160 x 192 x 224 pair it compresses about 14x faster than the standard
library's ``gzip`` at level 1 (nibabel's level) to a file about 1 % larger, and decompresses
about 1.5x faster (``docs/results/io.md``). Without it the standard library's :mod:`gzip` does
the same job. Both read multi-member streams, check every CRC and length, and raise the same
errors (``gzip.BadGzipFile``, ``EOFError``).

nibabel reads only the bytes it needs, so a damaged ``.gz`` (a flipped bit that ``gzip -t``
reports) would give half-wrong voxels; :func:`read_checked` therefore decompresses the whole
stream once, and the image is then parsed from those bytes (``from_bytes``) instead of being
decompressed a second time.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from .. import _limits
from .formats import ImageReadError

#: ISA-L's level 1: about nibabel's gzip level 1 in size (+1 % on a warp field), far faster.
COMPRESS_LEVEL = 1
#: Extensions whose files are one gzip stream.
GZIP_SUFFIXES = (".gz", ".mgz")


def gzip_module() -> ModuleType:
    """:mod:`isal.igzip` when ``isal`` is installed, else the standard library's :mod:`gzip`."""
    try:
        from isal import igzip
    except ImportError:
        return gzip
    return igzip


def _stream_errors() -> tuple[type[BaseException], ...]:
    errors: tuple[type[BaseException], ...] = (OSError, EOFError, zlib.error)  # BadGzipFile is an OSError
    try:
        from isal import isal_zlib
    except ImportError:
        return errors
    return (*errors, isal_zlib.error)


def is_gzip_path(path: Path) -> bool:
    """Whether ``path`` names a gzip-compressed file by its extension (``.nii.gz``, ``.mgz``)."""
    return path.name.lower().endswith(GZIP_SUFFIXES)


def read_checked(fn: str, path: Path, expected: int,
                 unreadable: Callable[[str, Path, str], ImageReadError]) -> bytes:
    """The whole decompressed content of ``path``, every CRC and length checked.

    Args:
        expected: bytes the header declares (header, then data); fewer is refused as truncated.
        unreadable: ``unreadable(fn, path, detail) -> ImageReadError`` building the one-line error.

    Stops as soon as the stream holds more than ``expected`` bytes plus 64 MiB (a decompression
    bomb), before holding it in memory.
    """
    limit = expected + 64 * 2**20
    chunks: list[bytes] = []
    total = 0
    try:
        with gzip_module().open(path, "rb") as handle:
            # chunks as large as what was already read: memory follows the data the stream really
            # holds, never what a header claims (a 67 MB claim over an empty stream allocates 4 MiB)
            while chunk := handle.read(min(max(4 * 2**20, total), limit + 1 - total)):
                chunks.append(chunk)
                total += len(chunk)
                if total > limit:
                    raise unreadable(fn, path, f"it decompresses to more than the {_limits.format_bytes(expected)} "
                                     "its header declares (a decompression bomb?)") from None
    except _stream_errors() as err:
        detail = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise unreadable(fn, path, f"damaged gzip data ({detail})") from None
    if total < expected:
        raise unreadable(fn, path, f"its data end after {total} of the {expected} bytes its header declares") from None
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def write_image(img, path: Path) -> None:
    """Write a nibabel image (NIfTI-1/2, MGH) to ``path``; compressed by its extension.

    ``.nii.gz``/``.mgz`` are serialised in memory and compressed with :func:`gzip_module` at
    :data:`COMPRESS_LEVEL`; other extensions are written uncompressed by nibabel.
    """
    if not is_gzip_path(path):
        img.to_filename(str(path))
        return
    raw = img.to_bytes()
    compressed = gzip_module().compress(raw, compresslevel=COMPRESS_LEVEL, mtime=0)
    del raw
    with open(path, "wb") as handle:
        handle.write(compressed)


__all__ = ["COMPRESS_LEVEL", "gzip_module", "is_gzip_path", "read_checked", "write_image"]
