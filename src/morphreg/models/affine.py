"""AffineNet: a CNN that predicts an affine transform for a pair (learned affine alignment)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .. import spatial
from .._checks import check_choice, check_pair, check_positive_int
from ..geometry import centred_to_voxel_matrix
from .checkpoint import SavableModel
from .layers import ConvBlock
from .vxm import RegistrationOutput


class AffineNet(SavableModel):
    """Encoder of strided convolutions + global average pooling + a linear head giving an affine.

    The head is initialised at zero, so an untrained network predicts the identity. The
    transform is parametrised about the image centre (``linear = I + dA``, translation as a
    fraction of the extent), which keeps its scale independent of the image size.

    Args:
        ndim: 2 or 3.
        features: widths of the stride-2 convolution blocks.
        in_channels: channels of each input image.

    ``forward(moving, fixed)`` returns a :class:`RegistrationOutput` whose ``matrix`` field is the
    ``(B, ndim, ndim + 1)`` voxel matrix (fixed voxel -> moving voxel) and ``disp`` its dense field.
    """

    def __init__(self, ndim: int, features: Sequence[int] = (16, 32, 32, 64, 64), in_channels: int = 1) -> None:
        super().__init__()
        check_choice("AffineNet", "ndim", ndim, (2, 3))
        check_positive_int("AffineNet", "in_channels", in_channels)
        self._store_config(ndim=ndim, features=tuple(features), in_channels=in_channels)
        self.ndim = ndim
        self.in_channels = in_channels
        blocks = []
        prev = 2 * in_channels
        for nf in features:
            blocks.append(ConvBlock(ndim, prev, nf, stride=2))
            prev = nf
        self.encoder = nn.Sequential(*blocks)
        self.head = nn.Linear(prev, ndim * (ndim + 1))
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def predict_matrix(self, moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        """``(B, ndim, ndim + 1)`` voxel matrix mapping fixed voxels to moving voxels."""
        fn = "AffineNet.forward"
        ndim = check_pair(fn, moving, fixed, match="shape", channels=self.in_channels)
        if ndim != self.ndim:
            raise ValueError(f"{fn}: this model is {self.ndim}D but 'moving' has shape {tuple(moving.shape)}")
        features = self.encoder(torch.cat([moving, fixed], dim=1)).flatten(2).mean(-1)
        params = self.head(features).view(-1, self.ndim, self.ndim + 1)
        eye = torch.eye(self.ndim, dtype=params.dtype, device=params.device)
        return centred_to_voxel_matrix(eye + params[..., : self.ndim], params[..., self.ndim], moving.shape[2:])

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> RegistrationOutput:
        matrix = self.predict_matrix(moving, fixed)
        disp = spatial.affine_to_disp(matrix, moving.shape[2:])
        return RegistrationOutput(spatial.warp(moving, disp), disp, None, None, None, matrix)
