"""Registering one pair of files with a trained network: load, align grids, run, write.

The network works in voxels on the fixed image's grid; physical space stays at this boundary:
``moving`` (and its labels) are resampled onto the fixed grid through the affines when the two
grids differ, and every output carries the fixed image's affine and header geometry.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import io, metrics, spatial
from ..data import as_label_map, normalise_intensity

RegisterFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class PairOnGrid:
    """A moving/fixed pair (with optional labels) on the fixed image's voxel grid."""

    moving: io.Volume
    fixed: io.Volume
    moving_seg: io.Volume | None = None
    fixed_seg: io.Volume | None = None
    resampled: bool = False


@dataclass
class RegisteredPair:
    """Result of registering a :class:`PairOnGrid` (arrays on the fixed grid)."""

    moved: io.Volume
    disp: np.ndarray  # (ndim, *spatial) voxels
    moved_seg: io.Volume | None
    seconds: float
    dice: metrics.LabelScores | None
    inverse_disp: np.ndarray | None = None  # (ndim, *spatial) voxels, when the registration provides it


def _npz_key(path: str | Path, key: str | None) -> str | None:
    """``key`` applies to ``.npz`` files only (a NIfTI may be paired with one array of an ``.npz``)."""
    return key if io.split_ext(path)[1] == ".npz" else None


def load_pair(
    moving: str | Path,
    fixed: str | Path,
    moving_seg: str | Path | None = None,
    fixed_seg: str | Path | None = None,
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
            ``fixed_seg``); default the flags ``--moving``, ``--fixed``, ...

    Raises:
        ValueError: different dimensionality, a constant image, label maps that do not match
            their image's grid or break the label policy (:func:`morphreg.data.as_label_map`),
            or different grids with ``resample=False``.
    """
    label = {"moving": "--moving", "fixed": "--fixed", "moving_seg": "--moving-seg", "fixed_seg": "--fixed-seg",
             **(names or {})}
    if key is not None and not any(io.split_ext(p)[1] == ".npz" for p in (moving, fixed)):
        raise ValueError(f"--npz-key {key!r} selects an array of an .npz file, but neither image is an .npz")
    moving_vol = io.load_volume(moving, key=_npz_key(moving, key))
    fixed_vol = io.load_volume(fixed, key=_npz_key(fixed, key))
    if moving_vol.ndim != fixed_vol.ndim:
        raise ValueError(
            f"{label['moving']} '{moving}' is {moving_vol.ndim}D but {label['fixed']} '{fixed}' is "
            f"{fixed_vol.ndim}D; they must have the same dimensionality"
        )
    for name, path, volume in (("moving", moving, moving_vol), ("fixed", fixed, fixed_vol)):
        if float(volume.data.max()) == float(volume.data.min()):  # integer images too
            raise ValueError(
                f"{label[name]} '{path}' is a constant image (every voxel {float(volume.data.min()):g}); "
                "there is nothing to register"
            )
    segs: dict[str, io.Volume | None] = {"moving": None, "fixed": None}
    for name, path, image in (("moving", moving_seg, moving_vol), ("fixed", fixed_seg, fixed_vol)):
        if path is None:
            continue
        seg = io.load_volume(path, key=_npz_key(path, seg_key if seg_key is not None else key))
        what = label[f"{name}_seg"]
        seg.data = as_label_map(seg.data, f"{what} '{path}'")
        if not io.same_grid(seg, image):
            raise ValueError(
                f"{what} '{path}' (shape {seg.shape}) is not on the grid of its image "
                f"(shape {image.shape}, or a different affine)"
            )
        segs[name] = seg
    resampled = not io.same_grid(moving_vol, fixed_vol)
    if resampled and not resample:
        raise ValueError(
            f"--moving (shape {moving_vol.shape}) and --fixed (shape {fixed_vol.shape}) are on different grids "
            "(shape or affine); without --no-resample the moving image is resampled onto the fixed grid"
        )
    if resampled:
        moving_vol = io.resample_to(moving_vol, fixed_vol, order=1)
        if segs["moving"] is not None:
            segs["moving"] = io.resample_to(segs["moving"], fixed_vol, order=0)
    return PairOnGrid(moving_vol, fixed_vol, segs["moving"], segs["fixed"], resampled)


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


def network_register_fn(model: torch.nn.Module, device: torch.device, *, full_output: bool = False) -> RegisterFn:
    """``(moving, fixed) -> disp`` with a network in inference mode on ``device``.

    ``full_output=True`` returns the network's whole ``RegistrationOutput`` (with its
    ``inverse_disp`` for diffeomorphic models), which :func:`register_pair` also accepts.
    """
    model = model.to(device).eval()

    def run(moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            output = model(moving.to(device), fixed.to(device))
            if not full_output:
                return output.disp
            if output.inverse_disp is None and output.velocity is not None:
                output = output._replace(inverse_disp=_velocity_inverse(model, output.velocity, moving.shape[2:]))
            return output

    run.model = model  # type: ignore[attr-defined]
    return run


def _velocity_inverse(model: torch.nn.Module, velocity: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """``exp(-v)`` of a diffeomorphic network, as its forward pass makes ``exp(v)`` (then cropped to ``shape``).

    ``velocity`` is ``(B, ndim, *padded / int_downsize)``; the result is ``(B, ndim, *shape)`` in voxels.
    """
    from ..models.layers import crop_to

    padded = [size * model.int_downsize for size in velocity.shape[2:]]
    inverse = spatial.resize(spatial.integrate(-velocity, model.int_steps), size=padded)
    return crop_to(inverse, list(shape))


def network_input(volume: io.Volume, normalise: str | None) -> torch.Tensor:
    """``(1, 1, *spatial)`` float32 tensor of a volume, intensity-normalised as for training."""
    data = volume.data.astype(np.float32)
    if normalise is not None:
        data = normalise_intensity(data, normalise)
    return torch.from_numpy(np.ascontiguousarray(data))[None, None]


def register_pair(
    pair: PairOnGrid, register: RegisterFn, *, normalise: str | None = "minmax"
) -> RegisteredPair:
    """Run ``register`` on a pair; warp the original moving intensities and labels.

    Args:
        pair: the pair on the fixed grid.
        register: ``(moving, fixed) -> disp`` on ``(1, 1, *spatial)`` float tensors (or an object
            with ``disp`` and ``inverse_disp``, such as a ``RegistrationOutput``).
        normalise: intensity normalisation of the network inputs (as in training).
    """
    moving, fixed = network_input(pair.moving, normalise), network_input(pair.fixed, normalise)
    start = time.perf_counter()
    output = register(moving, fixed)
    seconds = time.perf_counter() - start
    inverse = getattr(output, "inverse_disp", None)  # a RegistrationOutput, or a bare disp tensor
    disp = (output.disp if hasattr(output, "disp") else output).detach().float().cpu()
    check_finite_field(disp)
    if inverse is not None:
        inverse = inverse.detach().float().cpu()
        check_finite_field(inverse)
    moved = spatial.warp(io.to_tensor(pair.moving).float(), disp)
    moved_seg = dice = None
    if pair.moving_seg is not None:
        moved_seg_t = spatial.warp(io.to_tensor(pair.moving_seg), disp, mode="nearest")
        moved_seg = io.from_tensor(moved_seg_t, pair.fixed)
        moved_seg.data = moved_seg.data.astype(pair.moving_seg.data.dtype)
        if pair.fixed_seg is not None:
            dice = metrics.dice(moved_seg_t, io.to_tensor(pair.fixed_seg))
    return RegisteredPair(io.from_tensor(moved, pair.fixed), disp[0].numpy(), moved_seg, seconds, dice,
                          inverse[0].numpy() if inverse is not None else None)
