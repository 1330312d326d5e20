"""An integer scale network: hyper-latent in, Gaussian scale-table indexes out, exact on every machine.

Why: a hyperprior codec derives the entropy-coder CDF index of every latent element from the decoded
hyper-latent ``z_hat``. When encoder and decoder compute that index in floating point, summation
order (threads, batch size, SIMD width, device) can move a value across a rounding boundary, flip an
index, and desynchronise the rANS decoder for the rest of the stream (CompressAI issues #279, #309).

How: every quantity on the path ``z_hat -> index`` is an integer, and the network is evaluated in
float64, where integers below 2**53 are represented exactly and every sum of them is exact whatever
the order. Weights and biases are fixed-point numbers with :data:`WEIGHT_BITS` fractional bits,
activations carry :data:`ACT_BITS` fractional bits::

    a_0 = z_hat                                  (integers, clamped to +-Z_MAX; 0 fractional bits)
    s_l = conv(a_l, W_l * 2^wb) + b_l * 2^(wb + f_l)          exact integer (f_l = fractional bits of a_l)
    a_{l+1} = clamp(floor(relu(s_l) * 2^(ab - wb - f_l) + 1/2), 0, A_MAX * 2^ab)   (power-of-two scaling: exact)
    index = clamp(floor(s_L * 2^-(wb + f_L) + 1/2), 0, levels - 1)

The bounds (``|W| <= W_MAX``, activations clamped, fan-in known) keep every partial sum far below
2**53; :meth:`IntegerScaleNet.exact_bound` checks it. Training uses the same arithmetic with
straight-through estimators (weights fake-quantised, activations rounded), in float32.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from compressai.ops.bound_ops import LowerBoundFunction
from torch import Tensor, nn

WEIGHT_BITS = 6
"""Fractional bits of weights and biases (a weight is a multiple of 1/64)."""
ACT_BITS = 4
"""Fractional bits of hidden activations (a multiple of 1/16)."""
W_MAX = 8.0
"""Weights are clamped to ``[-W_MAX, W_MAX]`` (at most 10 integer bits after scaling)."""
A_MAX = 1024.0
"""Hidden activations are clamped to ``[0, A_MAX]``."""
Z_MAX = 1024
"""Hyper-latent symbols are clamped to ``[-Z_MAX, Z_MAX]`` before coding and before this network."""
EXACT_LIMIT = 2**52
"""Largest magnitude any accumulator may reach (one bit of margin below float64's 2**53)."""


def round_ste(x: Tensor) -> Tensor:
    """Round (half to even, as ``torch.round``) in the forward pass, identity gradient in the backward pass."""
    return x + (torch.round(x) - x).detach()


def round_half_up_ste(x: Tensor) -> Tensor:
    """``floor(x + 1/2)``, the coding path's rounding (ties are frequent on dyadic values), with an
    identity gradient."""
    return x + (torch.floor(x + 0.5) - x).detach()


def bound_index(x: Tensor, levels: int) -> Tensor:
    """Clamp a continuous index to ``[0, levels - 1]``, passing a gradient outside only back towards the range.

    An identity gradient through the clamp lets the pre-activation run away: a latent that is always zero
    keeps asking for a smaller scale than the table's first, and the index drifts to -1000s, out of reach
    when the latent later needs a larger scale (CompressAI's ``LowerBound`` for the same reason).
    """
    low = x.new_tensor(0.0)
    high = x.new_tensor(-(levels - 1.0))
    return -LowerBoundFunction.apply(-LowerBoundFunction.apply(x, low), high)


class _IntLayer(nn.Module):
    """One fixed-point convolution (or transposed convolution)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, transposed: bool) -> None:
        super().__init__()
        self.stride, self.transposed = stride, transposed
        self.padding = (kernel - stride) // 2 if transposed else kernel // 2
        shape = (in_channels, out_channels, kernel, kernel) if transposed else (out_channels, in_channels, kernel, kernel)
        self.weight = nn.Parameter(torch.empty(shape))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        fan_in = in_channels * kernel * kernel // (stride * stride if transposed else 1)
        nn.init.uniform_(self.weight, -1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in))
        self.fan_in = fan_in

    def _conv(self, x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        if self.transposed:
            return F.conv_transpose2d(x, weight, bias, stride=self.stride, padding=self.padding)
        return F.conv2d(x, weight, bias, stride=self.stride, padding=self.padding)

    def fake_weight(self) -> Tensor:
        scale = 2.0**WEIGHT_BITS
        return round_ste(self.weight.clamp(-W_MAX, W_MAX) * scale) / scale

    def fake_bias(self, in_bits: int) -> Tensor:
        scale = 2.0 ** (WEIGHT_BITS + in_bits)
        return round_ste(self.bias.clamp(-A_MAX, A_MAX) * scale) / scale

    def forward_train(self, x: Tensor, in_bits: int) -> Tensor:
        return self._conv(x, self.fake_weight(), self.fake_bias(in_bits))

    def integer_params(self, in_bits: int) -> tuple[Tensor, Tensor]:
        """Integer weight and bias in float64 (the scaled, rounded values)."""
        weight = torch.round(self.weight.detach().double().clamp(-W_MAX, W_MAX) * 2.0**WEIGHT_BITS)
        bias = torch.round(self.bias.detach().double().clamp(-A_MAX, A_MAX) * 2.0 ** (WEIGHT_BITS + in_bits))
        return weight, bias

    def forward_exact(self, x: Tensor, in_bits: int) -> Tensor:
        weight, bias = self.integer_params(in_bits)
        return self._conv(x, weight.to(x.device), bias.to(x.device))


class IntegerScaleNet(nn.Module):
    """``h_s`` of a scale-only hyperprior with integer arithmetic; outputs scale-table indexes.

    Layout (``z`` at 1/2 the resolution of ``y``)::

        z_hat [B, Nz, h, w] ─> conv3x3 ─> relu ─> convT4x4/2 ─> relu ─> conv1x1 ─> index [B, M, 2h, 2w]

    Args:
        hyper_channels: ``Nz``, channels of ``z``.
        hidden: channels of the hidden layers.
        latent_channels: ``M``, channels of ``y``.
        levels: size of the Gaussian scale table; indexes lie in ``[0, levels - 1]``.
    """

    def __init__(self, hyper_channels: int, hidden: int, latent_channels: int, levels: int) -> None:
        super().__init__()
        self.levels = levels
        self.layers = nn.ModuleList([
            _IntLayer(hyper_channels, hidden, 3, 1, transposed=False),
            _IntLayer(hidden, hidden, 4, 2, transposed=True),
            _IntLayer(hidden, latent_channels, 1, 1, transposed=False),
        ])
        # Start near the middle of the table so early training sees useful scales.
        nn.init.constant_(self.layers[-1].bias, levels / 2)

    @staticmethod
    def _in_bits(layer_index: int) -> int:
        return 0 if layer_index == 0 else ACT_BITS

    def forward(self, z_hat: Tensor) -> Tensor:
        """Training path (float32, straight-through): continuous index ``[B, M, H, W]``, clamped
        (:func:`bound_index`) and rounded in value."""
        x = z_hat
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer.forward_train(x, self._in_bits(i))
            if i < last:
                x = round_half_up_ste(F.relu(x).clamp(max=A_MAX) * 2.0**ACT_BITS) / 2.0**ACT_BITS
        return round_half_up_ste(bound_index(x, self.levels))

    @torch.no_grad()
    def indexes(self, z_symbols: Tensor) -> Tensor:
        """Coding path: exact integer indexes ``[B, M, H, W]`` (int32) from integer hyper-latent symbols.

        Evaluated in float64 on the CPU whatever device the model lives on, so the result depends on
        nothing but the integer weights and the symbols.
        """
        x = z_symbols.detach().to("cpu", torch.float64).clamp(-Z_MAX, Z_MAX)
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            in_bits = self._in_bits(i)
            x = layer.forward_exact(x, in_bits)
            shift = 2.0 ** -(WEIGHT_BITS + in_bits)
            if i < last:
                x = torch.floor(F.relu(x) * (shift * 2.0**ACT_BITS) + 0.5).clamp(0, A_MAX * 2.0**ACT_BITS)
            else:
                x = torch.floor(x * shift + 0.5).clamp(0, self.levels - 1)
        return x.to(torch.int32)

    def exact_bound(self) -> float:
        """Largest accumulator magnitude the coding path can reach; must stay below :data:`EXACT_LIMIT`."""
        bound = 0.0
        for i, layer in enumerate(self.layers):
            weight, bias = layer.integer_params(self._in_bits(i))
            per_output = weight.abs().sum(dim=(0, 2, 3) if layer.transposed else (1, 2, 3)).max().item()
            in_max = Z_MAX if i == 0 else A_MAX * 2.0**ACT_BITS
            bound = max(bound, per_output * in_max + bias.abs().max().item())
        return bound
