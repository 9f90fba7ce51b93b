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
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import io, metrics
from .models.checkpoint import SavableModel, load_model

ImageLike = str | os.PathLike[str] | np.ndarray | torch.Tensor


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


_FN = "morphreg.register"


def _volume(value: ImageLike | None, name: str) -> io.Volume | None:
    """An array argument as a checked :class:`~morphreg.io.Volume` (``None`` for a path or ``None``).

    Accepted: numpy arrays and torch tensors (any layout or strides; copied to a contiguous
    array), 2D or 3D, of integer, boolean or real floating dtype, finite and within float32.
    Everything else raises ``TypeError`` (the kind of value) or ``ValueError`` (its content)
    naming the argument.
    """
    if value is None or isinstance(value, (str, os.PathLike)):
        return None
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu()
        value = (tensor.float() if tensor.dtype in (torch.bfloat16,) else tensor).numpy()
    elif isinstance(value, np.ma.MaskedArray):
        raise TypeError(f"{_FN}: argument '{name}' is a masked array, whose masked values would be registered as "
                        "they are; fill them first (array.filled(value))")
    elif not isinstance(value, (np.ndarray, np.generic)):
        raise TypeError(f"{_FN}: argument '{name}' must be a file path, a numpy array or a torch tensor, got "
                        f"{type(value).__name__}")
    array = np.asarray(value)
    if array.dtype.kind not in "biuf":
        raise TypeError(f"{_FN}: argument '{name}' must hold real numbers (integer, boolean or floating point), got "
                        f"dtype {array.dtype}")
    if array.ndim not in (2, 3):
        raise ValueError(f"{_FN}: argument '{name}' must be a 2D or 3D array, got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"{_FN}: argument '{name}' must not be empty, got shape {array.shape}")
    if array.dtype.kind == "f":
        finite = np.isfinite(array)
        if not finite.all():
            n_nan = int(np.isnan(array).sum())
            raise ValueError(f"{_FN}: argument '{name}' holds {n_nan} NaN and {int(array.size - finite.sum()) - n_nan} "
                             "infinite value(s); replace them (e.g. numpy.nan_to_num) before registration")
        biggest = float(np.abs(array).max())
        if biggest > float(np.finfo(np.float32).max):
            raise ValueError(f"{_FN}: argument '{name}' reaches {biggest:.3g}, beyond the float32 range morphreg "
                             "computes in; rescale it")
        array = array.astype(np.float32, copy=False)
    elif array.dtype.kind == "b":
        array = array.astype(np.uint8)
    return io.Volume(np.ascontiguousarray(array), np.eye(4))


def _check_image(volume: io.Volume, name: str) -> None:
    if float(volume.data.max()) == float(volume.data.min()):
        raise ValueError(f"{_FN}: argument '{name}' is a constant image (every voxel {float(volume.data.min()):g}); "
                         "there is nothing to register")


def _check_options(model: Any, method: str | None, device: Any) -> None:
    """The arguments that are not images, checked before any file is read."""
    from .workflows.pipeline import CLASSICAL_METHODS

    if model is not None and not isinstance(model, (str, os.PathLike, SavableModel)):
        raise TypeError(f"{_FN}: argument 'model' must be a built-in name, a run folder or checkpoint path, or a "
                        f"loaded morphreg network, got {type(model).__name__}")
    if method is not None and method not in CLASSICAL_METHODS:
        raise ValueError(f"{_FN}: argument 'method' must be one of {', '.join(CLASSICAL_METHODS)} (or None for a "
                         f"network), got {method!r}")
    if not isinstance(device, str) or not re.fullmatch(r"auto|cpu|cuda(:\d+)?", device):
        raise ValueError(f"{_FN}: argument 'device' must be 'cpu', 'cuda', 'cuda:N' or 'auto', got {device!r}")


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
        for name, value in (("moving", moving), ("fixed", fixed)):
            if value is None:
                raise TypeError(f"{_FN}: argument '{name}' is required (a file path, a numpy array or a torch "
                                "tensor)")
        return load_pair(moving, fixed, moving_seg, fixed_seg,
                         names={"moving": "moving", "fixed": "fixed", "moving_seg": "moving_seg",
                                "fixed_seg": "fixed_seg"})
    paths = [name for name, value in (("moving", moving), ("fixed", fixed), ("moving_seg", moving_seg),
                                      ("fixed_seg", fixed_seg)) if isinstance(value, (str, os.PathLike))]
    if paths:
        raise ValueError(f"morphreg.register: give all inputs as arrays or all as paths ({', '.join(paths)} "
                         f"{'is a path' if len(paths) == 1 else 'are paths'}, the others arrays)")
    for name in ("moving", "fixed"):
        if arrays[name] is None:
            raise TypeError(f"{_FN}: argument '{name}' is required (a file path, a numpy array or a torch tensor)")
        _check_image(arrays[name], name)
    shapes = {name: v.shape for name, v in arrays.items() if v is not None}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"morphreg.register: the arrays must have one shape, got {shapes}")
    for name in ("moving_seg", "fixed_seg"):
        vol = arrays[name]
        if vol is not None:
            from .data import as_label_map

            vol.data = as_label_map(vol.data, f"{_FN}: argument '{name}'")
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
        moving, fixed: file paths (NIfTI, MGZ, NPZ, ...), or numpy arrays / torch tensors
            ``(*spatial)`` (2D or 3D) of one shape: integer, boolean or real floating point,
            finite, not constant. Anything else raises ``TypeError`` or ``ValueError`` naming
            the argument.
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

    _check_options(model, method, device)
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
