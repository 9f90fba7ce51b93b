"""Transforms in the formats other tools read and write (ITK/ANTs, FSL, FreeSurfer).

Every transform here maps **fixed-image points to moving-image points** (the direction that
``antsApplyTransforms``, SimpleITK's ``Resample`` and morphreg's pull-back warp all use):

- ITK/ANTs displacement field (:mod:`.itk_field`): NIfTI vector image on the fixed grid, shape
  ``(X, Y, Z, 1, 3)`` (2D: ``(X, Y, 1, 1, 2)``), intent 1007, vectors in **LPS millimetres**.
- matrices (:mod:`.matrices`): ITK ``.mat``/``.txt``/``.tfm`` (LPS mm, SimpleITK's writer),
  FSL FLIRT (FSL's scaled-voxel frame; needs both images) and FreeSurfer LTA (through
  nitransforms), and morphreg's plain RAS 4x4 text.
"""

from .itk_field import load_itk_warp, save_itk_warp
from .matrices import MATRIX_FORMATS, load_matrix, save_matrix

__all__ = ["MATRIX_FORMATS", "load_itk_warp", "load_matrix", "save_itk_warp", "save_matrix"]
