"""Registration networks and their checkpoints."""

from .affine import AffineNet
from .checkpoint import CheckpointError, SavableModel, load_model
from .hyper import HyperVxmDense
from .layers import ConvBlock, SpatialTransformer, UNet, VecInt
from .vxm import RegistrationOutput, VxmDense

__all__ = [
    "AffineNet",
    "CheckpointError",
    "ConvBlock",
    "HyperVxmDense",
    "RegistrationOutput",
    "SavableModel",
    "SpatialTransformer",
    "UNet",
    "VecInt",
    "VxmDense",
    "load_model",
]
