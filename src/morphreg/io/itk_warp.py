"""ITK/ANTs displacement fields: LPS millimetres on the fixed grid, fixed -> moving points.

morphreg's own field ``d`` is in voxels of the fixed grid (``moved(x) = moving(x + d(x))``). With
the fixed image's voxel-to-RAS matrix ``A`` the same displacement in world space is
``A[:3, :ndim] @ d`` (RAS mm); ITK's physical frame is LPS, so x and y change sign. ANTs and
SimpleITK read the NIfTI affine and flip it to LPS themselves, so the field keeps the fixed
image's affine unchanged.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from .._files import atomic_write
from .formats import ImageReadError, split_ext
from .gzip_files import write_image
from .nifti import NIFTI_INTENT_VECTOR, quiet_load, read_nibabel
from .sanity import check_geometry, check_readable, normalise_dtype
from .warp import WarpField, field_array

#: RAS <-> LPS: negate x and y.
_RAS_TO_LPS = np.array([-1.0, -1.0, 1.0])
#: What the written file says about itself (descrip, at most 79 characters).
ITK_DESCRIPTION = "ITK/ANTs displacement field; LPS mm; fixed->moving points"
_ITK_INTENT_NAME = "ITK LPS mm"


def _in_plane(affine: np.ndarray) -> None:
    """2D ITK images live in the x-y plane of LPS: refuse slices whose axes leave it."""
    if np.abs(affine[2, :2]).max() > 1e-6:
        raise ValueError(
            "morphreg.io.save_itk_warp: a 2D ITK/ANTs field lives in the image's x-y plane, but the fixed "
            "slice's axes leave it (its affine has z components); write the field as a 3D image instead"
        )


def world_disp_lps(disp: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Voxel displacements -> LPS mm vectors.

    Args:
        disp: ``(ndim, *spatial)`` voxels along the array axes.
        affine: ``(4, 4)`` voxel-to-RAS matrix of the field's grid.

    Returns:
        ``(*spatial, ndim)`` float64 vectors: LPS ``(x, y, z)`` in 3D, ``(x, y)`` in 2D.
    """
    ndim = disp.shape[0]
    vectors = np.moveaxis(np.asarray(disp, dtype=np.float64), 0, -1) @ affine[:3, :ndim].T  # RAS (*, 3)
    return (vectors * _RAS_TO_LPS)[..., :ndim]


def save_itk_warp(disp: np.ndarray | torch.Tensor, path: str | Path, affine: np.ndarray) -> None:
    """Write a displacement field that ANTs and SimpleITK apply as-is.

    Args:
        disp: ``(ndim, *spatial)`` (or ``(1, ndim, *spatial)``) morphreg displacement in voxels.
        path: ``.nii`` or ``.nii.gz``.
        affine: ``(4, 4)`` voxel-to-RAS matrix of the fixed image (the field's grid).

    The file is ``(X, Y, Z, 1, 3)`` float32 (``(X, Y, 1, 1, 2)`` for 2D), intent vector (1007),
    vectors in LPS mm mapping each fixed-image point ``p`` to the moving-image point ``p + v(p)``:
    ``antsApplyTransforms -t W`` and ``sitk.DisplacementFieldTransform`` reproduce morphreg's moved
    image from it.
    """
    fn = "morphreg.io.save_itk_warp"
    disp = field_array(fn, disp)
    ndim = disp.ndim - 1
    affine = np.asarray(affine, dtype=np.float64)
    if ndim == 2:
        _in_plane(affine)
    path = Path(path)
    if split_ext(path)[1] not in (".nii", ".nii.gz"):
        raise ValueError(f"cannot write '{path}': an ITK/ANTs field is written as NIfTI (.nii or .nii.gz)")
    vectors = world_disp_lps(disp, affine).astype(np.float32)
    spatial = disp.shape[1:] + (1,) * (3 - ndim)
    data = vectors.reshape(*spatial, 1, ndim)

    def write(tmp: Path) -> None:
        img = nib.Nifti1Image(data, affine)
        img.set_sform(affine, code=1)
        img.set_qform(affine, code=1)
        img.header.set_xyzt_units("mm", "sec")
        img.header.set_intent(NIFTI_INTENT_VECTOR, (), name=_ITK_INTENT_NAME)
        img.header["descrip"] = ITK_DESCRIPTION.encode("ascii")
        write_image(img, tmp)

    atomic_write(path, write)


def load_itk_warp(path: str | Path) -> WarpField:
    """Read an ITK/ANTs displacement field (LPS mm, fixed -> moving) as morphreg voxel displacements.

    Args:
        path: NIfTI ``(X, Y, Z, 1, C)`` as ANTs writes (``C`` = 3, or 2 for a 2D field
            ``(X, Y, 1, 1, 2)``).

    Returns:
        :class:`morphreg.io.WarpField` ``(disp (ndim, *spatial) voxels, affine (4, 4))`` on the
        field's own grid.

    Raises:
        ImageReadError: a missing, empty, truncated or oversized file (:mod:`.sanity`), not a
            NIfTI vector field of that shape, NaN/inf, or a singular affine.
    """
    fn = "morphreg.io.load_itk_warp"
    path = Path(path)
    if split_ext(path)[1] not in (".nii", ".nii.gz"):
        raise ImageReadError(f"{fn}: cannot read '{path}': an ITK/ANTs field must be a NIfTI file")
    check_readable(fn, path)
    data, affine, _ = read_nibabel(fn, path)  # sizes from the header, gzip CRCs, then the data
    data = normalise_dtype(fn, path, data)
    check_geometry(fn, path, affine)
    shape = data.shape
    if data.ndim != 5 or shape[3] != 1 or shape[4] not in (2, 3):
        raise ImageReadError(
            f"{fn}: cannot use '{path}': expected an ITK/ANTs displacement field (X, Y, Z, 1, 3) or "
            f"(X, Y, 1, 1, 2), got shape {shape}"
        )
    if not np.isfinite(data).all():
        raise ImageReadError(f"{fn}: cannot use '{path}': the field contains NaN or inf")
    data = data.astype(np.float64)
    comps = shape[4]
    ndim = 2 if (comps == 2 or shape[2] == 1) else 3
    if comps == 2 and shape[2] != 1:
        raise ImageReadError(f"{fn}: cannot use '{path}': 2 components on a 3D grid {shape[:3]}")
    vectors = data.reshape(*shape[:3], comps)
    lps = np.zeros(vectors.shape[:-1] + (3,))
    lps[..., :comps] = vectors
    ras = lps * _RAS_TO_LPS
    voxels = ras @ np.linalg.pinv(affine[:3, :ndim]).T  # (..., ndim)
    voxels = voxels.reshape(*shape[:ndim], ndim)
    return WarpField(np.ascontiguousarray(np.moveaxis(voxels, -1, 0), dtype=np.float32), affine)


def is_itk_warp(path: str | Path) -> bool:
    """Whether a NIfTI field says it is an ITK/ANTs field (written by :func:`save_itk_warp`)."""
    try:
        header = quiet_load(path)[0].header
    except Exception:
        return False
    texts = [bytes(np.asarray(header[k]).item()).decode("ascii", "replace") for k in ("descrip", "intent_name")]
    return any("LPS" in text for text in texts)
