"""Where the work runs: ``auto``, ``cpu`` or ``cuda``, refused up front when CUDA is missing."""

from __future__ import annotations

import torch

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(name: str) -> torch.device:
    """``"auto"`` (CUDA when available, else CPU), ``"cpu"`` or ``"cuda"``.

    Raises:
        ValueError: ``"cuda"`` on a machine (or a torch build) without CUDA, with one line that
            says so, before anything is loaded onto it.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        build = "a CPU-only torch build" if torch.version.cuda is None else f"torch built for CUDA {torch.version.cuda}"
        raise ValueError(f"CUDA is not available on this machine ({build}, torch {torch.__version__}); "
                         "use device cpu or auto")
    return device
