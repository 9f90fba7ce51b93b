"""The training objective: similarity + λ smoothness [+ γ Dice of warped labels], and validation."""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from ... import _limits, losses, metrics, spatial
from ...data import PairDataset
from .. import distributed as dist_utils
from .settings import TrainSettings


def _one_hot(seg: torch.Tensor, n_labels: int, dtype: torch.dtype) -> torch.Tensor:
    """``(B, 1, *spatial)`` integer labels -> ``(B, n_labels, *spatial)`` float one-hot."""
    return F.one_hot(seg[:, 0].long(), n_labels).movedim(-1, 1).to(dtype)


class LossParts(NamedTuple):
    total: torch.Tensor
    sim: torch.Tensor
    smooth: torch.Tensor
    seg: torch.Tensor


def registration_loss(
    model: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    settings: TrainSettings,
    similarity: torch.nn.Module,
    n_labels: int,
    hyper_weight: float | None = None,
) -> LossParts:
    """The VoxelMorph objective for one batch (bidirectional and semi-supervised as set).

    ``hyper_weight``: λ of this step for a HyperMorph network (given to the network, and the
    loss divided by ``1 + λ``); ``None`` uses ``settings.weight`` on a plain network.
    """
    moving, fixed = batch["moving"], batch["fixed"]
    out = model(moving, fixed) if hyper_weight is None else model(moving, fixed, weight=hyper_weight)
    sim = similarity(out.moved, fixed)
    if settings.bidir and out.moved_fixed is not None:
        sim = 0.5 * (sim + similarity(out.moved_fixed, moving))
    # an affine field is smooth by construction: its gradient penalty would only pull towards identity
    smooth = losses.grad_loss(out.disp) if out.matrix is None else sim.new_zeros(())
    seg = sim.new_zeros(())
    if settings.seg_weight > 0:
        moving_onehot = _one_hot(batch["moving_seg"], n_labels, moving.dtype)
        fixed_onehot = _one_hot(batch["fixed_seg"], n_labels, moving.dtype)
        moved_onehot = spatial.warp(moving_onehot, out.disp)
        seg = losses.dice_loss(moved_onehot[:, 1:], fixed_onehot[:, 1:])
    weight = settings.weight if hyper_weight is None else hyper_weight
    total = settings.sim_weight * sim + weight * smooth + settings.seg_weight * seg
    if hyper_weight is not None:
        total = total / (1.0 + hyper_weight)
    return LossParts(total, sim, smooth, seg)


@torch.no_grad()
def validate(
    model: torch.nn.Module,
    val_set: PairDataset,
    similarity: torch.nn.Module,
    device: torch.device,
    info: dist_utils.DistInfo,
) -> tuple[float, float]:
    """Mean Dice (NaN without labels) and mean similarity loss over the validation pairs."""
    was_training = model.training
    model.eval()
    dices, sims = [], []
    for index in range(info.rank, len(val_set), info.world_size):
        item = val_set[index]
        moving = item["moving"].unsqueeze(0).to(device)
        fixed = item["fixed"].unsqueeze(0).to(device)
        out = model(moving, fixed)
        sims.append(float(similarity(out.moved, fixed)))
        if "moving_seg" in item:
            moved_seg = spatial.warp(item["moving_seg"].unsqueeze(0).to(device), out.disp, mode="nearest")
            fixed_seg = item["fixed_seg"].unsqueeze(0).to(device)
            dices.append(float(metrics.dice(moved_seg, fixed_seg).mean[0]))
    model.train(was_training)
    dices = dist_utils.all_gather_floats(dices, info)
    sims = dist_utils.all_gather_floats(sims, info)
    dice_mean = float(np.nanmean(dices)) if dices else float("nan")
    return dice_mean, float(np.mean(sims)) if sims else float("nan")


def check_one_hot_budget(n_labels: int, batch: int, spatial_shape: tuple[int, ...]) -> None:
    """The Dice loss one-hot encodes labels 0..n_labels-1: refuse label values it cannot hold."""
    nbytes = 4 * 3 * n_labels * batch * math.prod(spatial_shape)  # moving, fixed and warped one-hots
    budget = _limits.memory_limit() // _limits.MODEL_SHARE
    if nbytes > budget:
        raise ValueError(
            f"train: the largest label value is {n_labels - 1}, so the Dice loss (`seg_weight`) needs one-hot "
            f"maps of {n_labels} channels ({_limits.format_bytes(nbytes)} per batch), more than "
            f"{_limits.format_bytes(budget)} (1/{_limits.MODEL_SHARE} of the {_limits.budget_note()}); "
            "relabel the maps to consecutive values 0..K"
        )
