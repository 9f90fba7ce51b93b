"""Which pairs each step trains on: a seeded order per epoch, so a resumed run continues exactly and
every rank of a distributed run takes its share of the same global batch."""

from __future__ import annotations

import torch

from ...data import PairDataset
from .. import distributed as dist_utils
from .settings import TrainSettings


def epoch_order(seed: int, epoch: int, n: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=gen)


def batch_indices(
    settings: TrainSettings, step: int, n: int, info: dist_utils.DistInfo, cache: dict[int, torch.Tensor]
) -> list[tuple[int, int]]:
    """(epoch, dataset index) of this rank's samples for ``step``; depends on nothing else."""
    global_batch = settings.batch_size * info.world_size
    out = []
    for j in range(settings.batch_size):
        position = step * global_batch + info.rank * settings.batch_size + j
        epoch, k = divmod(position, n)
        if epoch not in cache:
            cache.clear()
            cache[epoch] = epoch_order(settings.seed, epoch, n)
        out.append((epoch, int(cache[epoch][k])))
    return out


def collate(dataset: PairDataset, picks: list[tuple[int, int]], device: torch.device) -> dict[str, torch.Tensor]:
    items = []
    for epoch, index in picks:
        dataset.set_epoch(epoch)
        items.append(dataset[index])
    keys = [k for k in items[0] if torch.is_tensor(items[0][k])]
    return {k: torch.stack([it[k] for it in items]).to(device) for k in keys}


