"""``morphreg.register``: register two images with a network in one call, arrays or files in, arrays out.

    import morphreg
    result = morphreg.register("moving.nii.gz", "fixed.nii.gz", model="brain2d")
    result.moved, result.disp, result.metrics        # numpy arrays and plain numbers

The model's own intensity normalisation is applied to the network inputs; the moved image is
the *original* moving intensities warped. Files are read (and the moving image resampled onto
the fixed grid through the affines) as ``morphreg register`` does.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import io, metrics
from .models.checkpoint import SavableModel, load_model

ImageLike = str | os.PathLike[str] | np.ndarray


@dataclass
class Registration:
    """What :func:`register` returns.

    Attributes:
        moved: the moving image warped onto the fixed grid, ``(*spatial)`` float32.
        disp: displacement ``(ndim, *spatial)`` in voxels of the fixed grid (pull-back:
            ``moved(x) = moving(x + disp(x))``, component ``k`` along array axis ``k``).
        moved_seg: the moving labels warped (nearest), when ``moving_seg`` was given.
        affine: the fixed image's 4x4 voxel-to-world matrix (identity for arrays).
        metrics: ``folding_pct`` (% of voxels with det J <= 0), ``seconds`` (the network call),
            and with both label maps ``dice`` (mean over the fixed labels) and ``dice_before``.
    """

    moved: np.ndarray
    disp: np.ndarray
    moved_seg: np.ndarray | None = None
    affine: np.ndarray = field(default_factory=lambda: np.eye(4))
    metrics: dict[str, float] = field(default_factory=dict)


def _volume(value: ImageLike | None, name: str) -> io.Volume | None:
    if value is None or isinstance(value, (str, os.PathLike)):
        return None
    array = np.asarray(value)
    if array.ndim not in (2, 3):
        raise ValueError(f"morphreg.register: argument '{name}' must be a 2D or 3D array, got shape {array.shape}")
    return io.Volume(array, np.eye(4))


def resolve_model(model: str | os.PathLike[str] | SavableModel, map_location: Any = "cpu") -> SavableModel:
    """A network from a built-in name, a run folder, a checkpoint file, or a loaded model."""
    if isinstance(model, SavableModel):
        return model
    from . import zoo

    if isinstance(model, str) and zoo.is_builtin(model) and not Path(model).exists():
        return zoo.load(model, map_location=map_location)
    path = Path(model)
    if path.is_dir():
        path = path / "model.pt"
    if not path.exists() and isinstance(model, str) and os.sep not in model and "." not in model:
        raise ValueError(f"model {model!r} is neither a file nor a built-in model (built-in: {', '.join(zoo.names())})")
    return load_model(path, map_location=map_location)


def _pair(moving: ImageLike, fixed: ImageLike, moving_seg: ImageLike | None, fixed_seg: ImageLike | None) -> Any:
    """The inputs as a :class:`~morphreg.workflows.files.PairOnGrid` (arrays as they are, files
    read and resampled onto the fixed grid as ``morphreg register`` does)."""
    from .workflows.files import PairOnGrid, load_pair

    arrays = {name: _volume(value, name) for name, value in
              (("moving", moving), ("fixed", fixed), ("moving_seg", moving_seg), ("fixed_seg", fixed_seg))}
    if all(v is None for v in arrays.values()):
        return load_pair(moving, fixed, moving_seg, fixed_seg,
                         names={"moving": "moving", "fixed": "fixed", "moving_seg": "moving_seg",
                                "fixed_seg": "fixed_seg"})
    if not all(isinstance(v, np.ndarray) or v is None for v in (moving, fixed, moving_seg, fixed_seg)):
        raise ValueError("morphreg.register: give all inputs as arrays or all as paths")
    shapes = {name: v.shape for name, v in arrays.items() if v is not None}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"morphreg.register: the arrays must have one shape, got {shapes}")
    for name in ("moving_seg", "fixed_seg"):
        vol = arrays[name]
        if vol is not None:
            from .data import as_label_map

            vol.data = as_label_map(vol.data, f"argument '{name}'")
    return PairOnGrid(arrays["moving"], arrays["fixed"], arrays["moving_seg"], arrays["fixed_seg"])


def _network(model: str | os.PathLike[str] | SavableModel, weight: float | None, normalise: str | None,
             device: str, precision: str) -> tuple[Any, str | None, int]:
    """A network registration, its input normalisation and its dimensionality."""
    from .workflows.pipeline import NetworkRegistration

    net = resolve_model(model, map_location=device)
    if weight is not None:
        if not hasattr(net, "check_weight"):
            raise ValueError("morphreg.register: 'weight' (lambda) needs a HyperMorph model; this one was trained "
                             f"for one lambda ({net.metadata.get('weight', '?')})")
        net.default_weight = net.check_weight(weight)
    if normalise == "model":
        normalise = _model_normalisation(net)
    return NetworkRegistration(net, torch.device(device), precision=precision), normalise, net.ndim


def _model_normalisation(net: SavableModel | None) -> str | None:
    """``normalise="model"``: the network's recorded normalisation, else the classical methods' default
    (:func:`morphreg.workflows.spec.network_normalisation`, which the command line uses too)."""
    from .workflows.spec import network_normalisation

    try:
        return network_normalisation(None, net)
    except ValueError as err:
        raise ValueError(f"morphreg.register: {err}") from None


def _classical(method: str, preset: str | None, iterations: Sequence[int] | None, weight: float | None,
               grid_affine: np.ndarray, device: str) -> Any:
    """An optimisation-based registration (the ``morphreg register --method`` ones), on ``device``."""
    from .workflows import pipeline
    from .workflows.device import resolve_device

    schedule = None
    if preset is not None or iterations is not None:
        if not pipeline.is_greedy(method, None, weight):
            raise ValueError("morphreg.register: 'preset' and 'iterations' set the greedy dense method "
                             "(method='dense' without 'weight')")
        schedule = pipeline.GreedySchedule.from_options(preset, None, iterations)
    registration = pipeline.classical_registration(method, weight=weight, grid_affine=grid_affine, schedule=schedule)
    return pipeline.OnDevice(registration, resolve_device(device))


def register(
    moving: ImageLike,
    fixed: ImageLike,
    model: str | os.PathLike[str] | SavableModel | None = None,
    *,
    method: str | None = None,
    preset: str | None = None,
    iterations: Sequence[int] | None = None,
    weight: float | None = None,
    moving_seg: ImageLike | None = None,
    fixed_seg: ImageLike | None = None,
    normalise: str | None = "model",
    device: str = "cpu",
    precision: str = "float32",
    affine: bool | None = None,
) -> Registration:
    """Register ``moving`` to ``fixed``: with a network in one forward pass, or with a classical method.

    Args:
        moving, fixed: file paths (NIfTI, MGZ, NPZ, ...) or arrays ``(*spatial)`` of one shape.
        model: a built-in model name (``morphreg.zoo.names()``), a run folder, a checkpoint, or
            a loaded network (default ``"brain2d"`` when no ``method`` is given).
        method: instead of a network, ``"dense"`` (greedy diffeomorphic local NCC, 2D or 3D, no
            training), ``"affine"``, ``"rigid"`` or ``"ffd"``: ``morphreg register --method``.
        preset: ``"fast"`` (default) or ``"accurate"`` schedule of ``method="dense"``.
        iterations: iterations per level of ``method="dense"``, coarse to fine (one level each).
        weight: the smoothness weight λ of a HyperMorph model (default: the model's own);
            refused for other models. With ``method="dense"`` it selects the velocity field
            fitted with Adam instead of the greedy method, as ``--lambda`` does.
        moving_seg, fixed_seg: optional label maps (paths or arrays) on their images' grids.
        normalise: ``"model"`` (what the network was trained with; for ``method`` percentile, as
            ``morphreg register --method``),
            ``"minmax"``, ``"percentile"`` or ``None`` (inputs taken as they are).
        device: ``"cpu"`` or ``"cuda"``.
        precision: ``"float32"`` or ``"bf16"`` (a network's U-Net in bfloat16, as ``--precision``).
        affine: ``True`` aligns affinely first (moments, then the affine pyramid) and composes the
            result into one field, as ``morphreg register --affine``; ``False`` never; ``None``
            (default) as the command line: on for 3D ``method="dense"``/``"ffd"`` on grids that
            differ (:func:`morphreg.workflows.pipeline.affine_by_default`). Refused for
            ``method="affine"``/``"rigid"``.

    Returns:
        :class:`Registration` (numpy arrays and plain numbers).
    """
    from .workflows.files import dice_before, register_pair

    if method is not None and model is not None:
        raise ValueError("morphreg.register: give either 'model' (a network) or 'method' (a classical method), "
                         "not both")
    if affine and method in ("affine", "rigid"):
        raise ValueError(f"morphreg.register: 'affine' prepends affine alignment to a deformable method; "
                         f"method={method!r} is linear already")
    pair = _pair(moving, fixed, moving_seg, fixed_seg)
    if method is None:
        registration, normalise, ndim = _network(model if model is not None else "brain2d", weight, normalise, device,
                                                  precision)
        if ndim != pair.fixed.ndim:
            raise ValueError(f"morphreg.register: the model is {ndim}D but the images are {pair.fixed.ndim}D")
    else:
        registration = _classical(method, preset, iterations, weight, np.asarray(pair.fixed.affine), device)
        normalise = _model_normalisation(None) if normalise == "model" else normalise  # as `register --method`
    from .workflows import pipeline

    if affine if affine is not None else pipeline.affine_by_default(method or "network", pair.fixed.ndim,
                                                                    pair.resampled):
        from .workflows.device import resolve_device

        registration = pipeline.with_affine(registration, np.asarray(pair.fixed.affine), resolve_device(device))
    result = register_pair(pair, registration, normalise=normalise)
    disp = torch.from_numpy(result.disp)[None]
    scores = {"folding_pct": float(metrics.folding_fraction(disp)), "seconds": float(result.seconds)}
    if result.dice is not None and pair.moving_seg is not None and pair.fixed_seg is not None:
        scores["dice"] = float(torch.nanmean(result.dice.per_label))
        before = dice_before(pair, result.dice.labels)
        scores["dice_before"] = float(torch.nanmean(before.per_label))
    return Registration(
        moved=result.moved.data.astype(np.float32),
        disp=result.disp,
        moved_seg=None if result.moved_seg is None else result.moved_seg.data,
        affine=np.asarray(pair.fixed.affine),
        metrics=scores,
    )
