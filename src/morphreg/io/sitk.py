"""Images that SimpleITK reads: PNG/JPEG/BMP/TIFF (2D), NRRD, MetaImage (.mha/.mhd), DICOM series folders.

ITK's physical frame is LPS; morphreg's affines are RAS (as nibabel's), so the voxel-to-world
matrix is ``diag(-1, -1, 1, 1) @ [direction * spacing | origin]``. Files without geometry (PNG,
JPEG, BMP, most TIFF) get ITK's defaults (spacing 1, origin 0, identity direction), i.e. the same
grid as SimpleITK and ANTs give them. Colour images whose channels are equal (grey stored as RGB)
are read as one channel; other colour images as their mean over the colour channels.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

#: Extensions read through SimpleITK (lower case).
SITK_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".nrrd", ".nhdr", ".mha", ".mhd")
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def itk_error_text(err: BaseException, limit: int = 160) -> str:
    """ITK's own sentence of a SimpleITK exception, without its source location and object address."""
    text = " ".join(str(err).split())
    text = re.sub(r"^Exception thrown in SimpleITK \w+:\s*", "", text)
    text = re.sub(r"^.*ITK ERROR:\s*\w+\(0x[0-9a-fA-F]+\):\s*", "", text)
    return text[-limit:]


def is_sitk_path(path: str | Path) -> bool:
    """Whether ``path`` is read by :func:`read_sitk`: one of :data:`SITK_EXTENSIONS`, or a folder (DICOM series)."""
    path = Path(path)
    if path.is_dir():  # a folder named like a NIfTI/numpy file is a mistake, reported by the nibabel path
        return not path.name.lower().endswith((".nii", ".nii.gz", ".mgz", ".mgh", ".npy", ".npz"))
    return path.name.lower().endswith(SITK_EXTENSIONS)


def read_sitk(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read an image with SimpleITK.

    Args:
        path: a file with one of :data:`SITK_EXTENSIONS`, or a folder holding one DICOM series.

    Returns:
        ``(data (X, Y) or (X, Y, Z) in array order x, y, z, affine (4, 4) voxel-to-RAS)``.

    Raises:
        ValueError: unreadable file, a folder with no or several DICOM series, more than 3
            dimensions.
    """
    import SimpleITK as sitk

    fn = "morphreg.io.load_volume"
    path = Path(path)
    try:
        if path.is_dir():
            reader = sitk.ImageSeriesReader()
            series = reader.GetGDCMSeriesIDs(str(path))
            if not series:
                raise ValueError(f"{fn}: cannot read '{path}': the folder holds no DICOM series")
            if len(series) > 1:
                raise ValueError(f"{fn}: cannot read '{path}': the folder holds {len(series)} DICOM series; give a "
                                 "folder with one")
            reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(path), series[0]))
            image = reader.Execute()
        else:
            if not path.is_file():
                raise ValueError(f"{fn}: cannot read '{path}': file does not exist")
            image = sitk.ReadImage(str(path))
    except RuntimeError as err:
        raise ValueError(f"{fn}: cannot read '{path}' with SimpleITK: {itk_error_text(err)}") from None
    ndim = image.GetDimension()
    if ndim not in (2, 3):
        raise ValueError(f"{fn}: cannot use '{path}': expected a 2D or 3D image, got {ndim}D")
    array = sitk.GetArrayFromImage(image)  # (z, y, x[, c])
    if image.GetNumberOfComponentsPerPixel() > 1:
        channels = array[..., :3] if array.shape[-1] >= 3 else array
        same = all(np.array_equal(channels[..., 0], channels[..., k]) for k in range(1, channels.shape[-1]))
        array = channels[..., 0] if same else channels.astype(np.float32).mean(axis=-1)
    data = np.ascontiguousarray(np.transpose(array))  # (x, y[, z])
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(ndim, ndim)
    lps = np.eye(4)
    lps[:ndim, :ndim] = direction * np.asarray(image.GetSpacing(), dtype=np.float64)
    lps[:ndim, 3] = image.GetOrigin()
    return data, _LPS_TO_RAS @ lps
