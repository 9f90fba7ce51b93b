"""Inverse consistency of a pair of fields: GradICON's training penalty and the error reported by the study.

With pull-back displacements ``u_ab`` (``moving=a, fixed=b``: b's grid -> a's points) and ``u_ba``,
``φ_ab ∘ φ_ba`` maps a's grid to b and back; its displacement is ``compose(u_ab, u_ba)`` and is
zero for exactly inverse maps. ICON (Greer et al., ICCV 2021) penalises it; GradICON (Tian et al.,
CVPR 2023) penalises its Jacobian minus the identity instead, ``‖∇(φ_ab ∘ φ_ba) - I‖_F²``, which
regularises less where the images ask for large deformations and trains better.
"""

from __future__ import annotations

import torch

from ... import spatial


def jacobian_penalty(disp: torch.Tensor) -> torch.Tensor:
    """``‖∇(Id + u) - I‖_F² = Σ_jk (∂_k u_j)²`` by forward differences, averaged over voxels and the batch."""
    ndim = disp.shape[1]
    return sum(torch.diff(disp, dim=axis).square().sum(dim=1).mean() for axis in range(2, 2 + ndim))


def gradicon_loss(disp_ab: torch.Tensor, disp_ba: torch.Tensor) -> torch.Tensor:
    """GradICON's penalty on both orders, ``(J(φ_ab∘φ_ba) + J(φ_ba∘φ_ab)) / 2``.

    Args:
        disp_ab, disp_ba: ``(B, ndim, *spatial)`` displacements in voxels, same grid.
    """
    return 0.5 * (jacobian_penalty(spatial.compose(disp_ab, disp_ba))
                  + jacobian_penalty(spatial.compose(disp_ba, disp_ab)))


def inverse_consistency_error(disp_ab: torch.Tensor, disp_ba: torch.Tensor) -> torch.Tensor:
    """``(B,)`` mean length in voxels of ``φ_ab∘φ_ba - Id`` and ``φ_ba∘φ_ab - Id``, averaged over both orders."""
    errors = [spatial.compose(a, b).norm(dim=1).flatten(1).mean(dim=1)
              for a, b in ((disp_ab, disp_ba), (disp_ba, disp_ab))]
    return 0.5 * (errors[0] + errors[1])
