"""File formats by extension, and the error every failed read raises.

Formats, chosen by extension (case-insensitive): ``.nii``/``.nii.gz`` (NIfTI-1), ``.mgz``/``.mgh``
(FreeSurfer), ``.npy``/``.npz`` (numpy). Other images are read through SimpleITK (:mod:`.sitk`).
"""

from __future__ import annotations

import os
from pathlib import Path

from .sitk import SITK_EXTENSIONS

PathLike = str | os.PathLike[str]

# Longest first, so ".nii.gz" wins over ".gz"-less matches.
FORMATS = {
    ".nii.gz": "nifti",
    ".nii": "nifti",
    ".mgz": "mgh",
    ".mgh": "mgh",
    ".npy": "npy",
    ".npz": "npz",
}
SUPPORTED_EXTENSIONS = tuple(FORMATS)


class ImageReadError(ValueError):
    """A file could not be read as an image or warp field (the message says which and why)."""


def split_ext(path: PathLike) -> tuple[str, str]:
    """Split a file name into (name without extension, lower-case supported extension).

    ``split_ext("a/sub01.nii.gz") == ("sub01", ".nii.gz")``; the extension is ``""`` when it
    is not one of :data:`SUPPORTED_EXTENSIONS`.
    """
    name = os.path.basename(os.fspath(path).rstrip("/"))  # Path(path).name, without building a Path
    lower = name.lower()
    for ext in SUPPORTED_EXTENSIONS:
        if lower.endswith(ext) and len(name) > len(ext):
            return name[: -len(ext)], ext
    return name, ""


def format_of(fn: str, path: Path, error: type[Exception]) -> str:
    ext = split_ext(path)[1]
    if not ext:
        reading = ""
        if error is ImageReadError:
            reading = f" (images are also read from {', '.join(SITK_EXTENSIONS)} and DICOM series folders)"
        raise error(
            f"{fn}: cannot handle '{path}': unknown file extension; supported: "
            f"{', '.join(SUPPORTED_EXTENSIONS)}{reading}"
        )
    return FORMATS[ext]
