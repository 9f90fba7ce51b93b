"""Files in and out: the only package of morphreg that knows file formats.

One job per module:

* :mod:`.volume` -- the :class:`Volume` (array + 4x4 voxel-to-world affine + header): read, write,
  compare grids, convert to and from tensors.
* :mod:`.warp` -- displacement fields as NIfTI vector images that state their units.
* :mod:`.stack` -- stacks ``(N, *spatial)`` of images from one numpy file.
* :mod:`.outputs` -- output paths checked before any work; text written atomically.
* :mod:`.resample` -- resampling a volume onto another's grid.
* :mod:`.itk_warp`, :mod:`.matrices` -- ITK/ANTs displacement fields and affine matrices in other
  tools' formats (ITK, FSL, FreeSurfer LTA).
* :mod:`.label_table` -- structure names and colours from FreeSurfer LUT files.
* :mod:`.formats`, :mod:`.sanity`, :mod:`.nifti`, :mod:`.numpy_files`, :mod:`.sitk` -- the
  extensions, the checks every read makes, and the readers of each file family.

Formats, chosen by extension (case-insensitive):

* ``.nii``, ``.nii.gz`` (NIfTI-1, via nibabel): affine and header kept.
* ``.mgz``, ``.mgh`` (FreeSurfer, via nibabel): affine and header kept; no description field.
* ``.npy``, ``.npz`` (numpy): no geometry, read with an identity affine. ``.npz`` files are
  written with a single array under the key ``"vol"`` (voxelmorph's convention).
* PNG/JPEG/BMP/TIFF, NRRD, MetaImage and DICOM series folders are read through SimpleITK.

Every read failure raises :class:`ImageReadError` (a ``ValueError``) with a one-line message
naming the file and the problem; nibabel/numpy exceptions never escape.
"""

from .formats import SUPPORTED_EXTENSIONS, ImageReadError, PathLike, split_ext
from .itk_warp import load_itk_warp, save_itk_warp
from .label_table import BUILTIN_LABEL_TABLES, LabelTable, read_label_table
from .matrices import MATRIX_FORMATS, load_matrix, save_matrix
from .nifti import NIFTI_INTENT_VECTOR
from .outputs import check_output_path, same_path, save_text
from .resample import GRID_TOLERANCE_VOXELS, resample_to
from .stack import ImageStack, load_stack
from .volume import Volume, from_tensor, load_volume, same_grid, save_volume, to_tensor
from .warp import WARP_UNITS, WarpField, field_array, load_warp, save_warp

__all__ = [
    "BUILTIN_LABEL_TABLES",
    "GRID_TOLERANCE_VOXELS",
    "MATRIX_FORMATS",
    "NIFTI_INTENT_VECTOR",
    "SUPPORTED_EXTENSIONS",
    "ImageReadError",
    "ImageStack",
    "LabelTable",
    "PathLike",
    "Volume",
    "WarpField",
    "WARP_UNITS",
    "check_output_path",
    "field_array",
    "from_tensor",
    "load_itk_warp",
    "load_matrix",
    "load_stack",
    "load_volume",
    "load_warp",
    "read_label_table",
    "resample_to",
    "same_grid",
    "same_path",
    "save_itk_warp",
    "save_matrix",
    "save_text",
    "save_volume",
    "save_warp",
    "split_ext",
    "to_tensor",
]
