"""Gain units: continuous rate control from one set of weights (Cui et al., CVPR 2021; paper 004 Eq. 3).

A gain unit is a positive per-channel vector ``G_n`` that scales the latent before rounding, and an
inverse gain ``G'_n`` that scales the rounded latent back on the decoder::

    y_g = y * G(phi)          (encoder; coded as round(y_g))
    y_hat = round(y_g) * G'(phi)   (decoder)

``N`` vectors are learned per FPN scale; any ``phi`` in ``[0, N - 1]`` interpolates exponentially
between the two neighbours ``n = floor(phi)``, ``l = phi - n``::

    G(phi) = G_n ** (1 - l) * G_{n+1} ** l

The forward gains are parametrised so that every channel's gain grows with ``n`` (a base plus a
cumulative sum of positive steps, in the log domain). With exponential interpolation the gain of every
channel then grows monotonically with ``phi`` as well: a larger ``phi`` quantises every channel more
finely, and the rate falls as ``phi`` falls. The inverse gains are free parameters, as in the paper.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class GainUnits(nn.Module):
    """Per-scale, per-level gain and inverse-gain vectors with exponential interpolation.

    Args:
        num_scales: how many FPN scales share the model (each has its own vectors).
        num_gains: ``N``, the learned levels; ``phi`` ranges over ``[0, N - 1]``.
        channels: latent channels ``M``.
        span: initial ratio between the largest and the smallest gain (log-spaced levels).
        base: initial smallest gain.
    """

    def __init__(self, num_scales: int, num_gains: int, channels: int, span: float = 16.0, base: float = 0.5) -> None:
        super().__init__()
        if num_scales < 1 or num_gains < 2 or channels < 1:
            raise ValueError(f"need num_scales >= 1, num_gains >= 2, channels >= 1, "
                             f"got {num_scales}, {num_gains}, {channels}")
        if span <= 1 or base <= 0:
            raise ValueError(f"need span > 1 and base > 0, got {span}, {base}")
        self.num_scales, self.num_gains, self.channels = num_scales, num_gains, channels
        step = math.log(span) / (num_gains - 1)
        # softplus(raw) = step  <=>  raw = log(expm1(step))
        self.log_base = nn.Parameter(torch.full((num_scales, 1, channels), math.log(base)))
        self.raw_steps = nn.Parameter(torch.full((num_scales, num_gains - 1, channels), math.log(math.expm1(step))))
        levels = math.log(base) + step * torch.arange(num_gains, dtype=torch.float32)
        self.log_inverse = nn.Parameter(-levels.view(1, num_gains, 1).repeat(num_scales, 1, channels))

    @property
    def phi_range(self) -> tuple[float, float]:
        return 0.0, float(self.num_gains - 1)

    def log_gains(self) -> Tensor:
        """``[S, N, M]`` log forward gains, non-decreasing along ``N``."""
        steps = F.softplus(self.raw_steps).cumsum(dim=1)
        return torch.cat((self.log_base, self.log_base + steps), dim=1)

    def _interpolate(self, table: Tensor, scale: Tensor, phi: Tensor) -> Tensor:
        """Exponential interpolation of ``table`` ``[S, N, M]`` at per-item ``scale`` and ``phi`` ``[B]``."""
        phi = phi.clamp(0, self.num_gains - 1)
        low = phi.floor().long().clamp(max=self.num_gains - 2)
        frac = (phi - low.to(phi.dtype)).unsqueeze(-1)
        value = table[scale, low] * (1 - frac) + table[scale, low + 1] * frac
        return value.exp()[..., None, None]

    def forward(self, scale: Tensor, phi: Tensor) -> tuple[Tensor, Tensor]:
        """Gains for a batch.

        Args:
            scale: ``[B]`` long, the FPN scale index of each item.
            phi: ``[B]`` float, the rate parameter of each item, in ``[0, N - 1]``.

        Returns:
            ``(gain, inverse_gain)``, each ``[B, M, 1, 1]``.
        """
        return self._interpolate(self.log_gains(), scale, phi), self._interpolate(self.log_inverse, scale, phi)
