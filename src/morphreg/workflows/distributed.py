"""Thin helpers around ``torch.distributed`` for runs launched with ``torchrun``.

No home-made distribution layer: when ``torchrun`` sets ``WORLD_SIZE > 1`` the process group
is initialised from the environment (``gloo`` on CPU, ``nccl`` on CUDA) and the model is wrapped
in ``DistributedDataParallel``; otherwise every helper is a no-op for one process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in a (possibly single-process) run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def env_int(name: str, default: int) -> int:
    """An integer from a torchrun environment variable, with a clear error for anything else."""
    text = os.environ.get(name)
    if text is None or text.strip() == "":
        return default
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise ValueError(
            f"environment variable {name} must be a non-negative integer (torchrun sets it), got {text!r}; "
            f"unset it to run one process"
        )
    return value


def check_env() -> None:
    """Refuse malformed torchrun variables (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``) before any work."""
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        env_int(name, 0)


def init_from_env(device: torch.device) -> DistInfo:
    """Initialise the process group if launched by torchrun with several processes."""
    world = env_int("WORLD_SIZE", 1)
    if world <= 1:
        return DistInfo()
    local_rank = env_int("LOCAL_RANK", 0)
    env_int("RANK", 0)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank)


def current() -> DistInfo:
    """This process's place in an already initialised process group (single process if none)."""
    if not (dist.is_available() and dist.is_initialized()):
        return DistInfo()
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def all_gather_objects(items: list, info: DistInfo) -> list:
    """Concatenate per-rank lists of picklable rows on every rank (rank order)."""
    if not info.enabled:
        return list(items)
    gathered: list[list | None] = [None] * info.world_size
    dist.all_gather_object(gathered, list(items))
    return [item for part in gathered for item in (part or [])]


def all_reduce_mean(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Mean of ``value`` over ranks (identity for one process)."""
    if not info.enabled:
        return value
    value = value.clone()
    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value / info.world_size


def all_gather_floats(values: list[float], info: DistInfo) -> list[float]:
    """Concatenate per-rank lists of floats on every rank (rank order)."""
    return [float(v) for v in all_gather_objects(list(values), info)]


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def shutdown(succeeded: bool = True) -> None:
    """Destroy the process group, if one was made, before the interpreter exits.

    Left to interpreter exit, gloo's worker threads are torn down in an arbitrary order and a rank
    can abort with ``terminate called without an active exception`` (SIGABRT) after its work
    succeeded, failing the whole torchrun launch (about 1 launch in 15 on this machine). After a
    success the ranks first meet at a barrier, so none tears its connections down while another
    still uses them; after a failure they do not wait (torchrun stops the others).
    """
    if dist.is_available() and dist.is_initialized():
        if succeeded:
            dist.barrier()
        dist.destroy_process_group()
