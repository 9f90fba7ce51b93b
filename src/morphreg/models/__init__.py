"""Registration networks and their checkpoints."""

from .affine import AffineNet
from .cascade import CascadeVxm
from .checkpoint import CheckpointError, SavableModel, load_model
from .hyper import HyperVxmDense
from .layers import ConvBlock, SpatialTransformer, UNet, VecInt
from .probabilistic import ProbVxmDense
from .transmorph import TransMorph
from .vxm import RegistrationOutput, VxmDense

__all__ = [
    "AffineNet",
    "CascadeVxm",
    "CheckpointError",
    "ConvBlock",
    "HyperVxmDense",
    "ProbVxmDense",
    "RegistrationOutput",
    "SavableModel",
    "SpatialTransformer",
    "TransMorph",
    "UNet",
    "VecInt",
    "VxmDense",
    "load_model",
]
