"""What to register with, as data: :class:`RegistrationSpec` -> a registration object for one pair.

A spec holds every option of a registration (method, network path, pre-alignment, refinement,
loss, schedule, initial transform, device) as typed, picklable fields, so the same value can be
sent to another process or machine and turned there into the callable of
:mod:`morphreg.workflows.pipeline` with :meth:`RegistrationSpec.build`. The command line only maps
its flags to a spec (``morphreg register``, ``register --pairs``, ``segment``).

Error messages name the spec's fields in
backquotes (`` `model` ``); the command line turns them into flags.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch

from . import pipeline

#: ``method`` values of a spec.
METHODS = ("network", *pipeline.CLASSICAL_METHODS)

#: The intensity normalisation of the classical methods when none is asked for: one default for
#: ``morphreg register --method`` and ``morphreg.register(method=...)`` (clipping to the 0.5/99.5th
#: percentiles keeps a few hot voxels from squashing the image's contrast, as min-max would).
CLASSICAL_NORMALISATION = "percentile"
#: What a network checkpoint that records no normalisation was trained with (the legacy default).
LEGACY_NETWORK_NORMALISATION = "minmax"


def load_network(path: str, device: torch.device | str = "cpu", name: str = "model") -> Any:
    """A network from a run folder, a checkpoint or a built-in name, on ``device``.

    Raises:
        ValueError: naming `` `name` `` (the field) and why the file is not a morphreg network.
    """
    from .. import zoo
    from ..models import load_model
    from ..models.checkpoint import CheckpointError

    target = Path(path)
    try:
        if not target.exists() and zoo.is_builtin(path):
            return zoo.load(path, map_location=device)
        if not target.exists() and not target.suffix and len(target.parts) == 1:
            raise ValueError(f"`{name}` '{path}' is neither a run folder, a checkpoint nor a built-in model "
                             f"(built-in: {', '.join(zoo.names()) or 'none'}; see `morphreg models`)")
        return load_model(target / "model.pt" if target.is_dir() else target, map_location=device)
    except CheckpointError as err:
        raise ValueError(f"`{name}`: {err}") from None


def network_normalisation(value: str | None, model: Any = None) -> str | None:
    """The intensity normalisation to apply: ``value`` (``"none"``: none), else the network's
    (legacy checkpoints: :data:`LEGACY_NETWORK_NORMALISATION`), else
    :data:`CLASSICAL_NORMALISATION` for the classical methods (``model`` None).

    The command line (flags) and :func:`morphreg.register` (``normalise="model"``) both ask here."""
    if value is None:
        if model is None:
            return CLASSICAL_NORMALISATION
        stored = getattr(model, "metadata", {}).get("normalise", LEGACY_NETWORK_NORMALISATION)
        if stored not in ("minmax", "percentile", None):
            raise ValueError(f"`model`: the checkpoint records an unknown intensity normalisation {stored!r}; "
                             "pass `normalise` minmax|percentile|none")
        return stored
    return None if value == "none" else value


def set_lambda(model: Any, weight: float | None, context: str = "") -> None:
    """Set a HyperMorph network's lambda; refuse a lambda for a network trained for one."""
    if weight is None:
        return
    if not hasattr(model, "check_weight"):
        context = f" {context}" if context else ""
        raise ValueError(f"`weight` {weight:g}{context}: `model` was trained for one lambda "
                         f"({model.metadata.get('weight', '?')}); only a HyperMorph model (train --hyper) takes "
                         "`weight`")
    try:
        model.default_weight = model.check_weight(weight)
    except ValueError as err:
        raise ValueError(f"`weight`: {err}") from None


def tqdm_progress(name: str) -> pipeline.ProgressFn:
    """A per-iteration callback drawing one tqdm bar per pyramid level on stderr."""
    from tqdm.auto import tqdm

    bars: dict[int, Any] = {}

    def progress(level: int, n_levels: int, iteration: int, n_iterations: int, loss: float, elapsed: float) -> None:
        if level not in bars:
            for bar in bars.values():
                bar.close()
            bars[level] = tqdm(total=n_iterations, desc=f"{name} level {level + 1}/{n_levels}", leave=True,
                               file=sys.stderr)
        bar = bars[level]
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}", elapsed=f"{elapsed:.1f}s", refresh=False)
        if iteration + 1 == n_iterations and level + 1 == n_levels:
            bar.close()

    return progress


class Built(NamedTuple):
    """A registration ready to run, and the normalisation of its inputs."""

    registration: pipeline.Registration
    normalise: str | None


@dataclass(frozen=True)
class RegistrationSpec:
    """Everything a registration of one pair needs besides the pair (picklable, immutable).

    Attributes:
        method: ``network`` (``model``) or one of :data:`morphreg.workflows.pipeline.CLASSICAL_METHODS`.
        model: network run folder, checkpoint or built-in name (``network``).
        affine: optimisation-based affine pre-alignment before the deformable step (moments, then
            the affine pyramid; one composed field); ``None``: when
            :func:`morphreg.workflows.pipeline.affine_by_default` says (3D dense/ffd on grids that
            differ, no initial transform), see :meth:`affine_first`.
        affine_model: a learned affine network before the deformable network.
        optimize: instance-specific refinement steps after the registration (0: none).
        loss, weight: similarity and smoothness weight λ of the classical methods / refinement
            (``None``: the method's default; a HyperMorph network takes ``weight`` as its λ).
        preset, levels, iterations: the greedy dense method's schedule.
        normalise: ``minmax``, ``percentile``, ``none``, or ``None`` (the network's own, else
            percentile).
        precision: ``float32`` or ``bf16`` (networks).
        inverse: the registration should give its inverse field too (where it can).
        init_matrix, init_warp: an initial transform file (one pair; see
            :func:`morphreg.workflows.warps.initial_transform`), read as ``init_matrix_format`` /
            ``init_warp_format`` say (``init_matrix_format`` ``None``: only a file that names its
            format is read).
        device: ``auto``, ``cpu`` or ``cuda`` (resolved where the job runs).
        progress: per-iteration progress bars of the classical methods on stderr.
    """

    method: str = "network"
    model: str | None = None
    affine: bool | None = None
    affine_model: str | None = None
    optimize: int = 0
    loss: str | None = None
    weight: float | None = None
    preset: str | None = None
    levels: int | None = None
    iterations: tuple[int, ...] | None = None
    normalise: str | None = None
    precision: str = "float32"
    inverse: bool = False
    init_matrix: str | None = None
    init_warp: str | None = None
    init_matrix_format: str | None = "ras"
    init_warp_format: str = "auto"
    device: str = "auto"
    progress: bool = False

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"`method` must be one of {', '.join(METHODS)}, got {self.method!r}")
        if (self.method == "network") != (self.model is not None):
            raise ValueError("give `model` (a network) or a classical `method`, not both or neither")

    @property
    def batchable(self) -> bool:
        """A plain network: pairs of one shape can share one forward pass."""
        return (self.method == "network" and not (self.affine or self.affine_model or self.optimize)
                and self.init_matrix is None and self.init_warp is None)

    def affine_first(self, pair: Any) -> bool:
        """Whether the affine stage runs for ``pair`` (``affine`` as given, else the default)."""
        if self.affine is not None:
            return self.affine
        return pipeline.affine_by_default(self.method, pair.fixed.ndim, pair.resampled,
                                          initial=bool(self.init_matrix or self.init_warp or self.affine_model))

    def torch_device(self) -> torch.device:
        from .device import resolve_device

        return resolve_device(self.device)

    def network(self, ndim: int, device: torch.device) -> Any:
        """The deformable network (``method`` ``network``), checked against the images' ``ndim``."""
        return _network(str(self.model), "model", device, ndim)

    def build(self, pair: Any, device: torch.device | None = None, *, moving_path: Any = None,
              key: str | None = None) -> Built:
        """The registration of ``pair`` (a :class:`morphreg.workflows.files.PairOnGrid`) on ``device``.

        Args:
            pair: the loaded pair (its grid sets the affine methods' millimetres, its ``ndim``
                is checked against the networks').
            device: where to run (default: :meth:`torch_device`).
            moving_path, key: the moving image's file and ``.npz`` array (initial matrices in
                FSL/LTA form are relative to the moving image's own grid).
        """
        from .warps import initial_transform

        device = device if device is not None else self.torch_device()
        ndim = pair.fixed.ndim
        affine_first = self.affine_first(pair)
        registration: Any
        if self.method == "network":
            model = self.network(ndim, device)
            if self.weight is not None and not self.optimize or hasattr(model, "check_weight"):
                set_lambda(model, self.weight, "(without `optimize`)")
            normalise = network_normalisation(self.normalise, model)
            registration = pipeline.NetworkRegistration(model, device, inverse=self.inverse and self.batchable,
                                                        precision=self.precision)
        else:
            normalise = network_normalisation(self.normalise)
            schedule = pipeline.GreedySchedule.from_options(self.preset, self.levels, self.iterations)
            registration = pipeline.OnDevice(pipeline.classical_registration(
                self.method, loss=self.loss, weight=self.weight, grid_affine=pair.fixed.affine, schedule=schedule,
                progress=tqdm_progress(self.method) if self.progress else None,
                inverse=self.inverse and not affine_first), device)
        if self.affine_model:
            affine_net = pipeline.NetworkRegistration(_network(self.affine_model, "affine_model", device, ndim,
                                                               affine=True), device)
            registration = pipeline.AffineThen(affine_net, registration)
        elif affine_first:
            registration = pipeline.with_affine(registration, pair.fixed.affine, device,
                                                progress=tqdm_progress("affine") if self.progress else None)
        if self.init_matrix or self.init_warp:
            disp, matrix = initial_transform(pair, moving_path=moving_path, init_matrix=self.init_matrix,
                                             init_warp=self.init_warp, matrix_format=self.init_matrix_format,
                                             warp_format=self.init_warp_format, key=key)
            registration = pipeline.WithInitial(registration, disp, matrix)
        if self.optimize:
            registration = pipeline.Refine(registration, self.optimize, self.loss or "ncc", self.weight)
        return Built(registration, normalise)


def _network(path: str, name: str, device: torch.device, ndim: int, affine: bool = False) -> Any:
    model = load_network(path, device, name)
    if model.ndim != ndim:
        raise ValueError(f"`{name}` is a {model.ndim}D network but the images are {ndim}D")
    if affine and type(model).__name__ != "AffineNet":
        raise ValueError(f"`{name}` '{path}' holds a {type(model).__name__} (a deformable network), not an "
                         "affine one; give a run of `morphreg train --model affine`, or pass it as `model`")
    return model
