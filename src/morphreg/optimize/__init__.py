"""Optimisation-based registration on morphreg's functional core (no network needed).

* :func:`register_affine` — translation / rigid / similarity / affine, multi-resolution,
  moments initialisation (:mod:`.moments`), voxel and world matrices (:mod:`.affine`;
  :func:`matrix_to_world` lives in :mod:`morphreg.geometry`).
* :func:`register_dense` — dense displacement or stationary-velocity field fitted to one pair
  with the training loss; :func:`refine_network_prediction` starts it from a network's output
  without touching the network (:mod:`.dense`).
* :func:`register_greedy` — greedy diffeomorphic local-NCC registration with compositive,
  Gaussian-smoothed updates and its inverse; the default of ``register --method dense``
  (:mod:`.greedy`).
* :func:`register_ffd` — cubic B-spline free-form deformation with bending energy (:mod:`.ffd`).
* :func:`tre`, :func:`fit_tps`, :func:`fit_affine` — landmarks (:mod:`.landmarks`).

All follow morphreg's conventions: images ``(B, C, *spatial)``, fields ``(B, ndim, *spatial)`` in
voxels (ij order), pull-back warping ``moved(x) = moving(x + disp(x))``, 2D and 3D by one code
path, results as NamedTuples whose fields never depend on the options.
"""

from ..geometry import matrix_to_world
from .affine import AFFINE_INITS, AFFINE_TRANSFORMS, AffineResult, moments_init, register_affine
from .dense import REGULARISERS, DenseResult, refine_network_prediction, register_dense
from .ffd import (
    FFDResult,
    bspline_disp,
    bspline_kernel,
    control_grid_shape,
    refine_control_points,
    register_ffd,
)
from .greedy import GREEDY_PRESETS, GreedyResult, invert_disp, register_greedy
from .landmarks import ThinPlateSpline, fit_affine, fit_tps, tps_kernel, tre
from .moments import centre_of_mass

__all__ = [
    "AFFINE_INITS",
    "AFFINE_TRANSFORMS",
    "AffineResult",
    "DenseResult",
    "FFDResult",
    "GREEDY_PRESETS",
    "GreedyResult",
    "REGULARISERS",
    "ThinPlateSpline",
    "bspline_disp",
    "bspline_kernel",
    "centre_of_mass",
    "control_grid_shape",
    "fit_affine",
    "fit_tps",
    "invert_disp",
    "matrix_to_world",
    "moments_init",
    "refine_control_points",
    "refine_network_prediction",
    "register_affine",
    "register_dense",
    "register_ffd",
    "register_greedy",
    "tps_kernel",
    "tre",
]
