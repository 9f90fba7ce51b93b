"""The :class:`Volume` (array + voxel-to-world affine + header): read, write, compare grids, convert to tensors.

A :class:`Volume` travels from reading to writing, so outputs keep the orientation of their inputs
(no made-up default affine, a fault of voxelmorph #58).

Array conventions: a 2D image is a 2D array ``(X, Y)`` (a NIfTI ``X x Y x 1`` is read as 2D), a 3D
image is ``(X, Y, Z)``; array axis ``k`` is voxel index ``k`` of the affine (no transposition).
Floating data are read and written as float32; integer data (label maps) keep their dtype.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from nibabel.filebasedimages import FileBasedHeader

from .._files import atomic_write
from .formats import ImageReadError, PathLike, format_of
from .gzip_files import write_image
from .nifti import nifti_image, read_nibabel
from .numpy_files import read_numpy
from .sanity import check_finite, check_geometry, check_readable, normalise_dtype
from .sitk import is_sitk_path, read_sitk

_NPZ_WRITE_KEY = "vol"
# FreeSurfer MGH stores only these; other dtypes are converted losslessly when possible.
_MGH_DTYPES = (np.uint8, np.int16, np.int32, np.float32)


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
        self.affine = check_affine(fn, "affine", self.affine)

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


def check_affine(fn: str, name: str, affine: object) -> np.ndarray:
    if isinstance(affine, torch.Tensor):
        affine = affine.detach().cpu().numpy()
    arr = np.asarray(affine, dtype=np.float64)
    if arr.shape != (4, 4):
        raise ValueError(f"{fn}: argument '{name}' must be a 4x4 matrix, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{fn}: argument '{name}' contains NaN or inf")
    return arr.copy()


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
            NRRD, ``.mha``/``.mhd`` and a folder holding one DICOM series (:mod:`morphreg.io.sitk`).
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
    if is_sitk_path(path):  # PNG/TIFF/NRRD/MetaImage files and DICOM series folders
        if key is not None:
            raise ValueError(f"{fn}: argument 'key' only applies to .npz files, got key={key!r}")
        try:
            data, affine = read_sitk(path)
        except ValueError as err:
            raise ImageReadError(str(err)) from None
        data = _squeeze_spatial(fn, path, normalise_dtype(fn, path, data))
        check_finite(fn, path, data)
        return Volume(np.ascontiguousarray(data), affine, None)
    fmt = format_of(fn, path, ImageReadError)
    if key is not None and fmt != "npz":
        raise ValueError(f"{fn}: argument 'key' only applies to .npz files, got key={key!r}")
    check_readable(fn, path)
    header: FileBasedHeader | None = None
    if fmt in ("nifti", "mgh"):
        data, affine, header = read_nibabel(fn, path)
    else:
        data = read_numpy(fn, path, fmt, key)[0]
        affine = np.eye(4)
    check_geometry(fn, path, affine)
    data = _squeeze_spatial(fn, path, normalise_dtype(fn, path, data))
    check_finite(fn, path, data)
    return Volume(np.ascontiguousarray(data), affine, header)


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
    fmt = format_of(fn, path, ValueError)
    data = _storage_data(fn, np.asarray(volume.data), fmt)
    affine = volume.affine
    if fmt in ("nifti", "mgh") and data.ndim == 2:
        data = data[..., None]

    def write(tmp: Path) -> None:
        if fmt == "nifti":
            write_image(nifti_image(data, affine, volume.header, description), tmp)
        elif fmt == "mgh":
            write_image(nib.MGHImage(data, affine), tmp)
        elif fmt == "npy":
            with open(tmp, "wb") as handle:
                np.save(handle, data)
        else:
            with open(tmp, "wb") as handle:
                np.savez_compressed(handle, **{_NPZ_WRITE_KEY: data})

    atomic_write(path, write)


def same_grid(a: Volume, b: Volume, atol: float = 1e-3) -> bool:
    """Whether two volumes share one voxel grid (same spatial shape and affine within ``atol``)."""
    return a.shape == b.shape and bool(np.allclose(a.affine, b.affine, rtol=0.0, atol=atol))


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
