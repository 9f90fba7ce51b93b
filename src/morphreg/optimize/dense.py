"""Dense instance optimisation: one displacement or velocity field fitted to one pair.

The objective is the training loss of VoxelMorph, ``L_sim(fixed, moving ∘ φ) + λ L_smooth``,
minimised directly over the field with Adam, coarse to fine: at each pyramid level the images
are resampled (anti-aliased, corner-aligned grids) and the field from the previous level is
brought up with :func:`morphreg.spatial.resize` (which rescales its vectors).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, NamedTuple

import torch
from torch import nn

from .. import losses, spatial
from .._checks import check_choice, check_field, check_positive_int, check_tensor
from ._common import (
    LossFn,
    check_lr,
    check_same_grid_pair,
    check_weight,
    downsample,
    fit_tensor,
    level_plan,
    resolve_loss,
)

__all__ = ["DenseResult", "REGULARISERS", "register_dense", "refine_network_prediction"]

REGULARISERS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "grad": losses.grad_loss,
    "bending": losses.bending_loss,
}


class DenseResult(NamedTuple):
    """Result of :func:`register_dense` (the same fields whatever the options).

    Attributes:
        disp: ``(B, ndim, *spatial)`` displacement in voxels; ``warp(moving, disp) == moved``.
        moved: ``(B, C, *spatial)`` the warped moving image.
        velocity: ``(B, ndim, *spatial)`` the optimised stationary velocity when
            ``velocity=True`` (``disp = integrate(velocity, int_steps)``), else ``None``.
        loss_history: total loss at every iteration, coarse levels first.
    """

    disp: torch.Tensor
    moved: torch.Tensor
    velocity: torch.Tensor | None
    loss_history: list[float]


def _check_init(fn: str, name: str, field: object, fixed: torch.Tensor, any_size: bool) -> torch.Tensor | None:
    if field is None:
        return None
    field = check_tensor(fn, name, field)
    ndim = check_field(fn, name, field, spatial=None if any_size else fixed.shape[2:])
    if ndim != fixed.dim() - 2:
        raise ValueError(
            f"{fn}: argument '{name}' is a {ndim}D field but the images are "
            f"{fixed.dim() - 2}D (shapes {tuple(field.shape)} and {tuple(fixed.shape)})"
        )
    if field.shape[0] not in (1, fixed.shape[0]):
        raise ValueError(f"{fn}: argument '{name}' has batch size {field.shape[0]}, expected 1 or {fixed.shape[0]}")
    if not torch.isfinite(field).all():
        raise ValueError(f"{fn}: argument '{name}' contains NaN or inf")
    field = field.detach().to(fixed.device, fixed.dtype)
    return field.expand(fixed.shape[0], *field.shape[1:])


def register_dense(
    moving: torch.Tensor,
    fixed: torch.Tensor,
    *,
    loss: str | LossFn = "ncc",
    weight: float = losses.DEFAULT_WEIGHT["ncc"],
    regulariser: str = "grad",
    velocity: bool = False,
    int_steps: int = 7,
    levels: int = 3,
    iterations: int | Sequence[int] = 100,
    lr: float = 0.1,
    init_disp: torch.Tensor | None = None,
    init_velocity: torch.Tensor | None = None,
) -> DenseResult:
    """Fit a dense field to one pair: ``min_u L_sim(warp(moving, φ_u), fixed) + λ R(u)``.

    Args:
        moving, fixed: ``(B, C, *spatial)`` with the same channels and spatial shape (batch 1
            broadcasts). Align them affinely first (:func:`register_affine`) if needed.
        loss: similarity, ``"ncc"`` (local, window 9; VoxelMorph's), ``"mse"``, ``"gncc"``,
            ``"mi"``, or a callable ``(moved, fixed) -> scalar``.
        weight: λ of the regulariser; :data:`morphreg.losses.DEFAULT_WEIGHT` gives the usual one
            per similarity (VoxelMorph's: 1 for NCC, 0.01 for MSE on [0, 1] intensities).
        regulariser: ``"grad"`` (diffusion, ‖∇u‖²) or ``"bending"`` (bending energy),
            applied to the optimised field (the velocity when ``velocity=True``).
        velocity: optimise a stationary velocity field, ``disp = integrate(v, int_steps)``
            (diffeomorphic), instead of the displacement itself.
        int_steps: scaling-and-squaring steps when ``velocity=True``.
        levels: pyramid levels (each halves the size; levels whose smallest side would fall
            below 16 voxels are skipped).
        iterations: Adam iterations per level, coarse to fine (an int is used for all).
        lr: Adam step in voxels of the current level (cosine-decayed to a tenth per level).
        init_disp: ``(B, ndim, *spatial)`` starting displacement, e.g. a network's prediction
            (``velocity=False`` only; give ``init_velocity`` for a diffeomorphic start).
        init_velocity: ``(B, ndim, *s)`` starting velocity, at any resolution ``s`` (it is
            resized); with ``velocity=False`` it is integrated into a starting displacement
            (``int_steps`` squarings, at least 7).

    Returns:
        :class:`DenseResult`; inputs are not modified and nothing outside the new field is
        optimised.
    """
    fn = "morphreg.optimize.register_dense"
    moving, fixed = check_same_grid_pair(fn, moving, fixed)
    similarity = resolve_loss(fn, loss)
    weight = check_weight(fn, weight)
    check_choice(fn, "regulariser", regulariser, list(REGULARISERS))
    regularise = REGULARISERS[regulariser]
    if not isinstance(velocity, bool):
        raise TypeError(f"{fn}: argument 'velocity' must be a bool, got {type(velocity).__name__}")
    check_positive_int(fn, "int_steps", int_steps, minimum=0 if not velocity else 1)
    plan = level_plan(fn, fixed.shape[2:], levels, iterations)
    lr = check_lr(fn, lr)
    if init_disp is not None and init_velocity is not None:
        raise ValueError(f"{fn}: give at most one of 'init_disp' and 'init_velocity'")
    if init_disp is not None and velocity:
        raise ValueError(
            f"{fn}: argument 'init_disp' cannot start a velocity optimisation (velocity=True); "
            "pass the network's velocity as 'init_velocity' instead"
        )
    start = _check_init(fn, "init_disp", init_disp, fixed, any_size=False)
    start_v = _check_init(fn, "init_velocity", init_velocity, fixed, any_size=True)
    if start_v is not None:
        start = (
            start_v if velocity else spatial.resize(spatial.integrate(start_v, max(int_steps, 7)), size=fixed.shape[2:])
        )

    if regulariser == "bending" and min(plan[0][0]) < 3:
        raise ValueError(f"{fn}: regulariser='bending' needs every spatial size >= 3")

    def to_disp(field: torch.Tensor) -> torch.Tensor:
        return spatial.integrate(field, int_steps) if velocity else field

    def objective(param: torch.Tensor, moving_l: torch.Tensor, fixed_l: torch.Tensor) -> torch.Tensor:
        moved = spatial.warp(moving_l, to_disp(param))
        return similarity(moved, fixed_l) + weight * regularise(param)

    history: list[float] = []
    first = plan[0][0]
    field = start if start is not None else fixed.new_zeros(fixed.shape[0], len(first), *first)
    for shape, steps in plan:
        field = spatial.resize(field, size=shape)
        level = partial(objective, moving_l=downsample(moving, shape), fixed_l=downsample(fixed, shape))
        field = fit_tensor(field, level, steps, lr, history)

    with torch.no_grad():
        disp = to_disp(field)
        moved = spatial.warp(moving, disp)
    return DenseResult(disp, moved, field if velocity else None, history)


def refine_network_prediction(
    model: nn.Module,
    moving: torch.Tensor,
    fixed: torch.Tensor,
    *,
    iterations: int | Sequence[int] = 100,
    levels: int = 1,
    **options: Any,
) -> DenseResult:
    """Instance-specific optimisation starting from a network's prediction.

    The network is run once (in eval mode, without gradients; its training flag is restored
    afterwards) and its field becomes the starting point of :func:`register_dense`. Only a
    copy of that field is optimised: the model's weights, gradients and mode are left exactly
    as they were (no fine-tuning).

    Args:
        model: a registration network ``model(moving, fixed)`` returning an object with
            ``.disp`` and optionally ``.velocity`` (e.g. :class:`morphreg.models.VxmDense`).
            A diffeomorphic model (``velocity`` not ``None``) is refined in velocity space with
            its ``int_steps``.
        moving, fixed: ``(B, C, *spatial)``.
        iterations, levels: as in :func:`register_dense` (default: 100 iterations at full
            resolution).
        **options: any other keyword of :func:`register_dense` (``loss``, ``weight``,
            ``regulariser``, ``lr``); ``init_disp``, ``init_velocity``, ``velocity`` and
            ``int_steps`` come from the network.

    Returns:
        :class:`DenseResult`.
    """
    fn = "morphreg.optimize.refine_network_prediction"
    if not isinstance(model, nn.Module):
        raise TypeError(f"{fn}: argument 'model' must be a torch.nn.Module, got {type(model).__name__}")
    reserved = {"init_disp", "init_velocity", "velocity", "int_steps"} & set(options)
    if reserved:
        raise ValueError(f"{fn}: {sorted(reserved)} are taken from the network's output; do not pass them")
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            output = model(moving, fixed)
    finally:
        model.train(was_training)
    disp = getattr(output, "disp", None)
    if not isinstance(disp, torch.Tensor):
        raise TypeError(
            f"{fn}: argument 'model' must return an object with a 'disp' tensor (such as "
            f"RegistrationOutput), got {type(output).__name__}"
        )
    velocity = getattr(output, "velocity", None)
    if isinstance(velocity, torch.Tensor):
        steps = int(getattr(model, "int_steps", 7))
        return register_dense(
            moving,
            fixed,
            velocity=True,
            int_steps=steps,
            init_velocity=velocity.detach(),
            iterations=iterations,
            levels=levels,
            **options,
        )
    return register_dense(moving, fixed, init_disp=disp.detach(), iterations=iterations, levels=levels, **options)
