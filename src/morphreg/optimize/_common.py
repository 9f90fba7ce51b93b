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
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

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


@contextmanager
def one_thread() -> Iterator[None]:
    """Run the block on one intra-op torch thread, restoring the count afterwards.

    For loops of small tensor ops (a few thousand points per op), which a second thread only
    slows down: each op's parallel region waits for every thread, and on a shared machine one of
    them is often descheduled. 100 sampled affine iterations (8192 points) took 1.0 s at 1
    thread and 6.3 s at 2 threads with a load of 6 on 2 cores. The count is process-wide.
    """
    threads = torch.get_num_threads()
    if threads > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if threads > 1:
            torch.set_num_threads(threads)


class Adam:
    """Adam (Kingma & Ba) on a list of tensors: the update of ``torch.optim.Adam(params, lr)`` with its
    defaults (betas 0.9/0.999, eps 1e-8, no weight decay; its single-tensor code path, step for step).

    Written out because ``torch.optim.Optimizer`` imports ``torch._dynamo`` on first use, 0.7-2.8 s
    of a 3D affine registration of 1-3 s on this machine (``docs/results/affine3d.md``).
    ``lr`` may be changed between steps.
    """

    betas = (0.9, 0.999)
    eps = 1e-8

    def __init__(self, params: Sequence[torch.Tensor], lr: float) -> None:
        self.params = list(params)
        self.lr = lr
        self.steps = 0
        self.exp_avg = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]

    @torch.no_grad()
    def step(self) -> None:
        """One update of every parameter that has a gradient."""
        self.steps += 1
        beta1, beta2 = self.betas
        correction1 = 1.0 - beta1**self.steps
        correction2_sqrt = math.sqrt(1.0 - beta2**self.steps)
        for param, avg, avg_sq in zip(self.params, self.exp_avg, self.exp_avg_sq):
            if param.grad is None:
                continue
            grad = param.grad
            avg.lerp_(grad, 1.0 - beta1)
            avg_sq.mul_(beta2).addcmul_(grad, grad.conj(), value=1.0 - beta2)
            denom = (avg_sq.sqrt() / correction2_sqrt).add_(self.eps)
            param.addcdiv_(avg, denom, value=-self.lr / correction1)

    def zero_grad(self) -> None:
        for param in self.params:
            param.grad = None


def run_adam(
    params: list[torch.Tensor],
    objective: Callable[[], torch.Tensor],
    iterations: int,
    lr: float,
    history: list[float],
    final_lr_ratio: float = 0.1,
    on_step: Callable[[int, float], None] | None = None,
    average_last: int = 0,
) -> None:
    """Minimise ``objective()`` with :class:`Adam`, cosine-decaying the lr to ``final_lr_ratio`` of ``lr``.

    Appends the loss of every iteration to ``history`` (evaluated before the step) and calls
    ``on_step(iteration, loss)`` after each step when given. ``average_last > 0`` leaves the
    parameters at their mean over the last ``average_last`` steps (iterate averaging: for a noisy,
    sampled objective).

    Raises:
        FloatingPointError: the loss is NaN or infinite (the optimisation diverged, e.g. for a
            huge weight or learning rate). It is checked before ``backward()``: torch's CPU
            ``grid_sample`` backward crashes the process on NaN sampling coordinates.
    """
    if iterations == 0:
        return
    optimizer = Adam(params, lr=lr)
    average = min(average_last, iterations)
    sums = [torch.zeros_like(p) for p in params] if average else []
    for it in range(iterations):
        ratio = final_lr_ratio + (1.0 - final_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * it / max(iterations - 1, 1)))
        optimizer.lr = lr * ratio
        optimizer.zero_grad()
        loss = objective()
        if not bool(torch.isfinite(loss.detach())):
            raise FloatingPointError(
                f"the optimisation diverged: its loss became {float(loss.detach()):g} at iteration {it + 1} of "
                f"{iterations} (lr {lr:g}); lower the regularisation weight or the learning rate"
            )
        loss.backward()
        optimizer.step()
        history.append(float(loss.detach()))
        if it >= iterations - average:
            with torch.no_grad():
                for total, param in zip(sums, params):
                    total.add_(param)
        if on_step is not None:
            on_step(it, history[-1])
    with torch.no_grad():
        for total, param in zip(sums, params):
            param.copy_(total / average)
