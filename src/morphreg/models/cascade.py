"""CascadeVxm: a recursive cascade of VoxelMorph networks whose fields compose into one.

Zhao et al. (ICCV 2019, "Recursive cascaded networks") register in N steps: stage k sees the
moving image warped by the fields of stages 1..k-1 and the fixed image, and predicts the next
field. morphreg composes the stage fields into ONE displacement (:func:`morphreg.spatial.compose`)
and warps the original moving image once with it at every stage (no repeated interpolation
blur), so the whole cascade is one call returning one field, like :class:`VxmDense`. Each
stage is a :class:`VxmDense` (displacement or diffeomorphic), so a cascade of diffeomorphic
stages is diffeomorphic. The training loss regularises every stage's field (``stage_disps``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .. import spatial
from .._checks import check_positive_int
from .checkpoint import SavableModel
from .vxm import PRECISIONS, RegistrationOutput, VxmDense

#: The most stages a cascade may have (the paper trains up to 10).
MAX_STAGES = 10


class CascadeVxm(SavableModel):
    """``stages`` :class:`VxmDense` networks applied recursively; the fields compose into one.

    Args:
        ndim: 2 or 3.
        stages: number of networks, 1 to :data:`MAX_STAGES` (1 is a plain VxmDense).
        enc, dec, int_steps, int_downsize, in_channels: of every stage, as :class:`VxmDense`.

    ``forward(moving, fixed)`` returns a :class:`RegistrationOutput` whose ``disp`` is
    ``compose(... compose(u_1, u_2) ..., u_N)`` (``u_k`` of stage k, in ``stage_disps``), so
    ``warp(moving, disp)`` equals applying the stages one after the other.
    """

    def __init__(
        self,
        ndim: int,
        stages: int = 3,
        enc: Sequence[int] = (16, 32, 32, 32),
        dec: Sequence[int] = (32, 32, 32, 32, 32, 16, 16),
        int_steps: int = 0,
        int_downsize: int = 1,
        in_channels: int = 1,
    ) -> None:
        super().__init__()
        check_positive_int("CascadeVxm", "stages", stages, maximum=MAX_STAGES)
        self.nets = nn.ModuleList(VxmDense(ndim, enc, dec, int_steps, int_downsize, False, in_channels)
                                  for _ in range(stages))
        self._store_config(ndim=ndim, stages=stages, enc=tuple(enc), dec=tuple(dec), int_steps=int_steps,
                           int_downsize=int_downsize, in_channels=in_channels)
        self.ndim, self.int_steps, self.int_downsize = ndim, int_steps, int_downsize
        self.in_channels, self.bidir = in_channels, False
        self.precision = "float32"

    def set_precision(self, precision: str) -> None:
        """The arithmetic of every stage's U-Net (see :meth:`VxmDense.set_precision`)."""
        if precision not in PRECISIONS:
            raise ValueError(f"CascadeVxm.set_precision: 'precision' must be one of {list(PRECISIONS)}, "
                             f"got {precision!r}")
        self.precision = precision
        for net in self.nets:
            net.set_precision(precision)

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> RegistrationOutput:
        """Register ``moving`` ``(B, C, *spatial)`` to ``fixed`` (same shape) in ``stages`` steps."""
        moved, disp, stage_disps = moving, None, []
        for net in self.nets:
            out = net(moved, fixed)
            stage_disps.append(out.disp)
            disp = out.disp if disp is None else spatial.compose(disp, out.disp)
            moved = spatial.warp(moving, disp)
        assert disp is not None
        return RegistrationOutput(moved, disp, None, None, None, None, tuple(stage_disps))
