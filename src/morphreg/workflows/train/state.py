"""The network a run trains, and its resumable state (``state.pt``)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ...models import AffineNet, CascadeVxm, HyperVxmDense, ProbVxmDense, SavableModel, TransMorph, VxmDense
from ...models.checkpoint import CheckpointError, atomic_torch_save, check_model_size, safe_torch_load

if TYPE_CHECKING:
    from .settings import TrainSettings

STATE_FORMAT = "morphreg-train-state-v1"


def build_model(settings: TrainSettings, ndim: int) -> SavableModel:
    """The network a run trains: ``VxmDense`` (default), ``AffineNet`` (``model="affine"``), or a
    lecture family: ``CascadeVxm``, ``TransMorph``, ``ProbVxmDense``.

    Its size is checked against the memory budget (:mod:`morphreg._limits`) before any weight
    is allocated.
    """
    field = {"int_steps": settings.int_steps, "int_downsize": settings.int_downsize}
    if settings.model == "affine":
        cls, config = AffineNet, {"ndim": ndim}
    elif settings.model == "cascade":
        cls, config = CascadeVxm, {"ndim": ndim, "stages": settings.stages, "enc": settings.enc,
                                   "dec": settings.dec, **field}
    elif settings.model == "transmorph":
        cls, config = TransMorph, {"ndim": ndim, "bidir": settings.bidir, **field}
    elif settings.model == "probabilistic":
        cls, config = ProbVxmDense, {"ndim": ndim, "enc": settings.enc, "dec": settings.dec,
                                     "bidir": settings.bidir, **field}
    else:
        cls, config = VxmDense, {"ndim": ndim, "enc": settings.enc, "dec": settings.dec,
                                 "int_steps": settings.int_steps, "int_downsize": settings.int_downsize,
                                 "bidir": settings.bidir}
        if settings.hyper:
            cls = HyperVxmDense
            config.update(weight_range=settings.hyper_range, default_weight=settings.weight)
    check_model_size(cls, config, "train: the requested network")
    return cls(**config)


def save_state(path: Path, model: SavableModel, optimizer: torch.optim.Optimizer, step: int, best: float,
                settings: TrainSettings) -> None:
    atomic_torch_save(
        {
            "format": STATE_FORMAT,
            "model": model.checkpoint(),
            "optimizer": optimizer.state_dict(),
            "step": step,
            "best_val_dice": best,
            "torch_rng": torch.get_rng_state(),
            "settings": asdict(settings),
        },
        path,
    )


def load_state(path: Path) -> dict[str, Any]:
    state = safe_torch_load(path)
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise CheckpointError(f"'{path}' is not a morphreg training state")
    return state


