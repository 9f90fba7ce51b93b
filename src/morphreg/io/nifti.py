"""nibabel files (NIfTI, MGH): read one with every check, build a NIfTI image with its geometry codes."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import FileBasedHeader

from .formats import ImageReadError
from .gzip_files import is_gzip_path, read_checked
from .sanity import check_declared_size, first_line, unreadable

NIFTI_INTENT_VECTOR = 1007
_DESCRIP_LEN = 79  # NIfTI-1 descrip is char[80] with a terminating NUL


def read_nibabel(fn: str, path: Path) -> tuple[np.ndarray, np.ndarray, FileBasedHeader]:
    try:
        img = nib.load(str(path), mmap=False)  # reads the header only
        header = img.header
        shape = tuple(int(s) for s in header.get_data_shape())
        dtype = np.dtype(header.get_data_dtype())
        offset = int(getattr(img.dataobj, "offset", 0) or header.get_data_offset())  # the header copy says 0
    except Exception as err:  # nibabel raises many types; none of them should escape
        raise unreadable(fn, path, first_line(err)) from None
    compressed = is_gzip_path(path)
    stored = None if compressed else max(path.stat().st_size - offset, 0)
    nbytes = check_declared_size(fn, path, shape, dtype, stored)
    try:
        if compressed:  # one checked decompression; nibabel parses the bytes instead of decompressing again
            img = type(img).from_bytes(read_checked(fn, path, offset + nbytes, unreadable))
        data = np.asanyarray(img.dataobj)
        affine = np.asarray(img.affine, dtype=np.float64)
    except (MemoryError, ImageReadError):
        raise
    except Exception as err:
        raise unreadable(fn, path, first_line(err)) from None
    return np.asarray(data), affine, header


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


def nifti_image(
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

