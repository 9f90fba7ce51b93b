"""ProbVxmDense: probabilistic diffeomorphic VoxelMorph (VoxelMorph-diff; Dalca et al., MICCAI 2018, MedIA 2019).

The network predicts the mean ``μ`` and the log-variance ``log σ²`` of a Gaussian posterior
``q(v | m, f) = N(μ, diag σ²)`` over the stationary velocity ``v``. Training draws
``v = μ + σ ε`` (reparameterisation, ``ε ~ N(0, I)``) and integrates it; inference uses ``μ``.
The loss (:func:`kl_loss` + the image term, in :mod:`morphreg.workflows.train.objective`) is the
paper's negative evidence lower bound:

``1/(2 σ_I²) L_sim(f, m ∘ φ_v) + KL(q || p)``, with the prior ``p(v) = N(0, Λ⁻¹)``, ``Λ = λ L``,
``L = D - A`` the Laplacian of the voxel grid graph (``D`` each voxel's number of neighbours).
For a diagonal ``Σ`` and each velocity component, up to a constant::

    KL = 1/2 [ λ Σ_i D_i σ_i² - Σ_i log σ_i² + λ Σ_(i,j) neighbours (μ_i - μ_j)² ]

so the prior smooths the mean (a diffusion term with weight λ) and pulls every variance towards
``1 / (λ D_i)``; the image term makes the variance small where moving the field changes the match.
:meth:`ProbVxmDense.uncertainty` gives the posterior standard deviation per voxel.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .._checks import check_number
from .layers import conv_class, crop_to
from .vxm import RegistrationOutput, VxmDense

#: Initial bias of the log-variance head (as the paper's code: σ² = e^-10 at the start).
LOG_VAR_INIT = -10.0


class ProbVxmDense(VxmDense):
    """:class:`VxmDense` with a second head for the log-variance of the velocity (diffeomorphic only).

    Args: as :class:`VxmDense`; ``int_steps`` must be > 0 (the posterior is over a velocity).

    In training mode (``model.train()``) the forward pass samples the velocity; in evaluation
    mode it integrates the mean. ``velocity_stats`` of the output holds ``(μ, log σ²)`` cropped to
    the input size, at the network's full resolution (before ``int_downsize``).
    """

    def __init__(
        self,
        ndim: int,
        enc: Sequence[int] = (16, 32, 32, 32),
        dec: Sequence[int] = (32, 32, 32, 32, 32, 16, 16),
        int_steps: int = 7,
        int_downsize: int = 1,
        bidir: bool = False,
        in_channels: int = 1,
    ) -> None:
        if int_steps == 0:
            raise ValueError("ProbVxmDense: the posterior is over a velocity field: 'int_steps' must be > 0")
        super().__init__(ndim, enc, dec, int_steps, int_downsize, bidir, in_channels)
        self.log_var = conv_class(ndim)(self.unet.out_channels, ndim, 3, padding=1)
        if not self.log_var.weight.is_meta:
            nn.init.normal_(self.log_var.weight, mean=0.0, std=1e-10)
        nn.init.constant_(self.log_var.bias, LOG_VAR_INIT)
        self.log_var.to(memory_format=self.memory_format)

    def predict_field(self, moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        """``(B, 2 ndim, *padded)``: the velocity mean, then its log-variance, on the padded grid."""
        from .layers import check_levels, pad_to_multiple

        check_levels(type(self).__name__, self.unet.levels, moving.shape[2:])
        pair, _ = pad_to_multiple(torch.cat([moving, fixed], dim=1), self.multiple)
        features = self.unet(pair.contiguous(memory_format=self.memory_format))
        return torch.cat([self.flow(features), self.log_var(features)], dim=1).contiguous()

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> RegistrationOutput:
        """Register ``moving`` to ``fixed``; samples the velocity in training mode, uses the mean otherwise."""
        self._check_inputs(moving, fixed)
        mean, log_var = self._field(moving, fixed).split(self.ndim, dim=1)
        velocity = mean
        if self.training:
            velocity = mean + torch.exp(0.5 * log_var) * torch.randn_like(mean)
        out = self._output(moving, fixed, velocity)
        shape = list(moving.shape[2:])
        return out._replace(velocity_stats=(crop_to(mean, shape), crop_to(log_var, shape)))

    @staticmethod
    def uncertainty(out: RegistrationOutput) -> torch.Tensor:
        """``(B, 1, *spatial)`` posterior standard deviation of the velocity in voxels, RMS over its components."""
        if out.velocity_stats is None:
            raise ValueError("ProbVxmDense.uncertainty: the output holds no velocity posterior")
        return out.velocity_stats[1].exp().mean(dim=1, keepdim=True).sqrt()


def grid_degree(shape: Sequence[int], like: torch.Tensor) -> torch.Tensor:
    """``(*shape)`` number of grid neighbours of each voxel (``2 ndim`` inside, fewer on the border)."""
    degree = like.new_zeros(tuple(shape))
    for axis, size in enumerate(shape):
        line = like.new_full((size,), 2.0)
        line[0] -= 1
        line[-1] -= 1
        degree = degree + line.reshape([-1 if a == axis else 1 for a in range(len(shape))])
    return degree


def kl_loss(mean: torch.Tensor, log_var: torch.Tensor, prior_lambda: float) -> torch.Tensor:
    """KL divergence of ``N(mean, diag exp(log_var))`` from the Laplacian prior, per voxel (see the module).

    Args:
        mean, log_var: ``(B, ndim, *spatial)``.
        prior_lambda: λ, the prior's precision scale (> 0).

    Returns:
        Scalar: the KL summed over velocity components, averaged over voxels and the batch.
    """
    fn = "morphreg.models.probabilistic.kl_loss"
    check_number(fn, "prior_lambda", prior_lambda, minimum=0.0)
    ndim = mean.dim() - 2
    degree = grid_degree(mean.shape[2:], mean)
    sigma_term = (prior_lambda * degree * log_var.exp() - log_var).mean() * ndim
    # Σ over edges of (μ_i - μ_j)² per voxel: one edge per voxel and axis (forward differences)
    edges = sum((torch.diff(mean, dim=axis) ** 2).mean() for axis in range(2, 2 + ndim))
    return 0.5 * (sigma_term + prior_lambda * ndim * edges)
