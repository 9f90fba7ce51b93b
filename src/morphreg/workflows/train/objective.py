"""The training objective: similarity + λ smoothness [+ γ Dice of warped labels] [+ μ GradICON], and validation.

A probabilistic network's objective is ``L_sim / (2 σ_I²) + KL [+ γ Dice]`` (the KL to the Laplacian
prior, with λ, replaces the smoothness term); a cascade's smoothness term sums over its stages.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from ... import _limits, losses, metrics, spatial
from ...data import PairDataset
from ...models.probabilistic import kl_loss
from .. import distributed as dist_utils
from .inverse_consistency import gradicon_loss
from .settings import TrainSettings


def _one_hot(seg: torch.Tensor, n_labels: int, dtype: torch.dtype) -> torch.Tensor:
    """``(B, 1, *spatial)`` integer labels -> ``(B, n_labels, *spatial)`` float one-hot."""
    return F.one_hot(seg[:, 0].long(), n_labels).movedim(-1, 1).to(dtype)


class LossParts(NamedTuple):
    """The loss of one step and its unweighted parts (``smooth`` is the KL of a probabilistic model)."""

    total: torch.Tensor
    sim: torch.Tensor
    smooth: torch.Tensor
    seg: torch.Tensor
    ic: torch.Tensor


def _smoothness(out: Any, settings: TrainSettings, weight: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(unweighted term, weighted term)`` of the regulariser of ``out``."""
    if out.matrix is not None:  # an affine field is smooth by construction: a penalty only pulls to identity
        zero = out.disp.new_zeros(())
        return zero, zero
    if out.velocity_stats is not None:
        kl = kl_loss(*out.velocity_stats, prior_lambda=weight)
        return kl, kl
    fields = out.stage_disps if out.stage_disps is not None else (out.disp,)
    smooth = sum(losses.grad_loss(f) for f in fields)
    return smooth, weight * smooth


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
    moving_seg, fixed_seg = batch.get("moving_seg"), batch.get("fixed_seg")
    both_ways = settings.inverse_consistency is not None
    if both_ways:  # one pass over the pairs and their swaps (one forward for DistributedDataParallel)
        moving, fixed = torch.cat([moving, fixed]), torch.cat([fixed, moving])
        if settings.seg_weight > 0:
            moving_seg, fixed_seg = torch.cat([moving_seg, fixed_seg]), torch.cat([fixed_seg, moving_seg])
    out = model(moving, fixed) if hyper_weight is None else model(moving, fixed, weight=hyper_weight)
    sim = similarity(out.moved, fixed)
    if settings.bidir and out.moved_fixed is not None:
        sim = 0.5 * (sim + similarity(out.moved_fixed, moving))
    weight = settings.weight if hyper_weight is None else hyper_weight
    smooth, weighted_smooth = _smoothness(out, settings, weight)
    seg = sim.new_zeros(())
    if settings.seg_weight > 0:
        moving_onehot = _one_hot(moving_seg, n_labels, moving.dtype)
        fixed_onehot = _one_hot(fixed_seg, n_labels, moving.dtype)
        moved_onehot = spatial.warp(moving_onehot, out.disp)
        seg = losses.dice_loss(moved_onehot[:, 1:], fixed_onehot[:, 1:])
    ic = sim.new_zeros(())
    if both_ways:
        forward, backward = out.disp.chunk(2)
        ic = gradicon_loss(forward, backward)
    sim_weight = settings.sim_weight
    if out.velocity_stats is not None:
        sim_weight = sim_weight / (2.0 * settings.image_sigma**2)
    total = sim_weight * sim + weighted_smooth + settings.seg_weight * seg + (settings.ic_weight or 0.0) * ic
    if hyper_weight is not None:
        total = total / (1.0 + hyper_weight)
    return LossParts(total, sim, smooth, seg, ic)


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


def check_one_hot_budget(n_labels: int, batch: int, spatial_shape: tuple[int, ...],
                         source: str | None = None) -> None:
    """The Dice loss one-hot encodes labels 0..n_labels-1: refuse label values it cannot hold.

    ``source`` names the label map holding the largest value (the message names it)."""
    nbytes = 4 * 3 * n_labels * batch * math.prod(spatial_shape)  # moving, fixed and warped one-hots
    budget = _limits.memory_limit() // _limits.MODEL_SHARE
    if nbytes > budget:
        where = f" ({source})" if source else ""
        raise ValueError(
            f"train: the largest label value is {n_labels - 1}{where}, so the Dice loss (`seg_weight`) needs one-hot "
            f"maps of {n_labels} channels ({_limits.format_bytes(nbytes)} per batch), more than "
            f"{_limits.format_bytes(budget)} (1/{_limits.MODEL_SHARE} of the {_limits.budget_note()}); "
            "relabel the maps to consecutive values 0..K"
        )
