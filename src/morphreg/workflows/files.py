"""Registering files: load a pair onto one grid, run a registration on it, apply a warp file.

The registrations work in voxels on the fixed image's grid; physical space stays at this
boundary: ``moving`` (and its labels) are resampled onto the fixed grid through the affines when
the two grids differ, and every output carries the fixed image's affine and header geometry.

The written moved image and labels are interpolated once: fixed voxel ``x`` samples the
*original* moving image at ``inv(A_moving) @ A_fixed @ (x + u(x))`` (:func:`warp_across_grids`),
as ITK/ANTs apply morphreg's exported field; the resampled copy only feeds the optimisation.

Error messages name this module's parameters in backquotes (`` `moving` ``); the command line
replaces them with its flags.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import io, metrics, spatial
from ..data import as_label_map, normalise_intensity
from .pipeline import Registration

PathLike = str | Path


@dataclass
class PairOnGrid:
    """A moving/fixed pair (with optional labels) on the fixed image's voxel grid.

    ``moving_native``/``moving_seg_native``: the moving image and labels as read, on their own
    grid, kept when ``resampled`` (the grids differ) so that the outputs sample them once.
    """

    moving: io.Volume
    fixed: io.Volume
    moving_seg: io.Volume | None = None
    fixed_seg: io.Volume | None = None
    resampled: bool = False
    moving_native: io.Volume | None = None
    moving_seg_native: io.Volume | None = None


@dataclass
class RegisteredPair:
    """Result of registering a :class:`PairOnGrid` (arrays on the fixed grid).

    Attributes:
        moved, moved_seg: the moving image and labels warped onto the fixed grid.
        disp: ``(ndim, *spatial)`` voxels.
        seconds: wall time of the registration itself.
        dice: Dice of ``moved_seg`` against the fixed labels (both label maps given), else ``None``.
        inverse_disp: ``(ndim, *spatial)`` voxels, when the registration provides it.
        matrix: ``(1, ndim, ndim + 1)`` voxel matrix of the affine part, when there is one.
        uncertainty: ``(*spatial)`` posterior standard deviation of the velocity in voxels (RMS over its
            components) of a probabilistic network, else ``None``.
    """

    moved: io.Volume
    disp: np.ndarray
    moved_seg: io.Volume | None
    seconds: float
    dice: metrics.LabelScores | None
    inverse_disp: np.ndarray | None = None
    matrix: torch.Tensor | None = None
    uncertainty: np.ndarray | None = None


def _npz_key(path: PathLike, key: str | None) -> str | None:
    """``key`` applies to ``.npz`` files only (a NIfTI may be paired with one array of an ``.npz``)."""
    return key if io.split_ext(path)[1] == ".npz" else None


def load_image(path: PathLike, key: str | None = None) -> io.Volume:
    """Read one image; ``key`` selects an ``.npz`` array and is ignored for other formats."""
    return io.load_volume(path, key=_npz_key(path, key))


def _check_not_constant(label: str, path: PathLike, volume: io.Volume) -> None:
    if float(volume.data.max()) == float(volume.data.min()):  # integer images too
        raise ValueError(f"{label} '{path}' is a constant image (every voxel {float(volume.data.min()):g}); "
                         "there is nothing to register")


def _load_seg(label: str, path: PathLike, key: str | None, image: io.Volume) -> io.Volume:
    seg = io.load_volume(path, key=_npz_key(path, key))
    seg.data = as_label_map(seg.data, f"{label} '{path}'")
    if not io.same_grid(seg, image):
        raise ValueError(f"{label} '{path}' (shape {seg.shape}) is not on the grid of its image "
                         f"(shape {image.shape}, or a different affine)")
    return seg


def load_pair(
    moving: PathLike,
    fixed: PathLike,
    moving_seg: PathLike | None = None,
    fixed_seg: PathLike | None = None,
    *,
    key: str | None = None,
    seg_key: str | None = None,
    resample: bool = True,
    names: dict[str, str] | None = None,
) -> PairOnGrid:
    """Read a pair and put ``moving`` (and its labels) on ``fixed``'s grid.

    Args:
        key, seg_key: array names for the ``.npz`` files among the images / label maps (other
            formats ignore them; ``key`` given while no image is an ``.npz`` is refused).
        resample: resample ``moving`` onto ``fixed``'s grid when shapes or affines differ;
            ``False`` refuses such a pair instead.
        names: how messages name the four inputs (keys ``moving``, ``fixed``, ``moving_seg``,
            ``fixed_seg``); default the parameter names in backquotes.

    Raises:
        ValueError: different dimensionality, a constant image, label maps that do not match
            their image's grid or break the label policy (:func:`morphreg.data.as_label_map`),
            or different grids with ``resample=False``.
    """
    label = {name: f"`{name}`" for name in ("moving", "fixed", "moving_seg", "fixed_seg")} | (names or {})
    if key is not None and not any(io.split_ext(p)[1] == ".npz" for p in (moving, fixed)):
        raise ValueError(f"`key` {key!r} selects an array of an .npz file, but neither image is an .npz")
    moving_vol, fixed_vol = load_image(moving, key), load_image(fixed, key)
    if moving_vol.ndim != fixed_vol.ndim:
        raise ValueError(f"{label['moving']} '{moving}' is {moving_vol.ndim}D but {label['fixed']} '{fixed}' is "
                         f"{fixed_vol.ndim}D; they must have the same dimensionality")
    _check_not_constant(label["moving"], moving, moving_vol)
    _check_not_constant(label["fixed"], fixed, fixed_vol)
    seg_key = seg_key if seg_key is not None else key
    moving_lab = _load_seg(label["moving_seg"], moving_seg, seg_key, moving_vol) if moving_seg is not None else None
    fixed_lab = _load_seg(label["fixed_seg"], fixed_seg, seg_key, fixed_vol) if fixed_seg is not None else None
    resampled = not io.same_grid(moving_vol, fixed_vol)
    if resampled and not resample:
        raise ValueError(f"{label['moving']} (shape {moving_vol.shape}) and {label['fixed']} (shape "
                         f"{fixed_vol.shape}) are on different grids (shape or affine), and resampling was turned off "
                         "(`resample`)")
    if not resampled:
        return PairOnGrid(moving_vol, fixed_vol, moving_lab, fixed_lab)
    moving_grid = warp_across_grids(moving_vol, fixed_vol, None)
    moving_lab_grid = warp_across_grids(moving_lab, fixed_vol, None, mode="nearest") if moving_lab is not None else None
    return PairOnGrid(moving_grid, fixed_vol, moving_lab_grid, fixed_lab, True, moving_vol, moving_lab)


def moving_coordinates(moving: io.Volume, fixed: io.Volume,
                       disp: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each fixed voxel samples ``moving``: its moving voxel coordinates and whether they are inside.

    Args:
        moving: the moving volume on its own grid; ``fixed``: the output grid.
        disp: ``(1, ndim, *fixed_spatial)`` voxels of the fixed grid, or ``None``.

    Returns:
        ``coords`` ``(ndim, *fixed_spatial)`` float32 moving voxel indices
        ``inv(A_moving) @ A_fixed @ (x + u(x))``, and ``inside`` ``(*fixed_spatial)`` bool: within
        half a voxel of the moving image's border planes.
    """
    from ..geometry import fixed_to_moving_voxels

    ndim = fixed.ndim
    vox = torch.from_numpy(fixed_to_moving_voxels(moving.affine, fixed.affine, ndim)).float()
    lin, offset = vox[:ndim, :ndim], vox[:ndim, 3]
    points = spatial.identity_grid(fixed.shape)
    if disp is not None:
        points = points + disp.detach().to("cpu", torch.float32)[0]
    # moving voxel coordinates (ndim, *spatial): lin @ points + offset, one axis at a time
    coords = torch.stack([sum(lin[k, j] * points[j] for j in range(ndim)) + offset[k] for k in range(ndim)])
    del points
    upper = torch.tensor(moving.shape, dtype=torch.float32).view(ndim, *([1] * ndim)) - 0.5
    inside = ((coords >= -0.5) & (coords <= upper)).all(0)
    return coords, inside


def check_overlap(moving: io.Volume, fixed: io.Volume, disp: torch.Tensor | None, what: str) -> None:
    """Refuse a transform (``what``, for the message) that maps no voxel of ``fixed`` inside ``moving``:
    the result would be an empty image (a matrix for other images, or a field in other units)."""
    _, inside = moving_coordinates(moving, fixed, disp)
    if not bool(inside.any()):
        raise ValueError(f"{what} maps no voxel of the fixed grid inside the moving image (the moved image would "
                         "be empty): it was made for other images, or is in other units")


def warp_across_grids(moving: io.Volume, fixed: io.Volume, disp: torch.Tensor | None, *,
                      mode: str = "linear") -> io.Volume:
    """``moving`` sampled once on ``fixed``'s grid through the affines and a voxel field.

    Fixed voxel ``x`` takes the value of ``moving`` at voxel ``inv(A_moving) @ A_fixed @ (x + u(x))``
    (``u = disp``, zero when ``None``), exactly what ITK/ANTs compute when they apply morphreg's
    exported field (:func:`morphreg.io.save_itk_warp`) to the original moving image: points up to
    half a voxel beyond the moving image's border planes take the border value, points further
    out are 0 (``itk::ResampleImageFilter``'s buffer test).

    Args:
        moving: the moving volume on its own grid, 2D or 3D.
        fixed: the output grid (shape and affine).
        disp: ``(1, ndim, *fixed_spatial)`` voxels of the fixed grid, or ``None``.
        mode: ``"linear"`` (float32 out) or ``"nearest"`` (label maps keep their dtype).

    Returns:
        :class:`morphreg.io.Volume` on ``fixed``'s grid, with its affine and header.
    """
    coords, inside = moving_coordinates(moving, fixed, disp)
    data = moving.data
    integer = data.dtype.kind in "iub"
    values = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float64 if integer and
                                                   np.abs(data).max() >= 2**24 else np.float32))
    sampled = spatial.sample(values[None, None], coords[None], mode=mode, padding="border")[0, 0]
    sampled = sampled.masked_fill_(~inside, 0).numpy()
    out = sampled.astype(data.dtype) if mode == "nearest" and integer else sampled.astype(np.float32, copy=False)
    return io.Volume(out, fixed.affine.copy(), fixed.header)


def check_finite_field(disp: torch.Tensor) -> None:
    """Raise ``FloatingPointError`` when a registration produced NaN or infinite displacements.

    Nothing is written from such a field: the moved image would be all zeros or garbage.
    """
    bad = int((~torch.isfinite(disp)).sum())
    if bad:
        raise FloatingPointError(
            f"the registration produced a displacement field with {bad} NaN or infinite value(s) of "
            f"{disp.numel()} (the network's weights or the optimisation diverged); nothing was written"
        )


def network_input(volume: io.Volume, normalise: str | None) -> torch.Tensor:
    """``(1, 1, *spatial)`` float32 tensor of a volume, intensity-normalised as for training."""
    data = volume.data.astype(np.float32)
    if normalise is not None:
        data = normalise_intensity(data, normalise)
    return torch.from_numpy(np.ascontiguousarray(data))[None, None]


def run_timed(registration: Registration, moving: torch.Tensor, fixed: torch.Tensor) -> tuple[Any, float]:
    """``(registration(moving, fixed), wall seconds)``, synchronising CUDA so the time is the computation's."""
    start = time.perf_counter()
    output = registration(moving, fixed)
    if output.disp.is_cuda:
        torch.cuda.synchronize(output.disp.device)
    return output, time.perf_counter() - start


def register_pair(pair: PairOnGrid, registration: Registration, *, normalise: str | None = "minmax") -> RegisteredPair:
    """Run ``registration`` on a pair; warp the original moving intensities and labels.

    Args:
        pair: the pair on the fixed grid.
        registration: ``(moving, fixed) -> RegistrationOutput`` on ``(1, 1, *spatial)`` float tensors.
        normalise: intensity normalisation of the registration inputs (as in training).

    Raises:
        FloatingPointError: the field (or its inverse) has NaN or infinite values.
    """
    output, seconds = run_timed(registration, network_input(pair.moving, normalise),
                                network_input(pair.fixed, normalise))
    return finish_registration(pair, output, seconds)


def finish_registration(pair: PairOnGrid, output: Any, seconds: float) -> RegisteredPair:
    """A :class:`RegisteredPair` from a registration's output for ``pair`` (batch size 1): the
    field checked, the original moving intensities and labels warped once, Dice when both label
    maps are given. :func:`register_pair` and the batched cohort (one network pass for many
    pairs) both end here.

    Raises:
        FloatingPointError: the field (or its inverse) has NaN or infinite values.
    """
    disp = output.disp.detach().float().cpu()
    check_finite_field(disp)
    inverse = output.inverse_disp
    if inverse is not None:
        inverse = inverse.detach().float().cpu()
        check_finite_field(inverse)
    moved, moved_seg = warp_moving(pair, disp)
    dice = None
    if moved_seg is not None and pair.fixed_seg is not None:
        dice = metrics.dice(io.to_tensor(moved_seg), io.to_tensor(pair.fixed_seg))
    matrix = output.matrix.detach().cpu() if output.matrix is not None else None  # made on the device
    uncertainty = None
    if output.velocity_stats is not None:  # a probabilistic network: std = sqrt(mean_k exp(log σ_k²))
        uncertainty = output.velocity_stats[1].detach().float().cpu().exp().mean(dim=1)[0].sqrt().numpy()
    return RegisteredPair(moved, disp[0].numpy(), moved_seg, seconds, dice,
                          inverse[0].numpy() if inverse is not None else None, matrix, uncertainty)


def warp_moving(pair: PairOnGrid, disp: torch.Tensor) -> tuple[io.Volume, io.Volume | None]:
    """The moving image (float32, linear) and labels (nearest, their dtype) warped by ``disp``
    ``(1, ndim, *fixed_spatial)`` onto the fixed grid, each interpolated once: from the
    original moving grid through the affines when the grids differ (:func:`warp_across_grids`)."""
    if pair.moving_native is not None:
        moved = warp_across_grids(pair.moving_native, pair.fixed, disp)
        seg = pair.moving_seg_native
        return moved, warp_across_grids(seg, pair.fixed, disp, mode="nearest") if seg is not None else None
    moved = io.from_tensor(spatial.warp(io.to_tensor(pair.moving).float(), disp), pair.fixed)
    if pair.moving_seg is None:
        return moved, None
    moved_seg = io.from_tensor(spatial.warp(io.to_tensor(pair.moving_seg), disp, mode="nearest"), pair.fixed)
    moved_seg.data = moved_seg.data.astype(pair.moving_seg.data.dtype)
    return moved, moved_seg


def dice_before(pair: PairOnGrid, labels: torch.Tensor) -> metrics.LabelScores | None:
    """Dice of the unregistered label maps over ``labels`` (``None`` without both label maps)."""
    if pair.moving_seg is None or pair.fixed_seg is None:
        return None
    return metrics.dice(io.to_tensor(pair.moving_seg), io.to_tensor(pair.fixed_seg), labels)
