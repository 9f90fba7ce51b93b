"""Private helpers shared by the optimisers: loss lookup, per-level settings, image pyramid, Adam.

The one Adam loop (:func:`run_adam`, :func:`fit_tensor` for a single tensor) and the one loss
resolver (:func:`resolve_loss`) of :mod:`morphreg.optimize`; the validation of the moving/fixed
pair is :func:`morphreg._checks.check_pair` (+ :func:`broadcast_pair` here).

Pyramid convention (the same as :func:`morphreg.spatial.resize`): level grids are matched to the
full-resolution grid at the corners (``align_corners=True``), so level voxel ``x_l`` along axis
``k`` sits at full-resolution voxel ``x_l * (n_k - 1) / (m_k - 1)``. Fields resized with
``spatial.resize`` and images built by :func:`downsample` therefore share one geometry.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from .. import losses
from .._checks import check_choice, check_number, check_pair, check_positive_int
from ..spatial import TORCH_LINEAR
from ._filters import gaussian_blur

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

#: ``progress(level, n_levels, iteration, n_iterations, loss, elapsed_s)``, called after every iteration.
ProgressFn = Callable[[int, int, int, int, float, float], None]

MIN_LEVEL_SIZE = 16


def resolve_loss(fn: str, loss: str | LossFn) -> LossFn:
    """A similarity ``(moved, fixed) -> scalar`` from a name in :data:`morphreg.losses.LOSSES`."""
    if isinstance(loss, str):
        check_choice(fn, "loss", loss, losses.LOSSES)
        return losses.similarity_loss(loss)
    if callable(loss):
        return loss
    names = ", ".join(repr(name) for name in losses.LOSSES)
    raise TypeError(
        f"{fn}: argument 'loss' must be a loss name ({names}) or a callable "
        f"(moved, fixed) -> scalar tensor, got {type(loss).__name__}"
    )


def broadcast_pair(moving: torch.Tensor, fixed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Expand a batch of 1 to the other's batch and cast ``moving`` to ``fixed``'s dtype.

    For a pair already checked by :func:`morphreg._checks.check_pair` (``match="grid"`` or
    ``"channels"``): ``(B_m, C, *s_m)``, ``(B_f, C, *s_f)`` -> batch ``max(B_m, B_f)`` each.
    """
    batch = max(moving.shape[0], fixed.shape[0])
    return (
        moving.expand(batch, *moving.shape[1:]).to(fixed.dtype),
        fixed.expand(batch, *fixed.shape[1:]),
    )


def check_same_grid_pair(fn: str, moving: object, fixed: object) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate a same-grid image pair (:func:`check_pair`) and :func:`broadcast_pair` it."""
    check_pair(fn, moving, fixed, match="grid")
    return broadcast_pair(moving, fixed)  # type: ignore[arg-type]


def per_level(fn: str, name: str, value: int | Sequence[int], levels: int) -> list[int]:
    """One positive int per level (coarse to fine): an int is repeated, a sequence must fit."""
    if isinstance(value, int) and not isinstance(value, bool):
        values = [value] * levels
    elif isinstance(value, Sequence) and not isinstance(value, str):
        values = list(value)
        if len(values) != levels:
            raise ValueError(
                f"{fn}: argument '{name}' must be an int or have one entry per level "
                f"(levels={levels}), got {len(values)} entries: {tuple(values)}"
            )
    else:
        raise ValueError(f"{fn}: argument '{name}' must be an int or a sequence of ints, got {value!r}")
    for v in values:
        check_positive_int(fn, name, v, minimum=0)
    return values


def check_lr(fn: str, lr: float) -> float:
    """Raise unless ``lr`` is a finite positive number."""
    return check_number(fn, "lr", lr, minimum=0, exclusive_minimum=True)


def check_weight(fn: str, weight: float) -> float:
    """Raise unless ``weight`` is a finite number >= 0."""
    return check_number(fn, "weight", weight, minimum=0)


def level_plan(
    fn: str, shape: Sequence[int], levels: int, iterations: int | Sequence[int]
) -> list[tuple[list[int], int]]:
    """Validate ``levels`` and ``iterations``; ``(spatial shape, iterations)`` per level, coarse to fine.

    The levels are :func:`level_shapes` (too small ones left out); ``iterations`` gives one
    entry per requested level, and the entries of the left-out (coarsest) levels are dropped.
    """
    check_positive_int(fn, "levels", levels)
    iters = per_level(fn, "iterations", iterations, levels)
    shapes = level_shapes(shape, levels)
    return list(zip(shapes, iters[len(iters) - len(shapes) :]))


def level_shapes(shape: Sequence[int], levels: int) -> list[list[int]]:
    """Spatial shapes of a ``levels``-level pyramid, coarse to fine (last = ``shape``).

    Level ``l`` (0 = full resolution) has ``round(n / 2**l)`` voxels per axis. Levels whose
    smallest side would fall below ``MIN_LEVEL_SIZE`` (16) voxels are left out, so small images
    simply use fewer levels.
    """
    shapes = []
    for level in range(levels):
        factor = 2**level
        new = [max(1, round(int(s) / factor)) for s in shape]
        if level > 0 and min(new) < MIN_LEVEL_SIZE:
            break
        shapes.append(new)
    return shapes[::-1]


def downsample(image: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Anti-aliased resampling of ``(B, C, *spatial)`` to ``shape`` (corner-aligned grids).

    Each axis shrunk by a factor ``f > 1`` is first blurred with a Gaussian of sigma ``f / 2``.
    """
    ndim = image.dim() - 2
    old = list(image.shape[2:])
    new = [int(s) for s in shape]
    if new == old:
        return image
    factors = [(o - 1) / (n - 1) if n > 1 else float(o) for o, n in zip(old, new)]
    blurred = gaussian_blur(image, [f / 2.0 if f > 1.0 else 0.0 for f in factors])
    return F.interpolate(blurred, size=new, mode=TORCH_LINEAR[ndim], align_corners=True)


def pyramid(image: torch.Tensor, shapes: Sequence[Sequence[int]]) -> list[torch.Tensor]:
    """``image`` at each of ``shapes`` (coarse to fine), each level :func:`downsample`-d from the
    next finer one (cheaper than from full resolution; the blurs compound to about the same)."""
    levels = []
    current = image
    for shape in reversed(shapes):
        current = downsample(current, shape)
        levels.append(current)
    return levels[::-1]


def level_scale(old: Sequence[int], new: Sequence[int]) -> list[float]:
    """Full-resolution voxels per level voxel along each axis (corner-aligned grids)."""
    return [(o - 1) / (n - 1) if n > 1 else 1.0 for o, n in zip(old, new)]


def fit_tensor(
    start: torch.Tensor,
    objective: Callable[[torch.Tensor], torch.Tensor],
    iterations: int,
    lr: float,
    history: list[float],
) -> torch.Tensor:
    """Minimise ``objective(param)`` over one tensor from ``start`` with :func:`run_adam`.

    Only a detached copy of ``start`` is optimised; returns the (detached) result.
    """
    param = start.detach().clone().requires_grad_(True)
    run_adam([param], lambda: objective(param), iterations, lr, history)
    return param.detach()


def run_adam(
    params: list[torch.Tensor] | list[dict],
    objective: Callable[[], torch.Tensor],
    iterations: int,
    lr: float,
    history: list[float],
    final_lr_ratio: float = 0.1,
    on_step: Callable[[int, float], None] | None = None,
) -> None:
    """Minimise ``objective()`` with Adam, cosine-decaying every group's lr to ``final_lr_ratio``.

    Appends the loss of every iteration to ``history`` (evaluated before the step) and calls
    ``on_step(iteration, loss)`` after each step when given.

    Raises:
        FloatingPointError: the loss is NaN or infinite (the optimisation diverged, e.g. for a
            huge weight or learning rate). It is checked before ``backward()``: torch's CPU
            ``grid_sample`` backward crashes the process on NaN sampling coordinates.
    """
    if iterations == 0:
        return
    optimizer = torch.optim.Adam(params, lr=lr)
    base = [group["lr"] for group in optimizer.param_groups]
    for it in range(iterations):
        ratio = final_lr_ratio + (1.0 - final_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * it / max(iterations - 1, 1)))
        for group, lr0 in zip(optimizer.param_groups, base):
            group["lr"] = lr0 * ratio
        optimizer.zero_grad(set_to_none=True)
        loss = objective()
        if not bool(torch.isfinite(loss.detach())):
            raise FloatingPointError(
                f"the optimisation diverged: its loss became {float(loss.detach()):g} at iteration {it + 1} of "
                f"{iterations} (lr {lr:g}); lower the regularisation weight or the learning rate"
            )
        loss.backward()
        optimizer.step()
        history.append(float(loss.detach()))
        if on_step is not None:
            on_step(it, history[-1])
