"""Registrations as objects: networks, classical methods and their compositions.

Every registration here is a callable ``(moving, fixed) -> RegistrationOutput`` on ``(1, C,
*spatial)`` float tensors of one grid (the fixed image's), and always returns the same fields:

* ``disp``: ``(1, ndim, *spatial)`` displacement in voxels, ``moved = spatial.warp(moving, disp)``;
* ``matrix``: ``(1, ndim, ndim + 1)`` voxel matrix (fixed voxel -> moving voxel) of the affine part,
  wherever the registration has one (affine/rigid, an affine model, ``AffineThen``, an initial
  matrix), else ``None``; :func:`world_matrix` turns it into a world (RAS mm) matrix;
* ``inverse_disp``: the inverse field where the method gives it for free (a velocity network's
  ``exp(-v)``, the greedy method's own inverse), else ``None``;
* ``moved``: left ``None`` by the compositions: :func:`morphreg.workflows.files.register_pair`
  warps the original intensities once, with the final field.

Compositions return one displacement (the first transform, then the second:
``spatial.compose``), so the moving image is interpolated once. The network is never modified.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .. import optimize, spatial
from ..geometry import homogeneous, matrix_to_world
from ..losses import DEFAULT_WEIGHT
from ..models import RegistrationOutput

#: A registration: ``(moving, fixed) -> RegistrationOutput`` on ``(1, C, *spatial)`` tensors.
Registration = Callable[[torch.Tensor, torch.Tensor], RegistrationOutput]

#: ``progress(level, n_levels, iteration, n_iterations, loss, elapsed_seconds)``.
ProgressFn = Callable[[int, int, int, int, float, float], None]

#: Default similarity of each classical method.
DEFAULT_LOSS = {"affine": "auto", "rigid": "auto", "dense": "ncc", "ffd": "ncc"}
CLASSICAL_METHODS = ("affine", "rigid", "dense", "ffd")


def as_output(disp: torch.Tensor, *, matrix: torch.Tensor | None = None,
              inverse_disp: torch.Tensor | None = None) -> RegistrationOutput:
    """A :class:`RegistrationOutput` of a field (``moved`` left to the caller)."""
    return RegistrationOutput(moved=None, disp=disp, velocity=None, inverse_disp=inverse_disp, moved_fixed=None,
                              matrix=matrix)


def world_matrix(matrix: torch.Tensor, grid_affine: np.ndarray) -> np.ndarray:
    """``(4, 4)`` world (RAS mm) matrix, fixed point -> moving point, of a voxel ``matrix``.

    ``matrix`` is ``(1, ndim, ndim + 1)`` on a grid whose voxel -> world affine is ``grid_affine``
    (``(4, 4)``; both images live on it once the moving image is resampled onto the fixed grid).
    """
    return matrix_to_world(matrix, grid_affine, grid_affine)[0].numpy()  # a 2D matrix is lifted to 4x4


def _chain(first: torch.Tensor | None, second: torch.Tensor | None) -> torch.Tensor | None:
    """Voxel matrix of ``second`` applied after ``first`` (points: ``first(second(x))``); ``None`` if either is."""
    if first is None or second is None:
        return None
    ndim = first.shape[-2]
    first64, second64 = (m.detach().to("cpu", torch.float64) for m in (first, second))
    return (homogeneous(first64) @ homogeneous(second64))[:, :ndim].float()


class NetworkRegistration:
    """A trained network in inference mode on ``device``.

    ``inverse=True`` adds ``exp(-v)`` for diffeomorphic networks that do not return their inverse
    (one more integration: asked for only when an inverse warp is written). ``precision="bf16"``
    runs the U-Net in bfloat16 (:meth:`morphreg.models.VxmDense.set_precision`).
    """

    def __init__(self, model: torch.nn.Module, device: torch.device, *, inverse: bool = False,
                 precision: str = "float32") -> None:
        self.model = model.to(device).eval()
        if hasattr(self.model, "set_precision"):
            self.model.set_precision(precision)
        elif precision != "float32":
            raise ValueError(f"`precision` {precision!r} needs a deformable network; {type(model).__name__} "
                             "runs in float32 only")
        self.device = device
        self.inverse = inverse

    def __call__(self, moving: torch.Tensor, fixed: torch.Tensor) -> RegistrationOutput:
        with torch.inference_mode():
            output = self.model(moving.to(self.device), fixed.to(self.device))
            if self.inverse and output.inverse_disp is None and output.velocity is not None:
                output = output._replace(inverse_disp=self._velocity_inverse(output.velocity, moving.shape[2:]))
        return output

    def _velocity_inverse(self, velocity: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
        """``exp(-v)``, as the forward pass makes ``exp(v)``: ``(B, ndim, *shape)`` in voxels."""
        from ..models.layers import crop_to

        model: Any = self.model
        padded = [size * model.int_downsize for size in velocity.shape[2:]]
        inverse = spatial.resize(spatial.integrate(-velocity, model.int_steps), size=padded)
        return crop_to(inverse, list(shape))


@dataclass
class AffineRegistration:
    """Optimisation-based ``transform`` alignment (:func:`morphreg.optimize.register_affine`).

    ``grid_affine``: the voxel -> world affine of the (common) grid, so rigid and similarity
    transforms are rigid in millimetres on anisotropic grids.
    """

    transform: str = "affine"
    loss: str = "auto"
    grid_affine: np.ndarray | None = None
    progress: ProgressFn | None = None

    def __call__(self, moving: torch.Tensor, fixed: torch.Tensor) -> RegistrationOutput:
        result = optimize.register_affine(moving, fixed, transform=self.transform, loss=self.loss,
                                          moving_affine=self.grid_affine, fixed_affine=self.grid_affine,
                                          progress=self.progress)
        return as_output(result.disp, matrix=result.matrix_voxel)


@dataclass
class GreedyRegistration:
    """Greedy diffeomorphic local-NCC registration (:func:`morphreg.optimize.register_greedy`),
    with its own inverse when ``inverse`` (about a third more time in 3D: ask only when needed)."""

    levels: int = 3
    iterations: tuple[int, ...] = (100, 50, 8)
    progress: ProgressFn | None = None
    inverse: bool = False

    def __call__(self, moving: torch.Tensor, fixed: torch.Tensor) -> RegistrationOutput:
        result = optimize.register_greedy(moving, fixed, levels=self.levels, iterations=self.iterations,
                                          inverse=self.inverse, progress=self.progress)
        return as_output(result.disp, inverse_disp=result.inverse_disp)


@dataclass
class FieldOptimisation:
    """``method`` ``"dense"`` (a stationary velocity fitted with Adam: the same Dice as a displacement
    on OASIS 2D, without folding) or ``"ffd"`` (cubic B-splines), with ``loss`` + ``weight`` x smoothness."""

    method: str
    loss: str = "ncc"
    weight: float = 1.0

    def __call__(self, moving: torch.Tensor, fixed: torch.Tensor) -> RegistrationOutput:
        if self.method == "dense":
            return as_output(optimize.register_dense(moving, fixed, loss=self.loss, weight=self.weight,
                                                     velocity=True).disp)
        return as_output(optimize.register_ffd(moving, fixed, loss=self.loss, weight=self.weight).disp)


@dataclass
class OnDevice:
    """``registration`` with its inputs moved to ``device`` first."""

    registration: Registration
    device: torch.device

    def __call__(self, moving: torch.Tensor, fixed: torch.Tensor) -> RegistrationOutput:
        return self.registration(moving.to(self.device), fixed.to(self.device))


@dataclass
class AffineThen:
    """``first`` (an affine registration), then ``then`` on the affinely moved image; one field."""

    first: Registration
    then: Registration

    def __call__(self, moving: torch.Tensor, fixed: torch.Tensor) -> RegistrationOutput:
        affine = self.first(moving, fixed)
        deformable = self.then(spatial.warp(moving, affine.disp), fixed)
        return as_output(spatial.compose(affine.disp, deformable.disp.to(affine.disp.device)), matrix=affine.matrix)


#: Methods that get the affine stage by default on 3D grids that differ (:func:`affine_by_default`).
AFFINE_FIRST_METHODS = ("dense", "ffd")


def affine_by_default(method: str, ndim: int, grids_differ: bool, *, initial: bool = False) -> bool:
    """Whether a registration runs the affine stage when the user did not say.

    Yes for a 3D deformable classical method (:data:`AFFINE_FIRST_METHODS`) on images whose grids
    differ (shape or voxel -> world affine: raw scans, a subject to a template) and no initial
    transform (``initial``: an initial matrix, warp or learned affine was given). Images on one
    grid come from one pipeline and are taken as roughly aligned; networks keep the alignment
    they were trained with; 2D slices are already cut in one plane.
    """
    return method in AFFINE_FIRST_METHODS and ndim == 3 and grids_differ and not initial


def with_affine(registration: Registration, grid_affine: np.ndarray, device: torch.device, *,
                progress: ProgressFn | None = None) -> AffineThen:
    """``registration`` after an optimised affine alignment on ``device`` (moments, then the
    multi-resolution pyramid of :func:`morphreg.optimize.register_affine`), composed into one field."""
    affine = AffineRegistration("affine", grid_affine=np.asarray(grid_affine), progress=progress)
    return AffineThen(OnDevice(affine, device), registration)


@dataclass
class Refine:
    """Instance-specific optimisation: ``iterations`` Adam steps of ``loss`` + ``weight`` x smoothness
    on the field of ``base`` (started from a copy of it; a network is never modified)."""

    base: Registration
    iterations: int
    loss: str = "ncc"
    weight: float | None = None

    def __call__(self, moving: torch.Tensor, fixed: torch.Tensor) -> RegistrationOutput:
        first = self.base(moving, fixed)
        start = first.disp.detach().clone()
        moving, fixed = moving.to(start.device), fixed.to(start.device)  # where the first field was made
        weight = DEFAULT_WEIGHT[self.loss] if self.weight is None else self.weight
        with torch.inference_mode(False), torch.enable_grad():
            refined = optimize.register_dense(moving, fixed, loss=self.loss, weight=weight, levels=1,
                                              iterations=self.iterations, init_disp=start).disp
        return as_output(refined, matrix=first.matrix)


@dataclass
class WithInitial:
    """``base`` started from an initial transform: ``init_disp`` ``(1, ndim, *spatial)`` voxels on
    the fixed grid, and its voxel matrix ``init_matrix`` when it is affine.

    The registration sees ``moving`` warped by the initial transform, and its result is composed
    after it (``c(x) = d(x) + d0(x + d(x))``); the matrix is the initial one followed by the found
    one where both exist.
    """

    base: Registration
    init_disp: torch.Tensor
    init_matrix: torch.Tensor | None = None

    def __call__(self, moving: torch.Tensor, fixed: torch.Tensor) -> RegistrationOutput:
        start = self.init_disp.to(moving.device, moving.dtype)
        found = self.base(spatial.warp(moving, start), fixed)
        return as_output(spatial.compose(start, found.disp.to(start.device)),
                         matrix=_chain(self.init_matrix, found.matrix))


@dataclass(frozen=True)
class GreedySchedule:
    """Levels and iterations per level (coarse to fine) of the greedy dense method."""

    levels: int = 3
    iterations: tuple[int, ...] = field(default=(100, 50, 8))

    @classmethod
    def from_options(cls, preset: str | None = None, levels: int | None = None,
                     iterations: Sequence[int] | None = None) -> GreedySchedule:
        """A ``preset`` (``fast``, the default, or ``accurate``), then overrides: ``iterations``
        without ``levels`` sets the number of levels to its length; ``levels`` alone keeps the
        preset's finest iterations."""
        settings = optimize.GREEDY_PRESETS[preset or "fast"]
        default = tuple(int(n) for n in settings["iterations"])  # type: ignore[attr-defined]
        if iterations is not None:
            return cls(levels or len(iterations), tuple(iterations))
        if levels is not None:
            return cls(levels, tuple(([default[0]] * levels + list(default))[-levels:]))
        return cls(int(settings["levels"]), default)  # type: ignore[call-overload]


def is_greedy(method: str, loss: str | None, weight: float | None) -> bool:
    """Whether ``method`` with these options runs the greedy method (dense, NCC, no explicit λ)."""
    return method == "dense" and (loss or "ncc") == "ncc" and weight is None


def classical_registration(
    method: str,
    *,
    loss: str | None = None,
    weight: float | None = None,
    grid_affine: np.ndarray | None = None,
    schedule: GreedySchedule | None = None,
    progress: ProgressFn | None = None,
    inverse: bool = False,
) -> Registration:
    """The optimisation-based registration ``method`` (``affine``, ``rigid``, ``dense``, ``ffd``).

    Args:
        loss: similarity (default per method: :data:`DEFAULT_LOSS`).
        weight: smoothness weight λ (default: the loss's :data:`morphreg.losses.DEFAULT_WEIGHT`).
            ``dense`` with NCC and no ``weight`` runs the greedy method; otherwise a velocity
            field fitted with Adam.
        grid_affine: voxel -> world ``(4, 4)`` of the common grid (affine and rigid).
        schedule: levels and iterations of the greedy method.
        progress: per-iteration callback of the affine, rigid and greedy methods.
        inverse: the greedy method also computes its inverse (``RegistrationOutput.inverse_disp``).
    """
    if method not in CLASSICAL_METHODS:
        raise ValueError(f"unknown registration method {method!r}; expected one of {', '.join(CLASSICAL_METHODS)}")
    loss_name = loss or DEFAULT_LOSS[method]
    if method in ("affine", "rigid"):
        return AffineRegistration(method, loss_name, grid_affine, progress)
    if is_greedy(method, loss, weight):
        schedule = schedule or GreedySchedule.from_options()
        return GreedyRegistration(schedule.levels, schedule.iterations, progress, inverse)
    return FieldOptimisation(method, loss_name, DEFAULT_WEIGHT[loss_name] if weight is None else weight)
