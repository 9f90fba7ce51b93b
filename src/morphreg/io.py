"""Files in and out: the only module of morphreg that knows file formats.

A :class:`Volume` (array + 4x4 voxel-to-world affine + optional header) travels from reading to
writing, so outputs keep the orientation of their inputs (no made-up default affine, a fault of
voxelmorph #58).

Formats, chosen by extension (case-insensitive):

* ``.nii``, ``.nii.gz`` (NIfTI-1, via nibabel): affine and header kept.
* ``.mgz``, ``.mgh`` (FreeSurfer, via nibabel): affine and header kept; no description field.
* ``.npy``, ``.npz`` (numpy): no geometry, read with an identity affine. ``.npz`` files are
  written with a single array under the key ``"vol"`` (voxelmorph's convention).

Array conventions: a 2D image is a 2D array ``(X, Y)`` (a NIfTI ``X x Y x 1`` is read as 2D),
a 3D image is ``(X, Y, Z)``; array axis ``k`` is voxel index ``k`` of the affine (no
transposition). Floating data are read and written as float32; integer data (label maps) keep
their dtype.

Warp fields (:func:`save_warp`, :func:`load_warp`) are NIfTI vector images
(``intent_code = 1007``, NIFTI_INTENT_VECTOR) of shape ``(X, Y, Z, 1, C)`` (``(X, Y, 1, 1, C)``
in 2D) whose ``descrip`` states the units and the direction, e.g.
``"morphreg warp; units=voxel; pull-back: moved(x)=moving(x+u(x))"``:

* ``units="voxel"``: ``C = ndim`` voxel components, component ``k`` along array axis ``k``
  (morphreg's in-memory convention, :mod:`morphreg.spatial`).
* ``units="mm"``: ``C = 3`` world-space (nibabel RAS+, the affine's frame) components in mm,
  ``d_mm = A[:3, :ndim] @ d_voxel``, for 2D and 3D alike. ITK/ANTs fields use LPS (x and y
  negated) and are *not* this convention.

Every read failure raises :class:`ImageReadError` (a ``ValueError``) with a one-line message
naming the file and the problem; nibabel/numpy exceptions never escape.
"""

from __future__ import annotations

import gzip
import math
import os
import re
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import nibabel as nib
import numpy as np
import torch
from nibabel.filebasedimages import FileBasedHeader
from scipy import ndimage

from . import _limits
from ._files import atomic_write

__all__ = [
    "SUPPORTED_EXTENSIONS",
    "ImageReadError",
    "ImageStack",
    "Volume",
    "WarpField",
    "WARP_UNITS",
    "from_tensor",
    "load_stack",
    "load_volume",
    "load_warp",
    "resample_to",
    "same_grid",
    "same_path",
    "check_output_path",
    "save_text",
    "save_volume",
    "save_warp",
    "split_ext",
    "to_tensor",
]

PathLike = str | os.PathLike[str]

# Longest first, so ".nii.gz" wins over ".gz"-less matches.
_FORMATS = {
    ".nii.gz": "nifti",
    ".nii": "nifti",
    ".mgz": "mgh",
    ".mgh": "mgh",
    ".npy": "npy",
    ".npz": "npz",
}
SUPPORTED_EXTENSIONS = tuple(_FORMATS)
WARP_UNITS = ("voxel", "mm")
NIFTI_INTENT_VECTOR = 1007
_DESCRIP_LEN = 79  # NIfTI-1 descrip is char[80] with a terminating NUL
_NPZ_WRITE_KEY = "vol"
_NAMES_KEY = "subjects"
# FreeSurfer MGH stores only these; other dtypes are converted losslessly when possible.
_MGH_DTYPES = (np.uint8, np.int16, np.int32, np.float32)
_WARP_DIRECTION = "pull-back: moved(x)=moving(x+u(x))"
# a training stack is kept in memory whole (and once more, normalised): it may take 1/4 of the limit
_STACK_SHARE = 4


class ImageReadError(ValueError):
    """A file could not be read as an image or warp field (the message says which and why)."""


# --------------------------------------------------------------------------------------------
# Volume


@dataclass
class Volume:
    """An image or label map with its voxel-to-world geometry.

    Attributes:
        data: ``(X, Y)`` or ``(X, Y, Z)`` array; float32 for images, an integer dtype for label
            maps.
        affine: ``(4, 4)`` float64 voxel-index-to-world (RAS+ mm) matrix; identity when the
            source had no geometry (numpy files).
        header: the nibabel header the data were read with, or ``None``. Only its geometry
            codes and units are reused when writing NIfTI.
    """

    data: np.ndarray
    affine: np.ndarray
    header: FileBasedHeader | None = None

    def __post_init__(self) -> None:
        fn = "morphreg.io.Volume"
        self.data = np.asarray(self.data)
        if self.data.ndim not in (2, 3):
            raise ValueError(
                f"{fn}: argument 'data' must be a 2D (X, Y) or 3D (X, Y, Z) array, "
                f"got shape {self.data.shape}"
            )
        self.affine = _check_affine(fn, "affine", self.affine)

    @property
    def ndim(self) -> int:
        """Number of spatial dimensions (2 or 3)."""
        return self.data.ndim

    @property
    def shape(self) -> tuple[int, ...]:
        """Spatial shape ``(X, Y[, Z])``."""
        return tuple(self.data.shape)

    @property
    def spacing(self) -> np.ndarray:
        """``(ndim,)`` voxel size in mm: lengths of the affine's first ``ndim`` columns."""
        return np.linalg.norm(self.affine[:3, : self.ndim], axis=0)


def _check_affine(fn: str, name: str, affine: object) -> np.ndarray:
    if isinstance(affine, torch.Tensor):
        affine = affine.detach().cpu().numpy()
    arr = np.asarray(affine, dtype=np.float64)
    if arr.shape != (4, 4):
        raise ValueError(f"{fn}: argument '{name}' must be a 4x4 matrix, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{fn}: argument '{name}' contains NaN or inf")
    return arr.copy()


# --------------------------------------------------------------------------------------------
# Paths and formats


def split_ext(path: PathLike) -> tuple[str, str]:
    """Split a file name into (name without extension, lower-case supported extension).

    ``split_ext("a/sub01.nii.gz") == ("sub01", ".nii.gz")``; the extension is ``""`` when it
    is not one of :data:`SUPPORTED_EXTENSIONS`.
    """
    name = Path(path).name
    lower = name.lower()
    for ext in SUPPORTED_EXTENSIONS:
        if lower.endswith(ext) and len(name) > len(ext):
            return name[: -len(ext)], ext
    return name, ""


def _format_of(fn: str, path: Path, error: type[Exception]) -> str:
    ext = split_ext(path)[1]
    if not ext:
        reading = ""
        if error is ImageReadError:
            from .io_sitk import SITK_EXTENSIONS

            reading = f" (images are also read from {', '.join(SITK_EXTENSIONS)} and DICOM series folders)"
        raise error(
            f"{fn}: cannot handle '{path}': unknown file extension; supported: "
            f"{', '.join(SUPPORTED_EXTENSIONS)}{reading}"
        )
    return _FORMATS[ext]


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    line = text.splitlines()[0] if text else type(err).__name__
    return line[:200]


def _check_readable(fn: str, path: Path) -> None:
    if not path.exists():
        raise ImageReadError(f"{fn}: cannot read '{path}': file does not exist")
    if not path.is_file():
        raise ImageReadError(f"{fn}: cannot read '{path}': not a regular file")
    if path.stat().st_size == 0:
        raise ImageReadError(f"{fn}: cannot read '{path}': file is empty (0 bytes)")


def _check_finite(fn: str, path: Path, data: np.ndarray) -> None:
    if data.dtype.kind not in "fc":
        return
    finite = np.isfinite(data)
    if not finite.all():
        n_nan = int(np.isnan(data).sum())
        n_inf = int(data.size - finite.sum()) - n_nan
        raise ImageReadError(
            f"{fn}: cannot use '{path}': data contain {n_nan} NaN and {n_inf} infinite "
            "value(s); replace them (e.g. numpy.nan_to_num) before registration"
        )


def _normalise_dtype(fn: str, path: Path, data: np.ndarray) -> np.ndarray:
    kind = data.dtype.kind
    if kind == "b":
        return data.astype(np.uint8)
    if kind == "f":
        if data.dtype.itemsize > 4 and data.size:
            _check_finite(fn, path, data)  # count NaN/inf before float32 turns large values into inf
            biggest = float(np.abs(data).max())
            if biggest > float(np.finfo(np.float32).max):
                raise ImageReadError(
                    f"{fn}: cannot use '{path}': its {data.dtype} values reach {biggest:.3g}, beyond the "
                    f"float32 range (+-{float(np.finfo(np.float32).max):.3g}) morphreg computes in; rescale the image"
                )
        return data.astype(np.float32, copy=False)
    if kind in "iu":
        return data
    raise ImageReadError(
        f"{fn}: cannot use '{path}': unsupported data type {data.dtype} "
        "(expected integer, boolean or real floating point)"
    )


# --------------------------------------------------------------------------------------------
# Reading


def _unreadable(fn: str, path: Path, detail: str) -> ImageReadError:
    return ImageReadError(f"{fn}: cannot read '{path}': not a readable image (truncated or corrupt?): {detail}")


def _shape_text(shape: tuple[int, ...]) -> str:
    return "x".join(str(int(s)) for s in shape) if shape else "()"


def _check_declared_size(
    fn: str, path: Path, shape: tuple[int, ...], dtype: np.dtype, stored: int | None, *, share: int = 0
) -> int:
    """Refuse, before any allocation, data whose header-declared size cannot fit or is not there.

    Args:
        shape, dtype: as declared by the file's header.
        stored: bytes of data the file actually holds after its header (``None``: unknown).
        share: the budget is ``memory_limit() / share`` (default: one image's share).

    Returns:
        The declared data size in bytes.
    """
    voxels = math.prod(int(s) for s in shape)
    nbytes = voxels * dtype.itemsize
    in_memory = voxels * max(dtype.itemsize, 4)  # images are computed on as float32
    budget = _limits.memory_limit() // (share or _limits.IMAGE_SHARE)
    if in_memory > budget:
        raise ImageReadError(
            f"{fn}: cannot read '{path}': its header declares {_shape_text(shape)} voxels of {dtype} "
            f"({_limits.format_bytes(in_memory)} in memory), more than the {_limits.format_bytes(budget)} one "
            f"input may take (1/{share or _limits.IMAGE_SHARE} of the {_limits.budget_note()})"
        )
    if stored is not None and nbytes > stored:
        raise _unreadable(
            fn, path, f"its header declares {_shape_text(shape)} voxels of {dtype} "
            f"({_limits.format_bytes(nbytes)}) but the file holds only {stored} bytes of data"
        ) from None
    return nbytes


def _verify_gzip(fn: str, path: Path, expected: int) -> None:
    """Decompress ``path`` to its end without keeping the data: checks every CRC and length.

    nibabel reads only the bytes it needs, so without this a damaged ``.gz`` (a flipped bit
    that ``gzip -t`` reports) would give half-wrong voxels. Stops as soon as the stream holds
    more than ``expected`` bytes plus 64 MiB (a decompression bomb), or ends before ``expected``.
    """
    limit = expected + 64 * 2**20
    total = 0
    try:
        with gzip.open(path, "rb") as handle:
            while chunk := handle.read(4 * 2**20):
                total += len(chunk)
                if total > limit:
                    raise _unreadable(
                        fn, path, f"it decompresses to more than the {_limits.format_bytes(expected)} its header "
                        "declares (a decompression bomb?)"
                    ) from None
    except (OSError, EOFError, zlib.error) as err:  # gzip.BadGzipFile is an OSError
        raise _unreadable(fn, path, f"damaged gzip data ({_first_line(err)})") from None
    if total < expected:
        raise _unreadable(fn, path, f"its data end after {total} of the {expected} bytes its header declares") from None


def _read_nibabel(fn: str, path: Path) -> tuple[np.ndarray, np.ndarray, FileBasedHeader]:
    try:
        img = nib.load(str(path), mmap=False)  # reads the header only
        header = img.header
        shape = tuple(int(s) for s in header.get_data_shape())
        dtype = np.dtype(header.get_data_dtype())
        offset = int(getattr(img.dataobj, "offset", 0) or header.get_data_offset())  # the header copy says 0
    except Exception as err:  # nibabel raises many types; none of them should escape
        raise _unreadable(fn, path, _first_line(err)) from None
    compressed = path.name.lower().endswith((".gz", ".mgz"))
    stored = None if compressed else max(path.stat().st_size - offset, 0)
    nbytes = _check_declared_size(fn, path, shape, dtype, stored)
    if compressed:
        _verify_gzip(fn, path, offset + nbytes)
    try:
        data = np.asanyarray(img.dataobj)
        affine = np.asarray(img.affine, dtype=np.float64)
    except MemoryError:
        raise
    except Exception as err:
        raise _unreadable(fn, path, _first_line(err)) from None
    return np.asarray(data), affine, header


def _check_geometry(fn: str, path: Path, affine: np.ndarray) -> None:
    """Refuse a degenerate voxel-to-world matrix (a zero voxel size, a singular sform)."""
    if not np.isfinite(affine).all():
        raise ImageReadError(f"{fn}: cannot use '{path}': its affine contains NaN or inf")
    singular = np.linalg.svd(affine[:3, :3], compute_uv=False)
    if not singular.min() > 1e-6 * max(float(singular.max()), 1e-12):
        sizes = ", ".join(f"{v:.3g}" for v in np.linalg.norm(affine[:3, :3], axis=0))
        raise ImageReadError(
            f"{fn}: cannot use '{path}': its voxel-to-world affine is singular (voxel sizes {sizes} mm); "
            "every axis needs a non-zero voxel size (for a 2D image too: set the third pixdim or sform "
            "column), so fix the header's pixdim/sform/qform first"
        )


def _npz_pick(fn: str, path: Path, files: list[str], key: str | None) -> str:
    if key is not None:
        if key not in files:
            raise ImageReadError(
                f"{fn}: cannot read '{path}': no array named {key!r}; available keys: {files}"
            )
        return key
    candidates = [k for k in files if k != _NAMES_KEY]
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
        _check_declared_size(fn, path, shape, dtype, stored, share=share)
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
            _check_declared_size(fn, path, shape, dtype, info.file_size - header_size, share=share)


def _read_numpy(
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
            f"{_first_line(err)}"
        ) from None


def _squeeze_spatial(fn: str, path: Path, data: np.ndarray) -> np.ndarray:
    """Drop a trailing singleton 4th axis, then a trailing singleton 3rd axis (2D image)."""
    original = data.shape
    while data.ndim > 3 and data.shape[-1] == 1:  # trailing singleton axes (X, Y, 1, 1, 1)
        data = data[..., 0]
    if data.ndim == 3 and data.shape[2] == 1:
        data = data[..., 0]
    if data.ndim not in (2, 3):
        hint = " (a 5D NIfTI is a warp field: use morphreg.io.load_warp)" if data.ndim == 5 else ""
        raise ImageReadError(
            f"{fn}: cannot use '{path}': expected a 2D or 3D image (a 4D array only with a last "
            f"axis of 1), got shape {original}{hint}"
        )
    if data.size == 0:
        raise ImageReadError(f"{fn}: cannot use '{path}': array is empty, shape {original}")
    return data


def load_volume(path: PathLike, key: str | None = None) -> Volume:
    """Read a 2D or 3D image or label map.

    Args:
        path: ``.nii``, ``.nii.gz``, ``.mgz``/``.mgh`` (nibabel; affine and header kept),
            ``.npy``/``.npz`` (identity affine, no header), or through SimpleITK PNG/JPEG/BMP/TIFF,
            NRRD, ``.mha``/``.mhd`` and a folder holding one DICOM series (:mod:`morphreg.io_sitk`).
        key: array name inside an ``.npz``; ``None`` picks its only array (a ``"subjects"``
            name array is not counted). Not allowed for other formats.

    Returns:
        :class:`Volume` with ``data`` ``(X, Y)`` or ``(X, Y, Z)``: float32 for floating data,
        the stored integer dtype for label maps (booleans become uint8). A trailing singleton
        axis is dropped (``X x Y x 1`` is read as a 2D image; ``X x Y x Z x 1`` as 3D).

    Raises:
        ImageReadError: missing, empty, truncated/corrupt file; unknown extension; wrong
            number of dimensions; NaN/inf in the data; unknown ``.npz`` key.
    """
    fn = "morphreg.io.load_volume"
    path = Path(path)
    from .io_sitk import is_sitk_path, read_sitk

    if is_sitk_path(path):  # PNG/TIFF/NRRD/MetaImage files and DICOM series folders
        if key is not None:
            raise ValueError(f"{fn}: argument 'key' only applies to .npz files, got key={key!r}")
        try:
            data, affine = read_sitk(path)
        except ValueError as err:
            raise ImageReadError(str(err)) from None
        data = _squeeze_spatial(fn, path, _normalise_dtype(fn, path, data))
        _check_finite(fn, path, data)
        return Volume(np.ascontiguousarray(data), affine, None)
    fmt = _format_of(fn, path, ImageReadError)
    if key is not None and fmt != "npz":
        raise ValueError(f"{fn}: argument 'key' only applies to .npz files, got key={key!r}")
    _check_readable(fn, path)
    header: FileBasedHeader | None = None
    if fmt in ("nifti", "mgh"):
        data, affine, header = _read_nibabel(fn, path)
    else:
        data = _read_numpy(fn, path, fmt, key)[0]
        affine = np.eye(4)
    _check_geometry(fn, path, affine)
    data = _squeeze_spatial(fn, path, _normalise_dtype(fn, path, data))
    _check_finite(fn, path, data)
    return Volume(np.ascontiguousarray(data), affine, header)


class ImageStack(NamedTuple):
    """A stack of equally shaped images read from one numpy file.

    Attributes:
        data: ``(N, *spatial)`` array, 2 or 3 spatial dims.
        names: ``N`` subject names (from the file's ``"subjects"`` array when present, else
            zero-padded indices ``"000"``, ``"001"``, ...).
    """

    data: np.ndarray
    names: list[str]


def load_stack(path: PathLike, key: str | None = None) -> ImageStack:
    """Read a stack ``(N, *spatial)`` of 2D or 3D images from an ``.npy`` or ``.npz`` file.

    Args:
        path: ``.npy`` or ``.npz`` file.
        key: array name inside an ``.npz`` (e.g. ``"slice_norm"``); ``None`` picks its only
            array besides ``"subjects"``.

    Returns:
        :class:`ImageStack` ``(data (N, *spatial), names)``; floating data as float32.

    Raises:
        ImageReadError: as :func:`load_volume`, and for arrays that are not ``(N, X, Y)`` or
            ``(N, X, Y, Z)``.
    """
    fn = "morphreg.io.load_stack"
    path = Path(path)
    fmt = _format_of(fn, path, ImageReadError)
    if fmt not in ("npy", "npz"):
        raise ImageReadError(
            f"{fn}: cannot read '{path}': a stack must be an .npy or .npz file (N, *spatial)"
        )
    _check_readable(fn, path)
    data, names_arr = _read_numpy(fn, path, fmt, key, names_key=_NAMES_KEY, share=_STACK_SHARE)
    data = _normalise_dtype(fn, path, data)
    if data.ndim not in (3, 4) or data.size == 0:
        raise ImageReadError(
            f"{fn}: cannot use '{path}': expected a non-empty stack (N, X, Y) or (N, X, Y, Z), "
            f"got shape {data.shape}"
        )
    _check_finite(fn, path, data)
    n = data.shape[0]
    if names_arr is not None and names_arr.ndim == 1 and len(names_arr) == n:
        names = [str(s) for s in names_arr]
    else:
        width = len(str(n - 1))
        names = [f"{i:0{width}d}" for i in range(n)]
    return ImageStack(data, names)


# --------------------------------------------------------------------------------------------
# Writing


def check_output_path(path: PathLike, kind: str = "volume") -> Path:
    """Check, before any work, that ``path`` can be written by :func:`save_volume` or :func:`save_warp`.

    Args:
        path: the output file.
        kind: ``"volume"`` (any supported extension) or ``"warp"`` (``.nii``/``.nii.gz`` only).

    Raises:
        ValueError: an unknown extension, a warp that is not NIfTI, or an existing folder.
    """
    fn = "morphreg.io.check_output_path"
    if kind not in ("volume", "warp"):
        raise ValueError(f"{fn}: argument 'kind' must be 'volume' or 'warp', got {kind!r}")
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"cannot write '{path}': it is a folder; give a file name such as {path / 'out.nii.gz'}")
    ext = split_ext(path)[1]
    if not ext:
        raise ValueError(
            f"cannot write '{path}': unknown file extension; supported: {', '.join(SUPPORTED_EXTENSIONS)}"
        )
    if kind == "warp" and _FORMATS[ext] != "nifti":
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


def _storage_data(fn: str, data: np.ndarray, fmt: str) -> np.ndarray:
    """Floats -> float32; integers keep their dtype where the format allows it."""
    kind = data.dtype.kind
    if kind == "b":
        return data.astype(np.uint8)
    if kind == "f":
        return data.astype(np.float32, copy=False)
    if kind not in "iu":
        raise TypeError(f"{fn}: cannot write data of dtype {data.dtype}")
    if fmt in ("npy", "npz") or (fmt == "nifti" and data.dtype.itemsize <= 4):
        return data
    if fmt == "mgh" and data.dtype in _MGH_DTYPES:
        return data
    # 64-bit labels (torch's int64) upset most NIfTI tools, MGH has no int8/uint16/uint32/int64:
    # narrow to the smallest type holding the values.
    lo, hi = (int(data.min()), int(data.max())) if data.size else (0, 0)
    for candidate in (np.uint8, np.int16, np.int32):
        info = np.iinfo(candidate)
        if info.min <= lo and hi <= info.max:
            return data.astype(candidate)
    if fmt == "nifti":
        return data
    raise ValueError(
        f"{fn}: label values in [{lo}, {hi}] do not fit the int32 of the MGH format; "
        "write NIfTI or numpy instead"
    )


def _geometry_codes(header: FileBasedHeader | None) -> tuple[int, int, tuple[str, str] | None]:
    """(sform_code, qform_code, xyzt_units) to write; the sform is always set."""
    if isinstance(header, nib.Nifti1Header):  # Nifti2Header is a subclass
        sform = int(header["sform_code"])
        qform = int(header["qform_code"])
        units = header.get_xyzt_units()
        return (sform or qform or 2), qform, units
    return 2, 0, None


def _descrip(description: str | None) -> bytes:
    if not description:
        return b""
    text = " ".join(str(description).split())  # one line
    return text.encode("ascii", errors="replace")[:_DESCRIP_LEN]


def _nifti_image(
    data: np.ndarray, affine: np.ndarray, header: FileBasedHeader | None, description: str | None
) -> nib.Nifti1Image:
    img = nib.Nifti1Image(data, affine, dtype=data.dtype)
    sform, qform, units = _geometry_codes(header)
    img.set_sform(affine, code=sform)
    img.set_qform(affine, code=qform)
    spatial_unit, time_unit = units if units is not None else ("mm", "sec")
    if spatial_unit == "unknown":
        spatial_unit = "mm"
    img.header.set_xyzt_units(spatial_unit, time_unit if time_unit != "unknown" else "sec")
    img.header["descrip"] = _descrip(description)
    return img


def save_volume(volume: Volume, path: PathLike, description: str | None = None) -> None:
    """Write a volume atomically, keeping its affine; the format follows the extension.

    Args:
        volume: the image or label map; float data are written as float32, integer label maps
            keep their dtype (NIfTI: int64 is narrowed to the smallest of uint8/int16/int32
            holding the values; MGH: only uint8/int16/int32/float32 exist, so other integers
            are narrowed the same way).
        path: ``.nii``, ``.nii.gz``, ``.mgz``/``.mgh``, ``.npy`` or ``.npz`` (array key
            ``"vol"``). Numpy formats store no affine. The parent folder is created.
        description: NIfTI ``descrip`` (one line, at most 79 ASCII characters, truncated
            beyond). Ignored by the other formats.

    A 2D volume is written to NIfTI/MGH as ``X x Y x 1``. For NIfTI the sform always holds the
    affine; its code (and the qform code and spatial units) come from ``volume.header`` when
    that is a NIfTI header, else sform code 2 ("aligned") and units mm.
    """
    fn = "morphreg.io.save_volume"
    if not isinstance(volume, Volume):
        raise TypeError(f"{fn}: argument 'volume' must be a morphreg.io.Volume, got {type(volume).__name__}")
    path = Path(path)
    fmt = _format_of(fn, path, ValueError)
    data = _storage_data(fn, np.asarray(volume.data), fmt)
    affine = volume.affine
    if fmt in ("nifti", "mgh") and data.ndim == 2:
        data = data[..., None]

    def write(tmp: Path) -> None:
        if fmt == "nifti":
            nib.save(_nifti_image(data, affine, volume.header, description), str(tmp))
        elif fmt == "mgh":
            nib.save(nib.MGHImage(data, affine), str(tmp))
        elif fmt == "npy":
            with open(tmp, "wb") as handle:
                np.save(handle, data)
        else:
            with open(tmp, "wb") as handle:
                np.savez_compressed(handle, **{_NPZ_WRITE_KEY: data})

    atomic_write(path, write)


# --------------------------------------------------------------------------------------------
# Warp fields


class WarpField(NamedTuple):
    """A displacement field read from a file.

    Attributes:
        disp: ``(ndim, *spatial)`` float32 displacement in **voxels**, component ``k`` along
            array axis ``k`` (pull-back: ``moved(x) = moving(x + disp(x))``).
        affine: ``(4, 4)`` float64 voxel-to-world matrix of the field's grid (the fixed image's).
    """

    disp: np.ndarray
    affine: np.ndarray


def _linear_part(affine: np.ndarray, ndim: int) -> np.ndarray:
    """``(3, ndim)`` matrix mapping voxel-index steps to world (mm) steps."""
    return affine[:3, :ndim]


def field_array(fn: str, disp: np.ndarray | torch.Tensor) -> np.ndarray:
    """``disp`` as a finite ``(ndim, *spatial)`` numpy array (a leading batch of 1 is dropped).

    Raises ``ValueError`` naming ``fn`` for another shape or for NaN/inf values.
    """
    if isinstance(disp, torch.Tensor):
        disp = disp.detach().cpu().numpy()
    disp = np.asarray(disp)
    if disp.ndim >= 4 and disp.shape[0] == 1 and disp.shape[1] == disp.ndim - 2:
        disp = disp[0]
    ndim = disp.ndim - 1
    if ndim not in (2, 3) or disp.shape[0] != ndim:
        raise ValueError(
            f"{fn}: argument 'disp' must have shape (ndim, *spatial) with ndim = 2 or 3 "
            f"spatial dims, got shape {disp.shape}"
        )
    if not np.isfinite(disp).all():
        raise ValueError(f"{fn}: argument 'disp' contains NaN or inf")
    return disp


def save_warp(
    disp: np.ndarray | torch.Tensor,
    path: PathLike,
    affine: np.ndarray | torch.Tensor,
    units: str = "voxel",
    header: FileBasedHeader | None = None,
) -> None:
    """Write a displacement field as a NIfTI vector image that states its units.

    Args:
        disp: ``(ndim, *spatial)`` (or ``(1, ndim, *spatial)``) displacement in voxels,
            component ``k`` along array axis ``k``; numpy array or tensor.
        path: ``.nii`` or ``.nii.gz``.
        affine: ``(4, 4)`` voxel-to-world matrix of the field's grid (the fixed image's).
        units: ``"voxel"`` writes the ``ndim`` voxel components; ``"mm"`` writes 3 world
            (RAS+) components ``A[:3, :ndim] @ d`` for 2D and 3D alike.
        header: optional NIfTI header whose sform/qform codes are reused.

    The file has shape ``(X, Y, Z, 1, C)`` (``(X, Y, 1, 1, C)`` in 2D), ``intent_code`` 1007
    (vector), ``intent_name`` ``"units=<units>"`` and ``descrip``
    ``"morphreg warp; units=<units>; pull-back: moved(x)=moving(x+u(x))"``.
    """
    fn = "morphreg.io.save_warp"
    disp = field_array(fn, disp)
    ndim = disp.ndim - 1
    if disp.dtype.kind != "f":
        raise TypeError(f"{fn}: argument 'disp' must be floating point, got dtype {disp.dtype}")
    if units not in WARP_UNITS:
        raise ValueError(f"{fn}: argument 'units' must be one of {list(WARP_UNITS)}, got {units!r}")
    path = Path(path)
    if _format_of(fn, path, ValueError) != "nifti":
        raise ValueError(f"{fn}: argument 'path' must end in .nii or .nii.gz, got '{path}'")
    affine = _check_affine(fn, "affine", affine)
    vectors = np.moveaxis(disp.astype(np.float64), 0, -1)  # (*spatial, ndim)
    if units == "mm":
        lin = _linear_part(affine, ndim)
        if np.linalg.matrix_rank(lin) < ndim:
            raise ValueError(f"{fn}: argument 'affine' is singular; cannot convert to mm")
        vectors = vectors @ lin.T  # (*spatial, 3)
    spatial = disp.shape[1:] + (1,) * (3 - ndim)
    data = vectors.astype(np.float32).reshape(*spatial, 1, vectors.shape[-1])
    description = f"morphreg warp; units={units}; {_WARP_DIRECTION}"

    def write(tmp: Path) -> None:
        img = _nifti_image(data, affine, header, description)
        img.header.set_intent(NIFTI_INTENT_VECTOR, (), name=f"units={units}")
        nib.save(img, str(tmp))

    atomic_write(path, write)


_UNITS_RE = re.compile(r"units\s*=\s*(voxel|mm)\b")


def load_warp(path: PathLike, units: str | None = None) -> WarpField:
    """Read a displacement field written by :func:`save_warp`; return it in voxel units.

    Args:
        path: NIfTI file ``(X, Y, Z, 1, C)`` (also accepted: ``(X, Y, Z, C)`` /
            ``(X, Y, C)`` as written by voxelmorph).
        units: the units of the stored vectors when the file does not state them
            (``"voxel"`` or ``"mm"``); ``None`` reads them from ``descrip``/``intent_name``.
            A file that states units which contradict this argument is refused.

    Returns:
        :class:`WarpField` ``(disp (ndim, *spatial) float32 in voxels, affine (4, 4))``.
        mm vectors are converted back with the pseudo-inverse of ``A[:3, :ndim]``. A field
        whose third spatial size is 1 is read as 2D.

    Raises:
        ImageReadError: unreadable file, wrong shape, NaN/inf, or units not stated and not
            given.
    """
    fn = "morphreg.io.load_warp"
    path = Path(path)
    if units is not None and units not in WARP_UNITS:
        raise ValueError(f"{fn}: argument 'units' must be one of {list(WARP_UNITS)} or None, got {units!r}")
    if _format_of(fn, path, ImageReadError) != "nifti":
        raise ImageReadError(f"{fn}: cannot read '{path}': a warp field must be a NIfTI file")
    _check_readable(fn, path)
    data, affine, header = _read_nibabel(fn, path)
    data = _normalise_dtype(fn, path, data)
    _check_finite(fn, path, data)
    _check_geometry(fn, path, affine)
    found = {}
    for field in ("descrip", "intent_name"):
        text = bytes(np.asarray(header[field]).item()).decode("ascii", errors="replace")
        found.update({f"{field}: units={m}": m for m in _UNITS_RE.findall(text)})
    if len(set(found.values())) > 1:
        raise ImageReadError(
            f"{fn}: cannot use '{path}': its header contradicts itself about the units of the field "
            f"({', '.join(sorted(found))}); rewrite it with one unit"
        )
    stated = next(iter(found.values()), None)
    if stated is not None and units is not None and stated != units:
        raise ImageReadError(f"{fn}: '{path}' states units={stated}, but units={units!r} was given")
    units = stated or units
    if units is None:
        raise ImageReadError(
            f"{fn}: cannot use '{path}': the file does not state its units ('units=voxel' or "
            "'units=mm' in descrip or intent_name); pass units='voxel' or units='mm'"
        )
    shape = data.shape
    if data.ndim == 5 and shape[3] == 1:
        spatial, comps = shape[:3], shape[4]
    elif data.ndim in (3, 4) and shape[-1] == data.ndim - 1:  # voxelmorph style
        spatial, comps = shape[:-1] + (1,) * (4 - data.ndim), shape[-1]
    else:
        raise ImageReadError(
            f"{fn}: cannot use '{path}': expected a vector field (X, Y, Z, 1, C), got shape {shape}"
        )
    vectors = data.reshape(*spatial, comps).astype(np.float64)
    if units == "voxel":
        ndim = comps
        if ndim not in (2, 3) or any(s != 1 for s in spatial[ndim:]):
            raise ImageReadError(
                f"{fn}: cannot use '{path}': {comps} voxel components do not match the "
                f"spatial shape {spatial}"
            )
    else:
        ndim = 2 if spatial[2] == 1 else 3
        if comps != 3:
            raise ImageReadError(
                f"{fn}: cannot use '{path}': a mm field must have 3 (x, y, z) components, got {comps}"
            )
        vectors = vectors @ np.linalg.pinv(_linear_part(affine, ndim)).T
    vectors = vectors.reshape(*spatial[:ndim], ndim)
    disp = np.ascontiguousarray(np.moveaxis(vectors, -1, 0), dtype=np.float32)
    return WarpField(disp, affine)


# --------------------------------------------------------------------------------------------
# Grids and tensors


def same_grid(a: Volume, b: Volume, atol: float = 1e-3) -> bool:
    """Whether two volumes share one voxel grid (same spatial shape and affine within ``atol``)."""
    return a.shape == b.shape and bool(np.allclose(a.affine, b.affine, rtol=0.0, atol=atol))


#: Sample coordinates within this many voxels of the moving image's first or last plane count as on
#: it. Matrix products round border coordinates to e.g. -1e-17 or n-1+1e-15; a tolerance-free test
#: reads those as outside and drops whole border planes. NIfTI stores the sform in float32, so two
#: grids that share voxels exactly differ by up to ~1e-5 voxel once written and read back (1e-6
#: still lost the border plane of a flipped copy); 1e-3 voxel covers that with a wide margin and
#: changes a linearly interpolated value by at most 1e-3 of one voxel's intensity step.
GRID_TOLERANCE_VOXELS = 1e-3


def _fixed_to_moving_voxels(moving: Volume, fixed: Volume) -> np.ndarray:
    """The 4x4 matrix taking fixed voxel indices to moving voxel indices through world space.

    For 2D volumes (voxel index z = 0) the fixed slice must lie in the moving slice's plane;
    otherwise a :class:`ValueError` is raised instead of silently projecting one onto the other.
    """
    vox = np.linalg.inv(moving.affine) @ fixed.affine
    if fixed.ndim == 2:
        # in-plane fixed points (i, j, 0) must land on moving z = 0 for every i, j
        off_plane = np.abs(vox[2, [0, 1, 3]]).max()
        if off_plane > 1e-3:
            raise ValueError(
                "morphreg.io.resample_to: the 2D 'moving' slice does not lie in the plane of the 2D "
                f"'fixed' slice (fixed points leave the moving plane by up to {off_plane:.3g} voxels "
                "per voxel); bring both slices into one plane first"
            )
    return vox


def resample_to(moving: Volume, fixed: Volume, order: int = 1) -> Volume:
    """Resample ``moving`` onto ``fixed``'s voxel grid through world space.

    Fixed voxel ``x`` samples moving voxel ``inv(A_moving) @ A_fixed @ x``; outside the moving
    image the value is 0. Coordinates within :data:`GRID_TOLERANCE_VOXELS` of the moving image's
    border planes count as inside, so every voxel the two grids share is kept (a flipped, cropped
    or integer-shifted grid is an exact copy of the overlapping voxels).

    Args:
        moving: the volume to resample, 2D or 3D (same ndim as ``fixed``).
        fixed: defines the output grid (shape and affine).
        order: 1 (linear; integer data are treated as intensities and returned as float32) or
            0 (nearest; label maps keep their dtype).

    Returns:
        :class:`Volume` with ``fixed``'s shape, affine and header.

    Raises:
        ValueError: for a bad ``order``, mismatched dimensionality, or a 2D moving slice that
            does not lie in the fixed slice's plane.
    """
    fn = "morphreg.io.resample_to"
    if order not in (0, 1):
        raise ValueError(f"{fn}: argument 'order' must be 0 (nearest) or 1 (linear), got {order!r}")
    if moving.ndim != fixed.ndim:
        raise ValueError(f"{fn}: 'moving' is {moving.ndim}D but 'fixed' is {fixed.ndim}D; both must match")
    ndim = fixed.ndim
    vox = _fixed_to_moving_voxels(moving, fixed)
    data = moving.data
    if order == 1 and data.dtype.kind != "f":
        data = data.astype(np.float32)
    index = np.indices(fixed.shape, dtype=np.float64).reshape(ndim, -1)
    coords = vox[:ndim, :ndim] @ index + vox[:ndim, 3:4]  # (ndim, N) moving voxel coordinates
    upper = np.asarray(moving.shape, dtype=np.float64)[:, None] - 1.0
    inside = np.all((coords >= -GRID_TOLERANCE_VOXELS) & (coords <= upper + GRID_TOLERANCE_VOXELS), axis=0)
    np.clip(coords, 0.0, upper, out=coords)
    if order == 0:
        coords = np.rint(coords)  # halfway cases round to even, as numpy does
    values = ndimage.map_coordinates(data, coords, order=order, mode="nearest")
    values[~inside] = 0
    out = values.reshape(fixed.shape).astype(data.dtype, copy=False)
    return Volume(out, fixed.affine.copy(), fixed.header)


def to_tensor(volume: Volume) -> torch.Tensor:
    """Volume -> tensor ``(1, 1, *spatial)``: float32, or int64 for integer label maps."""
    data = np.ascontiguousarray(volume.data)
    if data.dtype.kind in "iub":
        tensor = torch.from_numpy(data.astype(np.int64))
    else:
        tensor = torch.from_numpy(data.astype(np.float32))
    return tensor[None, None]


def from_tensor(t: torch.Tensor, like: Volume) -> Volume:
    """Tensor -> :class:`Volume` on ``like``'s grid (its affine and header).

    Args:
        t: ``(1, 1, *spatial)``, ``(1, *spatial)`` or ``(*spatial)`` with ``like``'s spatial
            shape. Floating tensors become float32; integer tensors keep an integer dtype
            (``like``'s own integer dtype when ``like`` is a label map and the values fit).
        like: the volume whose grid the data live on.
    """
    fn = "morphreg.io.from_tensor"
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{fn}: argument 't' must be a torch.Tensor, got {type(t).__name__}")
    data = t.detach().cpu()
    while data.dim() > like.ndim and data.shape[0] == 1:
        data = data[0]
    if tuple(data.shape) != like.shape:
        raise ValueError(
            f"{fn}: argument 't' must have shape (1, 1, *spatial) with spatial {like.shape}, "
            f"got {tuple(t.shape)}"
        )
    array = data.numpy()
    if array.dtype.kind == "f":
        array = array.astype(np.float32)
    elif array.dtype.kind in "iu" and like.data.dtype.kind in "iu":
        info = np.iinfo(like.data.dtype)
        if array.size == 0 or (info.min <= array.min() and array.max() <= info.max):
            array = array.astype(like.data.dtype)
    elif array.dtype.kind == "b":
        array = array.astype(np.uint8)
    return Volume(np.array(array), like.affine.copy(), like.header)
