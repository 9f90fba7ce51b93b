"""Displacement fields on disk: NIfTI vector images that state their units (voxel or mm) and direction.

Warp fields (:func:`save_warp`, :func:`load_warp`) are NIfTI vector images (``intent_code = 1007``,
NIFTI_INTENT_VECTOR) of shape ``(X, Y, Z, 1, C)`` (``(X, Y, 1, 1, C)`` in 2D) whose ``descrip``
states the units and the direction, e.g.
``"morphreg warp; units=voxel; pull-back: moved(x)=moving(x+u(x))"``:

* ``units="voxel"``: ``C = ndim`` voxel components, component ``k`` along array axis ``k``
  (morphreg's in-memory convention, :mod:`morphreg.spatial`).
* ``units="mm"``: ``C = 3`` world-space (nibabel RAS+, the affine's frame) components in mm,
  ``d_mm = A[:3, :ndim] @ d_voxel``, for 2D and 3D alike. ITK/ANTs fields use LPS (x and y
  negated) and are *not* this convention (:mod:`.itk_warp`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from nibabel.filebasedimages import FileBasedHeader

from .._files import atomic_write
from .formats import ImageReadError, PathLike, format_of
from .gzip_files import write_image
from .nifti import NIFTI_INTENT_VECTOR, nifti_image, quiet_load, read_nibabel
from .sanity import check_finite, check_geometry, check_readable, normalise_dtype
from .volume import check_affine

WARP_UNITS = ("voxel", "mm")
_WARP_DIRECTION = "pull-back: moved(x)=moving(x+u(x))"


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
    if format_of(fn, path, ValueError) != "nifti":
        raise ValueError(f"{fn}: argument 'path' must end in .nii or .nii.gz, got '{path}'")
    affine = check_affine(fn, "affine", affine)
    vectors = np.moveaxis(disp.astype(np.float32, copy=False), 0, -1)  # (*spatial, ndim)
    if units == "mm":  # converted in float64
        lin = _linear_part(affine, ndim)
        if np.linalg.matrix_rank(lin) < ndim:
            raise ValueError(f"{fn}: argument 'affine' is singular; cannot convert to mm")
        vectors = vectors.astype(np.float64) @ lin.T  # (*spatial, 3)
    spatial = disp.shape[1:] + (1,) * (3 - ndim)
    data = vectors.astype(np.float32).reshape(*spatial, 1, vectors.shape[-1])
    description = f"morphreg warp; units={units}; {_WARP_DIRECTION}"

    def write(tmp: Path) -> None:
        img = nifti_image(data, affine, header, description)
        img.header.set_intent(NIFTI_INTENT_VECTOR, (), name=f"units={units}")
        write_image(img, tmp)

    atomic_write(path, write)


_UNITS_RE = re.compile(r"units\s*=\s*(voxel|mm)\b")


def states_units(path: PathLike) -> bool:
    """Whether a NIfTI file's header states the units of a morphreg field (``units=voxel|mm``);
    ``False`` for a file nibabel cannot open."""
    try:
        header = quiet_load(path)[0].header
        texts = [bytes(np.asarray(header[k]).item()).decode("ascii", "replace") for k in ("descrip", "intent_name")]
    except Exception:  # noqa: BLE001 - not a NIfTI file: it states nothing
        return False
    return any(_UNITS_RE.search(text) for text in texts)


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
    if format_of(fn, path, ImageReadError) != "nifti":
        raise ImageReadError(f"{fn}: cannot read '{path}': a warp field must be a NIfTI file")
    check_readable(fn, path)
    data, affine, header = read_nibabel(fn, path)
    data = normalise_dtype(fn, path, data)
    check_finite(fn, path, data)
    check_geometry(fn, path, affine)
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
    vectors = data.reshape(*spatial, comps)  # float32 (normalise_dtype)
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
        vectors = vectors.astype(np.float64) @ np.linalg.pinv(_linear_part(affine, ndim)).T
    vectors = vectors.reshape(*spatial[:ndim], ndim)
    disp = np.ascontiguousarray(np.moveaxis(vectors, -1, 0), dtype=np.float32)
    return WarpField(disp, affine)
