"""morphreg: deformable registration of medical images in PyTorch (VoxelMorph and beyond).

Layers: :mod:`morphreg.spatial` (grid convention, warp, integrate), :mod:`morphreg.losses`,
:mod:`morphreg.metrics` (the pure functional core), :mod:`morphreg.models` (networks),
then I/O, workflows and the command line.

The public names below are imported on first use (PEP 562), so that ``import morphreg`` and
``morphreg --help`` do not import torch (about 3 s of a cold start on a shared machine);
``from morphreg import VxmDense`` works as before.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: public name -> the module that defines it (a submodule itself where the name is a module)
_LAZY = {
    "losses": ".losses",
    "metrics": ".metrics",
    "spatial": ".spatial",
    "reuse_freed_memory": "._allocator",
    "Registration": ".api",
    "register": ".api",
    "RegistrationOutput": ".models",
    "VxmDense": ".models",
    "load_model": ".models",
}

__all__ = [
    "Registration",
    "RegistrationOutput",
    "VxmDense",
    "__version__",
    "load_model",
    "losses",
    "metrics",
    "register",
    "reuse_freed_memory",
    "spatial",
]

if TYPE_CHECKING:
    from . import losses, metrics, spatial
    from ._allocator import reuse_freed_memory
    from .api import Registration, register
    from .models import RegistrationOutput, VxmDense, load_model


def __getattr__(name: str) -> Any:
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'morphreg' has no attribute {name!r}")
    module = importlib.import_module(target, __name__)
    value = module if target == f".{name}" else getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
