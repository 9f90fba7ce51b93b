"""Rigid / similarity / affine registration by multi-resolution gradient descent.

The transform maps a **fixed-image point to the moving-image point it samples** (pull-back, as
:func:`morphreg.spatial.affine_to_disp`): ``moved(x) = moving(M x)`` with ``M`` in voxel
coordinates, ``(B, ndim, ndim + 1)``.

It is optimised in *physical* coordinates given by the images' voxel-to-world affines (identity
when none is given), so a rigid transform is rigid in millimetres even for anisotropic voxels:
``M = F_m^{-1} T F_f`` with ``F`` the voxel-to-physical frames. ``T`` is written about the
fixed image's physical centre ``c`` and scaled by its radius ``r`` (a well-conditioned frame):
``T(p) = c + r * (L (p - c) / r + t)``. Parameters are zero-initialised increments around an
initial ``(L0, t0)`` and are scaled so that one unit moves the image's periphery by one voxel;
``lr`` is therefore a step in voxels of the current pyramid level.

Parametrisations (one code path for 2D and 3D):

* ``"translation"``: ``L = L0``, ``t = t0 + dt``.
* ``"rigid"``: ``L = R0 expm(skew(w))`` (``ndim (ndim - 1) / 2`` angles, radians).
* ``"similarity"``: ``L = s0 exp(a) R0 expm(skew(w))``.
* ``"affine"``: ``L = L0 + D`` (full matrix).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import NamedTuple

import torch
import torch.nn.functional as F

from .. import spatial
from .._checks import check_choice, check_matrix, check_pair, check_positive_int
from ..geometry import Frames, centred_frames, homogeneous, matrix_to_world, scale_matrix
from ._common import (
    LossFn,
    ProgressFn,
    broadcast_pair,
    check_lr,
    level_plan,
    level_scale,
    level_shapes,
    one_thread,
    pyramid,
    resolve_loss,
    run_adam,
)
from ._contrast import auto_loss
from ._sampled import SAMPLED_LOSSES, SampledLoss
from .moments import initial_transforms

__all__ = [
    "AffineResult",
    "AFFINE_TRANSFORMS",
    "AFFINE_INITS",
    "register_affine",
    "moments_init",
]

AFFINE_TRANSFORMS = ("translation", "rigid", "similarity", "affine")
AFFINE_INITS = ("moments", "com", "identity")

#: Default number of random points scoring a global similarity at each iteration (``samples``).
#: 2^13 with the parameters averaged over the second half of the finest level: on the OASIS 3D
#: pair (``register --method affine``) Dice seg35 0.4952/0.4969 against 0.4940/0.4919 with 2^15
#: and no averaging, at about a third of the time (2^13 without averaging: 0.4780/0.4921).
DEFAULT_SAMPLES = 2**13



class AffineResult(NamedTuple):
    """Result of :func:`register_affine` (the same fields whatever the options).

    Attributes:
        matrix_voxel: ``(B, ndim, ndim + 1)`` fixed voxel index -> moving voxel index (ij order),
            ready for :func:`morphreg.spatial.affine_to_disp`.
        matrix_world: ``(B, D + 1, D + 1)`` float64 on the CPU, fixed world point -> moving
            world point (``A_m M A_f^-1``), with ``D`` the dimension of the affines given
            (``ndim``; 3 for 2D images that came with 4x4 NIfTI affines). Equals
            ``matrix_voxel`` (made homogeneous) when no affines are given.
        disp: ``(B, ndim, *fixed_spatial)`` the dense displacement in voxels.
        moved: ``(B, C, *fixed_spatial)`` the moving image resampled on the fixed grid.
        loss_history: the loss at every iteration, coarse levels first.
        loss: the similarity optimised: its name (``"gncc"`` or ``"mi"`` where ``loss="auto"``
            chose), or ``"callable"``.
    """

    matrix_voxel: torch.Tensor
    matrix_world: torch.Tensor
    disp: torch.Tensor
    moved: torch.Tensor
    loss_history: list[float]
    loss: str


# --------------------------------------------------------------------------------------------
# parametrisation


def _skew(angles: torch.Tensor, n: int) -> torch.Tensor:
    rows, cols = torch.triu_indices(n, n, 1)
    s = angles.new_zeros(angles.shape[0], n, n)
    s[:, cols, rows] = angles
    s[:, rows, cols] = -angles
    return s


class _Params:
    """Zero-initialised increments around ``init`` (B, n+1, n+1) float64 in the normalised frame."""

    def __init__(
        self,
        fn: str,
        init: torch.Tensor,
        transform: str,
        unit: torch.Tensor,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        batch, n = init.shape[0], init.shape[-1] - 1
        self.n = n
        self.transform = transform
        self.unit = unit.to(device, dtype).view(batch, 1)  # normalised units per voxel
        linear = init[:, :n, :n]
        self.t0 = init[:, :n, n].to(device, dtype)
        if transform in ("rigid", "similarity"):
            u, s, vh = torch.linalg.svd(linear)
            rot = u @ vh
            if (torch.linalg.det(rot) < 0).any():
                raise ValueError(
                    f"{fn}: argument 'init' contains a reflection, which a {transform} "
                    "transform cannot represent; use transform='affine'"
                )
            scale = s.log().mean(1).exp() if transform == "similarity" else torch.ones(batch)
            linear = rot * scale.view(batch, 1, 1)
        self.l0 = linear.to(device, dtype)
        zeros = {
            "translation": 0,
            "rigid": n * (n - 1) // 2,
            "similarity": n * (n - 1) // 2 + 1,
            "affine": n * n,
        }[transform]
        self.shift = torch.zeros(batch, n, device=device, dtype=dtype, requires_grad=True)
        self.other = torch.zeros(batch, zeros, device=device, dtype=dtype, requires_grad=True)

    def tensors(self) -> list[torch.Tensor]:
        return [self.shift, self.other] if self.other.shape[1] else [self.shift]

    def matrix(self) -> torch.Tensor:
        """``(B, n+1, n+1)`` transform in the normalised frame."""
        n = self.n
        other = self.other * self.unit
        if self.transform == "translation":
            linear = self.l0
        elif self.transform == "affine":
            linear = self.l0 + other.view(-1, n, n)
        else:
            rot = torch.linalg.matrix_exp(_skew(other[:, : n * (n - 1) // 2], n))
            linear = self.l0 @ rot
            if self.transform == "similarity":
                linear = linear * torch.exp(other[:, -1]).view(-1, 1, 1)
        t = self.t0 + self.shift * self.unit
        return homogeneous(torch.cat([linear, t.unsqueeze(-1)], dim=-1))


# --------------------------------------------------------------------------------------------
# resampling


def _resample(
    moving: torch.Tensor, matrix: torch.Tensor, fixed_shape: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Warp ``moving`` with voxel ``matrix`` (B, n+1, n+1) onto a grid of ``fixed_shape``.

    A moving image of another shape is replicate-padded at the end (voxel indices unchanged,
    same values as ``padding='border'``) so that one grid holds both; returns (moved, disp).
    """
    n = moving.dim() - 2
    common = [max(a, b) for a, b in zip(moving.shape[2:], fixed_shape)]
    pad: list[int] = []
    for m, c in zip(reversed(moving.shape[2:]), reversed(common)):
        pad += [0, c - m]
    if any(pad):
        moving = F.pad(moving, pad, mode="replicate")
    disp = spatial.affine_to_disp(matrix[:, :n], common)
    moved = spatial.warp(moving, disp)
    crop = (slice(None), slice(None), *[slice(0, s) for s in fixed_shape])
    return moved[crop], disp[crop]


# --------------------------------------------------------------------------------------------
# public entry points


def _prepare(
    fn: str,
    moving: object,
    fixed: object,
    moving_affine: object,
    fixed_affine: object,
) -> tuple[torch.Tensor, torch.Tensor, Frames]:
    """Validate the pair (grids may differ), broadcast batch 1, and build the frames."""
    check_pair(fn, moving, fixed, match="channels")
    moving, fixed = broadcast_pair(moving, fixed)  # type: ignore[arg-type]
    if min(fixed.shape[2:]) < 2 or min(moving.shape[2:]) < 2:
        raise ValueError(f"{fn}: every spatial size must be >= 2, got {tuple(moving.shape)} and {tuple(fixed.shape)}")
    geo = centred_frames(fn, fixed.shape[2:], moving_affine, fixed_affine, fixed.shape[0])
    return moving, fixed, geo


def _pair_plan(
    fn: str, moving_shape: Sequence[int], fixed_shape: Sequence[int], levels: int, iterations: int | Sequence[int]
) -> list[tuple[list[int], list[int], int]]:
    """``(moving shape, fixed shape, iterations)`` per level, coarse to fine: the levels both images keep."""
    plan = level_plan(fn, fixed_shape, levels, iterations)
    shapes_m = level_shapes(moving_shape, levels)
    count = min(len(plan), len(shapes_m))
    return [(m, f, steps) for m, (f, steps) in zip(shapes_m[len(shapes_m) - count :], plan[len(plan) - count :])]


def _level_loss(
    params: _Params,
    left: torch.Tensor,
    right: torch.Tensor,
    moving: torch.Tensor,
    fixed: torch.Tensor,
    similarity: LossFn,
) -> torch.Tensor:
    """The similarity at one pyramid level of the voxel matrix ``left @ T @ right``."""
    moved, _ = _resample(moving, left @ params.matrix() @ right, fixed.shape[2:])
    return similarity(moved, fixed)


def _level_objective(
    params: _Params,
    frames: tuple[torch.Tensor, torch.Tensor],
    moving: torch.Tensor,
    fixed: torch.Tensor,
    similarity: LossFn,
    samples: int | None,
) -> Callable[[], torch.Tensor]:
    """The loss of one pyramid level: on ``samples`` random fixed points when given and fewer
    than the level has voxels, else on every voxel."""
    left, right = frames
    if samples is None or fixed[0, 0].numel() <= samples:
        return partial(_level_loss, params, left, right, moving, fixed, similarity)
    return SampledLoss(lambda: left @ params.matrix() @ right, moving, fixed, similarity, samples)


def _voxel_matrix(geo: Frames, transform: torch.Tensor) -> torch.Tensor:
    left = geo.left.to(transform.device, transform.dtype)
    right = geo.right.to(transform.device, transform.dtype)
    return left @ transform @ right


def _candidate_moved(
    candidate: torch.Tensor,
    geo: Frames,
    moving: torch.Tensor,
    fixed: torch.Tensor,
    scales: tuple[list[float], list[float]],
) -> torch.Tensor:
    """``moving`` (a pyramid level) resampled on ``fixed``'s level grid by the centred-frame ``candidate``."""
    scale_m, scale_f = scales
    vox = torch.linalg.inv(scale_matrix(scale_m)) @ geo.left @ candidate @ geo.right @ scale_matrix(scale_f)
    moved, _ = _resample(moving, vox.to(fixed.device, fixed.dtype), fixed.shape[2:])
    return moved


def _best_candidate(
    candidates: list[torch.Tensor],
    geo: Frames,
    moving: torch.Tensor,
    fixed: torch.Tensor,
    similarity: LossFn,
    scales: tuple[list[float], list[float]],
) -> torch.Tensor:
    """Per pair, the candidate whose resampled image scores the lowest loss."""
    batch = fixed.shape[0]
    best = candidates[0].clone()
    best_loss = torch.full((batch,), math.inf, dtype=torch.float64)
    with torch.no_grad():
        for cand in candidates:
            valid = torch.isfinite(cand).flatten(1).all(1)
            if not valid.any():
                continue
            safe = torch.where(valid.view(-1, 1, 1), cand, candidates[0])
            moved = _candidate_moved(safe, geo, moving, fixed, scales)
            for b in range(batch):
                if not valid[b]:
                    continue
                value = float(similarity(moved[b : b + 1], fixed[b : b + 1]))
                if value < best_loss[b]:
                    best_loss[b] = value
                    best[b] = cand[b]
    return best


def moments_init(
    moving: torch.Tensor,
    fixed: torch.Tensor,
    *,
    transform: str = "rigid",
    loss: str | LossFn = "gncc",
    moving_affine: object = None,
    fixed_affine: object = None,
) -> torch.Tensor:
    """Initial alignment by image moments: centres of mass, then principal axes.

    The centroid of ``fixed`` is mapped onto that of ``moving``; for rotating transforms the
    principal axes are matched as well. Every sign choice of the axes that gives a proper
    rotation, and the plain centre-of-mass translation, are scored with ``loss`` and the best
    one is kept per pair (principal axes are ambiguous for nearly isotropic shapes).

    Args:
        moving, fixed: ``(B, C, *spatial)``; the spatial shapes may differ.
        transform: one of ``AFFINE_TRANSFORMS``; ``"translation"`` matches centroids only.
        loss: similarity used to choose between the candidates.
        moving_affine, fixed_affine: voxel-to-world matrices (see :func:`register_affine`).

    Returns:
        ``(B, ndim, ndim + 1)`` fixed voxel -> moving voxel, in ``fixed``'s dtype and device.
    """
    fn = "morphreg.optimize.moments_init"
    check_choice(fn, "transform", transform, AFFINE_TRANSFORMS)
    similarity = resolve_loss(fn, loss)
    moving, fixed, geo = _prepare(fn, moving, fixed, moving_affine, fixed_affine)
    n = fixed.dim() - 2
    candidates = initial_transforms(moving, fixed, geo, "moments", transform)
    ones = [1.0] * n
    best = _best_candidate(candidates, geo, moving, fixed, similarity, (ones, ones))
    return _voxel_matrix(geo, best)[:, :n].to(fixed.device, fixed.dtype)


def register_affine(
    moving: torch.Tensor,
    fixed: torch.Tensor,
    *,
    transform: str = "affine",
    loss: str | LossFn = "auto",
    levels: int = 3,
    iterations: int | Sequence[int] = 100,
    lr: float = 0.5,
    init: str | torch.Tensor = "moments",
    moving_affine: object = None,
    fixed_affine: object = None,
    samples: int | None = DEFAULT_SAMPLES,
    progress: ProgressFn | None = None,
) -> AffineResult:
    """Register ``moving`` to ``fixed`` with a global linear transform (multi-resolution Adam).

    Args:
        moving: ``(B, C, *spatial_m)`` image to be transformed; its spatial shape may differ
            from ``fixed``'s (batch 1 broadcasts).
        fixed: ``(B, C, *spatial)`` reference image; results live on its grid.
        transform: ``"translation"``, ``"rigid"``, ``"similarity"`` or ``"affine"``.
        loss: ``"auto"`` (the default: ``"gncc"`` when the two contrasts are linearly related,
            else ``"mi"``; judged at the first guess, see :mod:`morphreg.optimize._contrast`),
            ``"gncc"`` (global correlation), ``"ncc"`` (local, window 9), ``"mse"``, ``"mi"``
            (multimodal), or a callable ``(moved, fixed) -> scalar``. Local NCC scores flat
            background as 0 (not as a match), which rewards transforms that shrink the
            background and biases the scale of an affine fit; global NCC does not. Global
            correlation on a T1/PD pair has its optimum away from the true alignment (10 degrees
            and more on BrainWeb), hence the check.
        levels: pyramid levels (each halves the size; levels whose smallest side would fall
            below 16 voxels are skipped, so small images use fewer).
        iterations: Adam iterations per level, coarse to fine (an int is used for all).
        lr: initial step in voxels of the current level (cosine-decayed to a tenth per level).
        init: ``"moments"`` (centroids + principal axes, best candidate by ``loss``), ``"com"``
            (centroids), ``"identity"``, or a voxel matrix ``(B, ndim, ndim + 1)`` such as the
            output of an affine network or :func:`morphreg.optimize.fit_affine`.
        moving_affine, fixed_affine: voxel-to-world matrices ``(ndim+1, ndim+1)`` (or batched;
            for 2D images also a NIfTI 4x4, whose slice plane gives the in-plane frame); identity
            when ``None``. They make ``rigid`` rigid in world units and give ``matrix_world``.
        samples: at a level with more fixed voxels than this, the loss is scored on this many
            of them, drawn afresh at every iteration (fixed seed); ``None`` scores every voxel.
            The result is then the mean of the parameters over the second half of the finest
            level's iterations (the noise of the sampled loss averages out there).
            Only for the global similarities (``"gncc"``, ``"mi"``, ``"mse"``); local NCC and
            callables always see whole images.
        progress: called after every iteration with ``(level, n_levels, iteration,
            n_iterations, loss, elapsed_s)``.

    Returns:
        :class:`AffineResult`.
    """
    fn = "morphreg.optimize.register_affine"
    check_choice(fn, "transform", transform, AFFINE_TRANSFORMS)
    auto = isinstance(loss, str) and loss == "auto"
    if not auto:
        resolve_loss(fn, loss)
    lr = check_lr(fn, lr)
    if samples is not None:
        check_positive_int(fn, "samples", samples)
    if not isinstance(init, torch.Tensor):
        check_choice(fn, "init", init, [*AFFINE_INITS, "<tensor (B, ndim, ndim + 1)>"])
    moving, fixed, geo = _prepare(fn, moving, fixed, moving_affine, fixed_affine)
    plan = _pair_plan(fn, moving.shape[2:], fixed.shape[2:], levels, iterations)
    pyramids = (pyramid(moving, [m for m, _, _ in plan]), pyramid(fixed, [f for _, f, _ in plan]))
    n = fixed.dim() - 2
    m_shape, f_shape, _ = plan[0]
    coarse = (pyramids[0][0], pyramids[1][0])
    scales = (level_scale(moving.shape[2:], m_shape), level_scale(fixed.shape[2:], f_shape))
    if isinstance(init, torch.Tensor):
        candidates = [_init_from_matrix(fn, init, geo, n, fixed.shape[0])]
    else:
        candidates = initial_transforms(moving, fixed, geo, init, transform)
    with one_thread():  # the coarsest level is small (40 x 48 x 56 for a 160 x 192 x 224 image)
        if auto:  # judged at the first guess (centroids matched, or the matrix given)
            with torch.no_grad():
                loss = auto_loss(_candidate_moved(candidates[0], geo, *coarse, scales), coarse[1])
        similarity = resolve_loss(fn, loss)
        start = _best_candidate(candidates, geo, *coarse, similarity, scales) if len(candidates) > 1 else candidates[0]

    # one parameter unit moves the periphery (radius r) by one fine voxel
    params = _Params(fn, start, transform, geo.voxel_size / geo.radius, fixed.dtype, fixed.device)
    sampled = samples if isinstance(loss, str) and loss in SAMPLED_LOSSES else None
    history = _optimise_levels(params, geo, plan, pyramids, similarity, (lr, sampled), progress)

    with torch.no_grad():
        matrix = _voxel_matrix(geo, params.matrix().detach().to(torch.float64).cpu())
        vox = matrix.to(fixed.device, fixed.dtype)
        moved, disp = _resample(moving, vox, fixed.shape[2:])
    world = matrix_to_world(matrix, geo.world_moving, geo.world_fixed)
    name = loss if isinstance(loss, str) else "callable"
    return AffineResult(vox[:, :n].contiguous(), world, disp, moved, history, name)


def _optimise_levels(
    params: _Params,
    geo: Frames,
    plan: list[tuple[list[int], list[int], int]],
    pyramids: tuple[list[torch.Tensor], list[torch.Tensor]],
    similarity: LossFn,
    settings: tuple[float, int | None],
    progress: ProgressFn | None,
) -> list[float]:
    """Adam on ``params`` level by level, coarse to fine; returns the loss history.

    ``settings`` is ``(lr, samples)`` (see :func:`register_affine`).
    """
    lr, samples = settings
    full_m, full_f = pyramids[0][-1].shape[2:], pyramids[1][-1].shape[2:]
    n = len(full_f)
    history: list[float] = []
    clock = time.perf_counter()
    for level, ((m_shape, f_shape, steps), moving_l, fixed_l) in enumerate(zip(plan, *pyramids)):
        scale_m = level_scale(full_m, m_shape)
        scale_f = level_scale(full_f, f_shape)
        left = (torch.linalg.inv(scale_matrix(scale_m)) @ geo.left).to(fixed_l.device, fixed_l.dtype)
        right = (geo.right @ scale_matrix(scale_f)).to(fixed_l.device, fixed_l.dtype)
        objective = _level_objective(params, (left, right), moving_l, fixed_l, similarity, samples)
        level_lr = lr * math.exp(sum(math.log(s) for s in scale_f) / n)
        on_step = None
        if progress is not None:
            def on_step(it: int, value: float, level: int = level, steps: int = steps) -> None:
                progress(level, len(plan), it, steps, value, time.perf_counter() - clock)
        if isinstance(objective, SampledLoss):  # a few thousand points per op: one thread is faster
            average = steps // 2 if level == len(plan) - 1 else 0  # the sampling noise of the last steps
            with one_thread():
                run_adam(params.tensors(), objective, steps, level_lr, history, on_step=on_step,
                         average_last=average)
        else:
            run_adam(params.tensors(), objective, steps, level_lr, history, on_step=on_step)
    return history


def _init_from_matrix(fn: str, init: torch.Tensor, geo: Frames, n: int, batch: int) -> torch.Tensor:
    """A voxel matrix given as ``init`` -> the transform ``(B, n+1, n+1)`` in the centred frame."""
    m = check_matrix(fn, "init", init.detach().to("cpu", torch.float64), n)
    if m.shape[0] not in (1, batch):
        raise ValueError(f"{fn}: argument 'init' has batch size {m.shape[0]}, expected 1 or {batch}")
    m = homogeneous(m).expand(batch, n + 1, n + 1)
    return torch.linalg.inv(geo.left) @ m @ torch.linalg.inv(geo.right)
