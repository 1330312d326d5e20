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


def interpolate_levels(table: Tensor, scale: Tensor, phi: Tensor) -> Tensor:
    """Exponential interpolation of a log table ``[S, N, C]`` at per-item ``scale`` and ``phi`` ``[B]``:
    ``[B, C, 1, 1]`` positive values."""
    levels = table.shape[1]
    phi = phi.clamp(0, levels - 1)
    low = phi.floor().long().clamp(max=levels - 2)
    frac = (phi - low.to(phi.dtype)).unsqueeze(-1)
    value = table[scale, low] * (1 - frac) + table[scale, low + 1] * frac
    return value.exp()[..., None, None]


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

    def forward(self, scale: Tensor, phi: Tensor) -> tuple[Tensor, Tensor]:
        """Gains for a batch.

        Args:
            scale: ``[B]`` long, the FPN scale index of each item.
            phi: ``[B]`` float, the rate parameter of each item, in ``[0, N - 1]``.

        Returns:
            ``(gain, inverse_gain)``, each ``[B, M, 1, 1]``.
        """
        return interpolate_levels(self.log_gains(), scale, phi), interpolate_levels(self.log_inverse, scale, phi)


class HyperGains(nn.Module):
    """Per-scale, per-level scaling of the hyper-latent before rounding; the encoder alone applies it.

    ``z = h_a(|y_g|)`` grows with the latent gain, by up to the gain span across ``phi``, while each
    hyper channel has one factorized density for all ``phi``: that density must then be wide, and ``z``
    costs as much at the lowest ``phi`` (where ``y_g`` is nearly all zero) as at the highest. Scaling
    ``z`` down as ``phi`` rises keeps its range, and so its density, narrow. The decoder is unchanged:
    ``h_s`` reads the decoded symbols.

    Args:
        num_scales, num_gains, channels: as :class:`GainUnits` (``channels`` of ``z``).
        span: initial ratio between the scaling at the lowest and at the highest level.
    """

    def __init__(self, num_scales: int, num_gains: int, channels: int, span: float = 8.0) -> None:
        super().__init__()
        if span < 1:
            raise ValueError(f"need span >= 1, got {span}")
        levels = -math.log(span) * torch.arange(num_gains, dtype=torch.float32) / (num_gains - 1)
        self.log_scale = nn.Parameter(levels.view(1, num_gains, 1).repeat(num_scales, 1, channels))

    def forward(self, scale: Tensor, phi: Tensor) -> Tensor:
        """``[B, Nz, 1, 1]`` scaling for per-item ``scale`` and ``phi`` ``[B]``."""
        return interpolate_levels(self.log_scale, scale, phi)
