"""HyperVxmDense: one VoxelMorph network conditioned on the smoothness weight λ (HyperMorph).

Hoopes et al. (IPMI 2021) train one network for a whole range of regularisation weights by
feeding λ to a hypernetwork that outputs the registration network's weights. morphreg conditions
the same U-Net with FiLM instead (Perez et al., AAAI 2018): a small MLP maps λ to a scale and a
shift for every convolution's output channels, ``y = conv(x) * (1 + γ(λ)) + β(λ)``, before the
activation. Why FiLM rather than generating all weights:

* it adds 21k parameters to the paper's 2D network of 109k (the paper's hypernetwork has an
  output unit per weight of the network), so the shipped file stays small;
* the convolutions stay ordinary ``nn.Conv`` layers with fixed weights: the same fast
  channels-last CPU path as :class:`VxmDense`, any batch size, and λ may differ per sample;
* the last MLP layer starts at zero, so an untrained HyperVxmDense *is* a VxmDense
  (γ = β = 0) and training starts from the plain network's initialisation.

λ enters as ``t = log(λ / λ_min) / log(λ_max / λ_min)`` in [0, 1] (training samples λ
log-uniformly over ``weight_range``); asking for a λ outside that range is refused, since the
network never saw it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from .layers import check_levels, pad_to_multiple
from .vxm import RegistrationOutput, VxmDense

#: Width of the conditioning MLP's hidden layers.
HIDDEN = 32


class HyperVxmDense(VxmDense):
    """:class:`VxmDense` whose every convolution is FiLM-modulated by the smoothness weight λ.

    Args:
        ndim, enc, dec, int_steps, int_downsize, bidir, in_channels: as :class:`VxmDense`.
        weight_range: ``(λ_min, λ_max)`` the network is trained for, ``0 < λ_min < λ_max``.
        default_weight: λ used when :meth:`forward` gets none (the loss's usual value).

    ``forward(moving, fixed, weight=None)``: ``weight`` a float or a ``(B,)`` tensor of λ values.
    """

    def __init__(
        self,
        ndim: int,
        enc: Sequence[int] = (16, 32, 32, 32),
        dec: Sequence[int] = (32, 32, 32, 32, 32, 16, 16),
        int_steps: int = 0,
        int_downsize: int = 1,
        bidir: bool = False,
        in_channels: int = 1,
        weight_range: Sequence[float] = (0.05, 20.0),
        default_weight: float = 1.0,
    ) -> None:
        super().__init__(ndim, enc, dec, int_steps, int_downsize, bidir, in_channels)
        fn = "HyperVxmDense"
        low, high = (float(v) for v in weight_range)
        if not (0 < low < high and math.isfinite(high)):
            raise ValueError(f"{fn}: 'weight_range' must be (low, high) with 0 < low < high, got {tuple(weight_range)}")
        if not low <= float(default_weight) <= high:
            raise ValueError(f"{fn}: 'default_weight' {default_weight} is outside weight_range [{low:g}, {high:g}]")
        self.config.update(weight_range=[low, high], default_weight=float(default_weight))
        self.weight_range = (low, high)
        self.default_weight = float(default_weight)
        blocks = [*self.unet.encoder, *self.unet.decoder, *self.unet.remaining]
        self.widths = [block[0].out_channels for block in blocks]
        self.film = nn.Sequential(
            nn.Linear(1, HIDDEN), nn.LeakyReLU(0.2), nn.Linear(HIDDEN, HIDDEN), nn.LeakyReLU(0.2),
            nn.Linear(HIDDEN, 2 * sum(self.widths)),
        )
        if not self.film[-1].weight.is_meta:
            nn.init.zeros_(self.film[-1].weight)
            nn.init.zeros_(self.film[-1].bias)

    def check_weight(self, weight: float) -> float:
        """``weight`` as a float, refused (ValueError) outside the trained range."""
        low, high = self.weight_range
        value = float(weight)
        if not (math.isfinite(value) and low * (1 - 1e-6) <= value <= high * (1 + 1e-6)):
            raise ValueError(f"this HyperMorph model was trained for lambda in [{low:g}, {high:g}]; got {value:g}")
        return value

    def condition(self, weight: torch.Tensor) -> torch.Tensor:
        """``(B,)`` λ values -> ``(B, 1)`` network input ``log(λ/λ_min) / log(λ_max/λ_min)``."""
        low, high = self.weight_range
        return (torch.log(weight / low) / math.log(high / low)).reshape(-1, 1)

    def _weights(self, weight: float | torch.Tensor | None, batch: int, like: torch.Tensor) -> torch.Tensor:
        if weight is None:
            weight = self.default_weight
        if not torch.is_tensor(weight):
            weight = torch.tensor([self.check_weight(weight)])
        weight = weight.to(device=like.device, dtype=torch.float32).reshape(-1)
        if weight.numel() == 1:
            weight = weight.expand(batch)
        if weight.numel() != batch:
            raise ValueError(f"HyperVxmDense.forward: 'weight' has {weight.numel()} values for a batch of {batch}")
        return weight

    def predict_field(
        self, moving: torch.Tensor, fixed: torch.Tensor, weight: float | torch.Tensor | None = None
    ) -> torch.Tensor:
        """Raw network output ``(B, ndim, *padded)`` for smoothness weight(s) ``weight``."""
        lam = self._weights(weight, moving.shape[0], moving)
        film = self.film(self.condition(lam)).to(moving.dtype)
        scales, shifts = film.split(sum(self.widths), dim=1)
        check_levels(type(self).__name__, self.unet.levels, moving.shape[2:])
        pair, _ = pad_to_multiple(torch.cat([moving, fixed], dim=1), self.multiple)
        x = pair.contiguous(memory_format=self.memory_format)
        view = (moving.shape[0], -1) + (1,) * self.ndim
        bounds = torch.tensor([0, *self.widths]).cumsum(0).tolist()
        films = iter([(1 + scales[:, a:b].reshape(view), shifts[:, a:b].reshape(view))
                      for a, b in zip(bounds[:-1], bounds[1:])])

        def film_then_activate(block: nn.Module, conv_out: torch.Tensor) -> torch.Tensor:
            scale, shift = next(films)
            return block[1](conv_out * scale + shift)

        x = self.unet.run(x, film_then_activate)
        return self.flow(x).contiguous()

    def forward(
        self, moving: torch.Tensor, fixed: torch.Tensor, weight: float | torch.Tensor | None = None
    ) -> RegistrationOutput:
        """Register ``moving`` to ``fixed`` with smoothness weight ``weight`` (default :attr:`default_weight`)."""
        self._check_inputs(moving, fixed)
        return self._output(moving, fixed, self._field(moving, fixed, weight))
