"""Affine matrices in other tools' files (SimpleITK's and nitransforms' readers and writers).

morphreg's matrix is a ``(4, 4)`` world matrix ``W`` mapping a **fixed-image point to the
moving-image point** in RAS millimetres (``moved(p) = moving(W p)``). The formats:

==========  ===================================================================================
``ras``     morphreg's text 4x4: RAS mm, fixed -> moving points (``#`` comment lines allowed).
``itk``     ITK transform file (``.mat`` binary or ``.txt``/``.tfm`` text), written and read by
            SimpleITK: LPS mm, fixed -> moving points, as ``antsApplyTransforms`` and
            ``sitk.ReadTransform`` use it. 2D images give a 2D ``AffineTransform``.
``fsl``     FSL FLIRT ``.mat`` (nitransforms): FSL's scaled-voxel frame, which depends on both
            images; as FLIRT stores it, the matrix maps input (moving) coordinates to reference
            (fixed) ones, for ``flirt -in moving -ref fixed -applyxfm -init A``.
``lta``     FreeSurfer LTA (nitransforms' LTA structures): RAS-to-RAS (type 1) with
            **src = the moving grid, dst = the fixed grid** and the matrix mapping src RAS points
            to dst RAS points, ``inv(W)``, as FreeSurfer reads it (``LTAchangeType``: vox2vox =
            ``inv(dst.vox2ras) @ M @ src.vox2ras``) and as ``mri_robust_register --mov M --dst F``
            writes it; ``mri_vol2vol --mov moving --targ fixed --lta A.lta`` then resamples the
            moving image onto the fixed grid as morphreg's ``--moved``.
==========  ===================================================================================

Reading an LTA, the grid blocks say which way it points: src = moving, dst = fixed (FreeSurfer's
usual way) gives ``W = inv(M)``; src = fixed, dst = moving (an inverted LTA) gives ``W = M``; a
file whose blocks are not valid is read the usual way. A VOX2VOX LTA is converted through its
blocks first.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from .._checks import check_choice
from .._files import atomic_write
from .outputs import save_text
from .volume import Volume

MATRIX_FORMATS = ("ras", "itk", "fsl", "lta")
_FLIP = np.diag([-1.0, -1.0, 1.0, 1.0])  # RAS <-> LPS


def _check_format(fn: str, fmt: str) -> None:
    check_choice(fn, "fmt", fmt, MATRIX_FORMATS)


def _nifti_of(volume: Volume) -> nib.Nifti1Image:
    data = volume.data if volume.ndim == 3 else volume.data[..., None]
    return nib.Nifti1Image(np.asarray(data, dtype=np.float32), volume.affine)


def detect_matrix_format(path: str | Path) -> str | None:
    """The format a file names unambiguously by its extension or content, else ``None``.

    ``.lta`` is LTA, ``.tfm``/``.txt`` starting with ``#Insight Transform File`` and a binary
    ``.mat`` (MATLAB v4, as ITK writes) are ITK. A text ``.mat`` of 4 rows is either FSL or a
    morphreg RAS matrix and is refused as ambiguous (``None``).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".lta":
        return "lta"
    try:
        head = path.read_bytes()[:64]
    except OSError:
        return None
    if head.startswith(b"#Insight Transform File"):
        return "itk"
    if suffix == ".mat" and b"\x00" in head:
        return "itk"
    if head.startswith(b"# 4x4 world (mm) matrix"):
        return "ras"
    return None


def save_matrix(matrix: np.ndarray, path: str | Path, fmt: str, fixed: Volume, moving: Volume) -> None:
    """Write a fixed -> moving RAS world matrix in ``fmt`` (one of :data:`MATRIX_FORMATS`).

    Args:
        matrix: ``(4, 4)`` RAS mm, fixed-image point -> moving-image point.
        path: output file (written atomically).
        fmt: ``ras``, ``itk``, ``fsl`` or ``lta``.
        fixed, moving: the two images (grids used by ``fsl`` and ``lta``; ``itk`` writes a 2D
            transform for 2D images).
    """
    fn = "morphreg.io.save_matrix"
    _check_format(fn, fmt)
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.shape != (4, 4) or not np.isfinite(matrix).all():
        raise ValueError(f"{fn}: argument 'matrix' must be a finite 4x4 matrix, got shape {matrix.shape}")
    path = Path(path)
    if fmt == "ras":
        rows = "\n".join(" ".join(f"{v:.10g}" for v in row) for row in matrix)
        save_text("# 4x4 world (mm) matrix mapping fixed-image points to moving-image points (RAS)\n"
                     + rows + "\n", path)
        return
    if fmt == "itk":
        import SimpleITK as sitk

        lps = _FLIP @ matrix @ _FLIP
        ndim = fixed.ndim
        if ndim == 2 and (np.abs(lps[:2, 2]).max() > 1e-6 or np.abs(fixed.affine[2, :2]).max() > 1e-6):
            raise ValueError(f"{fn}: a 2D ITK transform acts in the x-y plane, but this one (or the fixed slice) "
                             "leaves it; register the images as 3D volumes instead")
        transform = sitk.AffineTransform(ndim)
        transform.SetMatrix(lps[:ndim, :ndim].ravel().tolist())
        transform.SetTranslation(lps[:ndim, 3].tolist())
        suffix = path.suffix.lower() if path.suffix.lower() in (".mat", ".txt", ".tfm") else ".txt"
        atomic_write(path, lambda tmp: _write_via(tmp, suffix, transform))
        return
    if fmt == "lta":
        text = _lta_text(matrix, fixed, moving)
        atomic_write(path, lambda tmp: tmp.write_text(text))
        return
    from nitransforms.linear import Affine

    xfm = Affine(matrix, reference=_nifti_of(fixed))
    atomic_write(path, lambda tmp: xfm.to_filename(str(tmp), fmt="fsl", moving=_nifti_of(moving)))


def _lta_text(matrix: np.ndarray, fixed: Volume, moving: Volume) -> str:
    """The LTA file of a fixed -> moving RAS matrix: src = moving grid, dst = fixed grid, M = inv(W).

    (nitransforms' own ``Affine.to_filename(fmt="fs")`` records src = reference but stores the
    reference <- moving matrix, the other way round from FreeSurfer's src -> dst reading.)
    """
    from nitransforms.io.lta import FSLinearTransform, VolumeGeometry

    lta = FSLinearTransform()
    fields = lta.structarr
    fields["type"] = 1  # LINEAR_RAS_TO_RAS
    fields["sigma"] = 1.0
    fields["mean"] = np.zeros((3, 1))
    fields["m_L"] = np.linalg.inv(matrix)  # moving (src) RAS point -> fixed (dst) RAS point
    fields["src"] = np.asanyarray(VolumeGeometry.from_image(_nifti_of(moving)))
    fields["dst"] = np.asanyarray(VolumeGeometry.from_image(_nifti_of(fixed)))
    return lta.to_string()


def _read_lta(path: Path, fixed: Volume, moving: Volume) -> np.ndarray:
    """A fixed -> moving RAS matrix from an LTA file, its direction taken from its grid blocks."""
    from nitransforms.io.lta import FSLinearTransformArray

    try:
        lta = FSLinearTransformArray.from_filename(str(path))
    except (AssertionError, ValueError):  # nitransforms' parser asserts each line's key and unpacks "key = value"
        raise ValueError("it is not a FreeSurfer LTA file (unexpected line layout)") from None
    if len(lta["xforms"]) != 1:
        raise ValueError(f"it holds {len(lta['xforms'])} transforms; expected one")
    xfm = lta["xforms"][0]
    xfm.set_type(1)  # VOX2VOX -> RAS2RAS through the file's own grid blocks
    m = np.asarray(xfm.structarr["m_L"], dtype=np.float64)
    src, dst = xfm["src"], xfm["dst"]
    if _lta_grid_is(src, fixed) and _lta_grid_is(dst, moving) and not (
            _lta_grid_is(src, moving) and _lta_grid_is(dst, fixed)):
        return m  # an inverted LTA: src = fixed, dst = moving, M = fixed -> moving = W
    return np.linalg.inv(m)  # src = moving, dst = fixed (or unrecorded grids): M = moving -> fixed


def _lta_grid_is(geometry: object, volume: Volume) -> bool:
    """Whether an LTA volume-info block describes ``volume``'s grid (shape and vox2ras to 1e-3 mm)."""
    fields = geometry.structarr
    if not int(fields["valid"]):
        return False
    shape = tuple(volume.shape) + (1,) * (3 - volume.ndim)
    if tuple(int(n) for n in fields["volume"]) != shape:
        return False
    return bool(np.allclose(geometry.as_affine(), volume.affine, atol=1e-3))


def _write_via(tmp: Path, suffix: str, transform: object) -> None:
    """SimpleITK picks the format by suffix: write next to ``tmp`` with ``suffix``, then move over it."""
    import os

    import SimpleITK as sitk

    other = tmp.with_name(tmp.name + suffix)
    try:
        sitk.WriteTransform(transform, str(other))
        os.replace(other, tmp)
    finally:
        other.unlink(missing_ok=True)


def load_matrix(path: str | Path, fmt: str, fixed: Volume, moving: Volume) -> np.ndarray:
    """Read a matrix file as a ``(4, 4)`` RAS fixed -> moving world matrix.

    Args:
        path: the file; ``fmt`` as in :func:`save_matrix`.
        fixed, moving: the images the matrix was made for (``fsl`` needs both grids).

    Raises:
        ValueError: a missing, empty or unreadable file, one that holds no affine transform, or
            a matrix that is not a finite, invertible affine map of the images' dimensionality
            (:func:`check_affine_matrix`).
    """
    fn = "morphreg.io.load_matrix"
    _check_format(fn, fmt)
    path = Path(path)
    _check_matrix_file(path, fmt)
    try:
        if fmt == "ras":
            matrix = _read_text_matrix(path)
        elif fmt == "itk":
            matrix = _FLIP @ _read_itk(path, fixed.ndim) @ _FLIP
        elif fmt == "lta":
            matrix = _read_lta(path, fixed, moving)
        else:
            from nitransforms.linear import load

            matrix = load(str(path), fmt="fsl", reference=_nifti_of(fixed),
                          moving=_nifti_of(moving)).matrix
    except (OSError, ValueError, RuntimeError, TypeError, KeyError, IndexError) as err:
        raise ValueError(f"cannot read '{path}' as {_FORMAT_NAME[fmt]}: {_reason(err)}") from None
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.shape == (3, 3) and fixed.ndim == 2:  # a 2D RAS matrix
        full = np.eye(4)
        full[:2, :2], full[:2, 3] = matrix[:2, :2], matrix[:2, 2]
        matrix = full
    return check_affine_matrix(matrix, f"'{path}' ({_FORMAT_NAME[fmt]})")


#: How messages name the formats.
_FORMAT_NAME = {"ras": "a 4x4 RAS text matrix", "itk": "an ITK transform", "fsl": "an FSL FLIRT matrix",
                "lta": "a FreeSurfer LTA"}


def _check_matrix_file(path: Path, fmt: str) -> None:
    """A missing, empty or folder path is named as such, before any reader guesses at it."""
    if not path.exists():
        raise ValueError(f"cannot read '{path}' as {_FORMAT_NAME[fmt]}: file does not exist")
    if not path.is_file():
        raise ValueError(f"cannot read '{path}' as {_FORMAT_NAME[fmt]}: not a regular file")
    if path.stat().st_size == 0:
        raise ValueError(f"cannot read '{path}' as {_FORMAT_NAME[fmt]}: file is empty (0 bytes)")
    if fmt in ("ras", "fsl", "lta") and b"\0" in path.read_bytes()[:4096]:
        raise ValueError(f"cannot read '{path}' as {_FORMAT_NAME[fmt]}: it holds binary data, not text (an image?)")


def _read_text_matrix(path: Path) -> np.ndarray:
    import warnings

    with warnings.catch_warnings():  # "input contained no data" for a file of comments: the shape says it
        warnings.simplefilter("ignore", UserWarning)
        return np.loadtxt(path, comments="#", dtype=np.float64, ndmin=2)


def _reason(err: BaseException) -> str:
    """One line for a reader's failure (ITK's own sentence; what a parser's bare error means)."""
    from .sitk import itk_error_text

    if isinstance(err, UnicodeDecodeError):
        return "it is not text (binary data: an image?)"
    if isinstance(err, RuntimeError) and "SimpleITK" in str(err):
        return f"not a readable ITK transform file (truncated or corrupt?): {itk_error_text(err)}"
    text = " ".join(str(err).split())[:160]
    if isinstance(err, (IndexError, KeyError)) or not text:
        return f"the file is truncated or malformed ({type(err).__name__}{': ' + text if text else ''})"
    return text


def check_affine_matrix(matrix: np.ndarray, what: str = "argument 'matrix'") -> np.ndarray:
    """``matrix`` as a float64 ``(4, 4)`` affine map, or a ``ValueError`` naming ``what`` and the problem.

    Refused: another shape, NaN/inf, a last row other than ``0 0 0 1`` (a projective map), and a
    singular linear part (it would fold the image onto a plane or a point).
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.shape != (4, 4):
        raise ValueError(f"{what} is not a 4x4 matrix: got shape {matrix.shape}")
    if not np.isfinite(matrix).all():
        raise ValueError(f"{what} holds NaN or infinite values")
    if not np.allclose(matrix[3], [0, 0, 0, 1], atol=1e-6):
        row = " ".join(f"{v:.3g}" for v in matrix[3])
        raise ValueError(f"{what} is not an affine matrix: its last row is '{row}', not '0 0 0 1'")
    singular = np.linalg.svd(matrix[:3, :3], compute_uv=False)
    if not singular.min() > 1e-6 * max(float(singular.max()), 1e-12):
        rank = int((singular > 1e-6 * singular.max()).sum())
        raise ValueError(f"{what} is singular (its linear part has rank {rank} of 3): it would collapse the image "
                         "onto a plane, a line or a point; the matrix must be invertible")
    return matrix


def _read_itk(path: Path, ndim: int | None = None) -> np.ndarray:
    """A 4x4 LPS matrix (fixed -> moving) from an ITK transform file with one affine-like transform
    (of ``ndim`` dimensions, or 3 for 2D images: a 3D transform may act in their plane)."""
    import SimpleITK as sitk

    transform = sitk.ReadTransform(str(path))
    if transform.GetName() == "CompositeTransform":
        transform = sitk.CompositeTransform(transform)
        if transform.GetNumberOfTransforms() != 1:
            raise ValueError(f"it holds {transform.GetNumberOfTransforms()} transforms; expected one affine")
        transform = transform.GetNthTransform(0)
    if ndim is not None and transform.GetDimension() < ndim:
        raise ValueError(f"it holds a {transform.GetDimension()}D transform but the images are {ndim}D")
    ndim = transform.GetDimension()
    try:
        affine = sitk.AffineTransform(transform)
    except RuntimeError:
        raise ValueError(f"it holds a {transform.GetName()}, not an affine transform") from None
    a = np.array(affine.GetMatrix(), dtype=np.float64).reshape(ndim, ndim)
    center = np.array(affine.GetCenter(), dtype=np.float64)
    translation = np.array(affine.GetTranslation(), dtype=np.float64)
    out = np.eye(4)
    out[:ndim, :ndim] = a
    out[:ndim, 3] = translation + center - a @ center  # T(p) = A (p - c) + c + t
    return out
