"""morphreg: deformable registration of medical images in PyTorch (VoxelMorph and beyond).

Layers: :mod:`morphreg.spatial` (grid convention, warp, integrate), :mod:`morphreg.losses`,
:mod:`morphreg.metrics` (the pure functional core), :mod:`morphreg.models` (networks),
then I/O, workflows and the command line.
"""

from . import losses, metrics, spatial
from ._allocator import reuse_freed_memory
from .api import Registration, register
from .models import RegistrationOutput, VxmDense, load_model

__version__ = "0.1.0"

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
