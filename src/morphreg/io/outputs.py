"""Output paths: check one before any work, tell whether two paths name one file, write text atomically."""

from __future__ import annotations

import os
from pathlib import Path

from .._files import atomic_write
from .formats import FORMATS, SUPPORTED_EXTENSIONS, PathLike, split_ext


def check_output_path(path: PathLike, kind: str = "volume") -> Path:
    """Check, before any work, that ``path`` can be written by :func:`save_volume`, :func:`save_warp`
    or :func:`save_matrix`.

    Args:
        path: the output file.
        kind: ``"volume"`` (any supported extension), ``"warp"`` (``.nii``/``.nii.gz`` only) or
            ``"matrix"`` (a text or transform file: any name but an image's).

    Raises:
        ValueError: an unknown extension, a warp that is not NIfTI, a matrix named as an image,
            or an existing folder.
    """
    fn = "morphreg.io.check_output_path"
    if kind not in ("volume", "warp", "matrix"):
        raise ValueError(f"{fn}: argument 'kind' must be 'volume', 'warp' or 'matrix', got {kind!r}")
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"cannot write '{path}': it is a folder; give a file name such as {path / 'out.nii.gz'}")
    ext = split_ext(path)[1]
    if kind == "matrix":
        from .sitk import is_sitk_path

        if ext or is_sitk_path(path):
            raise ValueError(f"cannot write '{path}': a matrix is a text or transform file (.txt, .mat, .tfm, "
                             f".lta), not an image ({ext or path.suffix})")
        return path
    if not ext:
        raise ValueError(
            f"cannot write '{path}': unknown file extension; supported: {', '.join(SUPPORTED_EXTENSIONS)}"
        )
    if kind == "warp" and FORMATS[ext] != "nifti":
        raise ValueError(f"cannot write '{path}': a warp field is written as NIfTI (.nii or .nii.gz), not {ext}")
    return path


def same_path(a: PathLike, b: PathLike) -> bool:
    """Whether two paths name one file (after resolving links and ``..``; hard links too)."""
    a, b = Path(a), Path(b)
    try:
        if a.exists() and b.exists():
            return a.samefile(b)
    except OSError:
        pass
    return os.path.realpath(a) == os.path.realpath(b)


def save_text(text: str, path: PathLike) -> None:
    """Write ``text`` to ``path`` atomically (the parent folder is created)."""
    path = Path(path)
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
