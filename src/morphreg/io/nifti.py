"""nibabel files (NIfTI, MGH): read one with every check, build a NIfTI image with its geometry codes.

nibabel fixes some header faults while loading and logs a line for each on stderr. morphreg
collects those lines instead (:func:`quiet_load`) and decides once, per kind of fault:

- **the voxel size of an axis is 0 or negative** (``pixdim[1,2,3] should be non-zero`` /
  ``... should be positive``) where no sform gives the geometry: refused with one line naming the
  file and the axis. The header does not say how large the voxels are (0), or says it in a way
  the readers disagree on (negative: nibabel takes ``abs``, the NIfTI reference library, which
  FSL and ITK use, takes 1 mm), so any result in mm, any resampling between grids and any exported
  transform would rest on a guess. An axis of one voxel (the third axis of a 2D image) is
  accepted silently: its size does not change the image's geometry. With a valid sform, pixdim
  does not define the geometry and the file is accepted silently.
- **an unknown qform/sform code** (nibabel resets it to 0, which changes which geometry the file
  has): refused with one line.
- **bookkeeping** (``sizeof_hdr``, a ``vox_offset`` not divisible by 16): accepted silently;
  nibabel's fix is what every reader does and the voxels and geometry do not depend on it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import FileBasedHeader
from nibabel.openers import ImageOpener

from .formats import ImageReadError
from .gzip_files import is_gzip_path, read_checked
from .sanity import check_declared_size, first_line, unreadable

NIFTI_INTENT_VECTOR = 1007
_DESCRIP_LEN = 79  # NIfTI-1 descrip is char[80] with a terminating NUL


@contextmanager
def _collected_nibabel_log() -> Iterator[list[str]]:
    """Collect what nibabel logs while fixing a header (``nibabel.global``), instead of printing it."""
    from nibabel import imageglobals

    logger = imageglobals.logger
    messages: list[str] = []

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    handlers, propagate = list(logger.handlers), logger.propagate
    logger.handlers = [_Collect()]
    logger.propagate = False
    try:
        yield messages
    finally:
        logger.handlers, logger.propagate = handlers, propagate


def quiet_load(path: str | Path, **kwargs: object) -> tuple[nib.filebasedimages.FileBasedImage, list[str]]:
    """``nib.load`` with nibabel's header-fix lines collected and returned, not printed."""
    with _collected_nibabel_log() as messages:
        img = nib.load(str(path), **kwargs)
    return img, messages


_XFORM_CODE = re.compile(r"^([sq]form_code) (-?\d+) not valid")


def check_header_fixes(fn: str, path: Path, img: nib.filebasedimages.FileBasedImage, messages: list[str]) -> None:
    """Refuse a file whose header nibabel had to fix in a way that decides its geometry (module docstring).

    Raises:
        ImageReadError: one line naming the file and the header field.
    """
    for message in messages:
        code = _XFORM_CODE.match(message)
        if code:
            raise ImageReadError(
                f"{fn}: cannot use '{path}': its header's {code[1]} {code[2]} is not a NIfTI code (0-4), so which "
                f"geometry the file has is unclear; set {code[1]} to 0-4 (e.g. with nibabel or fslorient)")
    header = img.header
    if not (isinstance(header, nib.Nifti1Header) and any("pixdim[1,2,3]" in m for m in messages)):
        return
    if int(header["sform_code"]) > 0:
        return  # the sform gives the geometry; pixdim does not enter it
    with open_header(img) as handle:
        raw = type(header).from_fileobj(handle, check=False)["pixdim"]
    shape = tuple(int(n) for n in header.get_data_shape()[:3])
    for axis in range(min(3, len(shape))):
        size = float(raw[axis + 1])
        if shape[axis] > 1 and not size > 0:
            why = ("the header does not say how large its voxels are" if size == 0 else
                   "NIfTI voxel sizes are positive (a flip belongs in the qform) and readers disagree on a "
                   f"negative one (nibabel: {abs(size):g} mm, the NIfTI reference library: 1 mm)")
            raise ImageReadError(
                f"{fn}: cannot use '{path}': its voxel size along axis {axis} is {size:g} (pixdim[{axis + 1}], and "
                f"no sform): {why}; set pixdim[{axis + 1}] to the voxel size in mm, or give the file an sform")


def open_header(img: nib.filebasedimages.FileBasedImage) -> ImageOpener:
    """The file holding ``img``'s header, opened for reading (gzip handled)."""
    holder = img.file_map["header"] if "header" in img.file_map else img.file_map["image"]  # pair / one file
    return ImageOpener(holder.filename, "rb")


def read_nibabel(fn: str, path: Path) -> tuple[np.ndarray, np.ndarray, FileBasedHeader]:
    try:
        img, messages = quiet_load(path, mmap=False)  # reads the header only
        header = img.header
        shape = tuple(int(s) for s in header.get_data_shape())
        dtype = np.dtype(header.get_data_dtype())
        offset = int(getattr(img.dataobj, "offset", 0) or header.get_data_offset())  # the header copy says 0
    except Exception as err:  # nibabel raises many types; none of them should escape
        raise unreadable(fn, path, first_line(err)) from None
    check_header_fixes(fn, path, img, messages)
    compressed = is_gzip_path(path)
    stored = None if compressed else max(path.stat().st_size - offset, 0)
    nbytes = check_declared_size(fn, path, shape, dtype, stored)
    try:
        if compressed:  # one checked decompression; nibabel parses the bytes instead of decompressing again
            with _collected_nibabel_log():  # the same header again: its fix lines were judged above
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

