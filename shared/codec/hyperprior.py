"""A variable-rate scale-hyperprior codec for 256-channel FPN maps: one model object for P2..P5.

Ballé et al. 2018 ("Variational image compression with a scale hyperprior") with Cui et al.'s gain
units (paper 004, Eq. 3) and an integer ``h_s`` (see :mod:`.intnet`). One checkpoint serves the four
scales: per-scale normalisation constants (computed from training features, stored as buffers),
per-scale gain vectors, and, by default, per-scale transforms (``per_scale=True``; ``False`` shares
one set of transforms between the scales, see the measurement below)::

    x [B,256,H,W] ─> (x - mean_s) / std_s ─> pad to 4 ─> g_a[s] ─> y ─> * G_s(phi) ─> y_g
                                                                                     │
        z_hat = round(h_a[s](|y_g|)) ──> EntropyBottleneck[s] (rANS) ──> z string    │
          │                                                                          │
          └─> h_s[s] (integer, exact) ─> index ─> GaussianConditional (rANS) <── round(y_g) ─> y string

    decoder: z string ─> z_hat ─> h_s[s] ─> index ─> y string ─> round(y_g) * G'_s(phi) ─> g_s[s] ─> crop
             ─> * std_s + mean_s

Symbols whose index is the table's smallest scale (``scale_min``, 0.11) are not coded: both sides know the
index from ``z`` before the y string, and such a symbol is zero (the encoder sends it as zero). A Gaussian of
that scale puts 7e-6 of its mass outside [-0.5, 0.5]; at the shipped xscale checkpoint's default phi on an
800x1216 frame those symbols are 81% of P2's and 49 of 1.58 million are not zero. Not coding them makes rANS
and its list conversions, about a third of the coding time there, two to three times cheaper, and the
payloads 1.8% (P2) to 3% (P4) smaller.

    g_a: conv3x3/2 (256->M), GDN, conv3x3 (M->M)      g_s: conv3x3 (M->M), IGDN, convT4x4/2 (M->256)
    h_a: conv3x3 (M->Nh), ReLU, conv3x3/2 (Nh->Nz)    h_s: see IntegerScaleNet

The training path (:meth:`FeatureHyperprior.forward`) estimates the rate from likelihoods; the coding
path (:meth:`compress`, :meth:`decompress`) emits and reads real rANS bytes and refuses to run before
:meth:`update` has frozen the CDF tables into buffers. The tables are computed once, stored in the
checkpoint and never recomputed on load, so the encoder and the decoder use byte-identical tables.

Why per-scale transforms (measured with ``fpnlink codec train --scales``; tiny configuration M=16,
Nz=8, 4 gains, lambda 16..8192, batch 8 crops of 32; random:0 features of 24 synthetic scenes at
128 px, 6 held-out scenes; feature PSNR range over phi 0..3 at bits per input pixel)::

    shared, 600 steps            P2 29.5-30.0 dB @ 0.98-1.68   P3 29.9-30.4 @ 0.28-0.45   P5 32.4-32.9 @ 0.055-0.065
    per-scale, 150 steps each    P2 32.1-32.7 dB @ 1.12-1.82   P3 32.3-32.9 @ 0.31-0.49   P5 33.3-33.6 @ 0.055-0.070
    per-scale, 600 steps each    P2 32.6-33.9 dB @ 0.53-1.46   P3 32.4-33.8 @ 0.14-0.38   P5 33.4-34.3 @ 0.046-0.065
    shared with M=64, 600 steps  P2 29.8-32.3 dB @ 1.45-5.96   P3 29.7-32.3 @ 0.36-1.27   P5 32.2-33.2 @ 0.055-0.097

At equal compute (150 steps per scale) the per-scale models are 2-3 dB better at the same rate on
every scale, and a shared model with four times the latent channels does not close the gap, nor does
sharing between P2 and P3 alone (P2 31.2-31.9 dB at 0.69-1.65): the scales' feature subspaces differ
beyond what per-channel normalisation and gains absorb. Per-scale transforms cost four times the
parameters (M=128: 5.5 M, 22 MB in float32) but no time: each scale runs its own transforms once either way.
"""

from __future__ import annotations

import array
import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from compressai.entropy_models import EntropyBottleneck, GaussianConditional
from compressai.entropy_models.entropy_models import pmf_to_quantized_cdf
from compressai.layers import GDN
from torch import Tensor, nn

from .gain import GainUnits, HyperGains
from .intnet import Z_MAX, IntegerScaleNet, round_ste

CHECKPOINT_FORMAT = "fpnlink.learned-codec/1"
PAD_MULTIPLE = 4
"""Spatial sizes are padded (replicate) to a multiple of this: ``y`` is 1/2 and ``z`` 1/4 of the input."""
Y_SYMBOL_MAX = 2**20
"""Latent symbols are clamped to this magnitude before coding (far beyond any trained range)."""
ENTROPY_PRECISION = 16
SKIPPED_INDEX = 0
"""The y CDF index (the smallest scale) whose symbols are zero and not coded (see the module docstring)."""
MIN_CODED_SYMBOLS = 8
"""Positions every y string codes whatever their index: CompressAI's encoder sizes its output buffer by the
symbol count and overruns it (a heap corruption) on fewer than about four symbols."""


@dataclass(frozen=True)
class HyperpriorConfig:
    """Architecture of a :class:`FeatureHyperprior`; stored in every checkpoint.

    Args:
        channels: feature channels (256 for torchvision's FPN).
        latent: ``M``, channels of ``y``.
        hyper: ``Nz``, channels of ``z``.
        hidden: hidden channels of ``h_a`` and ``h_s``.
        num_gains: ``N`` gain vectors per scale; ``phi`` ranges over ``[0, N - 1]``.
        num_scales: FPN scales served (``'0'..'3'``).
        per_scale: one set of transforms and hyper-latent density per scale (True), or one set shared
            by all scales (False); normalisation and gains are per scale either way.
        scale_min, scale_max, scale_levels: the Gaussian scale table (log-spaced).
        hyper_gains: scale ``z`` per level before rounding (:class:`HyperGains`); older checkpoints lack it.
    """

    channels: int = 256
    latent: int = 128
    hyper: int = 64
    hidden: int = 64
    num_gains: int = 6
    num_scales: int = 4
    per_scale: bool = True
    scale_min: float = 0.11
    scale_max: float = 256.0
    scale_levels: int = 64
    hyper_gains: bool = False

    def __post_init__(self) -> None:
        for name in ("channels", "latent", "hyper", "hidden", "num_scales"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_gains < 2:
            raise ValueError(f"num_gains must be >= 2, got {self.num_gains}")
        if not 0 < self.scale_min < self.scale_max or self.scale_levels < 2:
            raise ValueError(f"bad scale table ({self.scale_min}, {self.scale_max}, {self.scale_levels})")

    @property
    def log_scale_step(self) -> float:
        return (math.log(self.scale_max) - math.log(self.scale_min)) / (self.scale_levels - 1)

    def identity(self) -> dict[str, Any]:
        """The fields that identify the architecture in a fingerprint. ``hyper_gains`` is left out: the
        state dict already shows it, and checkpoints from before it keep their fingerprints."""
        fields = asdict(self)
        del fields["hyper_gains"]
        return fields

    def scale_table(self) -> list[float]:
        return [math.exp(math.log(self.scale_min) + i * self.log_scale_step) for i in range(self.scale_levels)]


@dataclass
class _Tables:
    """Frozen rANS tables as the coder wants them (lists), built from the model's int32 buffers."""

    cdf: list[list[int]]
    length: list[int]
    offset: list[int]


def _table_buffers(model: nn.Module, prefix: str) -> tuple[Tensor, Tensor, Tensor]:
    return getattr(model, f"{prefix}_cdf"), getattr(model, f"{prefix}_cdf_length"), getattr(model, f"{prefix}_offset")


class _Branch(nn.Module):
    """The transforms and the hyper-latent density of one scale (or of all, when shared)."""

    def __init__(self, config: HyperpriorConfig) -> None:
        super().__init__()
        c, m, nz, nh = config.channels, config.latent, config.hyper, config.hidden
        self.g_a = nn.Sequential(nn.Conv2d(c, m, 3, 2, 1), GDN(m), nn.Conv2d(m, m, 3, 1, 1))
        self.g_s = nn.Sequential(nn.Conv2d(m, m, 3, 1, 1), GDN(m, inverse=True), nn.ConvTranspose2d(m, c, 4, 2, 1))
        self.h_a = nn.Sequential(nn.Conv2d(m, nh, 3, 1, 1), nn.ReLU(inplace=True), nn.Conv2d(nh, nz, 3, 2, 1))
        self.h_s = IntegerScaleNet(nz, nh, m, config.scale_levels)
        self.entropy_bottleneck = EntropyBottleneck(nz)


class FeatureHyperprior(nn.Module):
    """The variable-rate feature codec network for P2..P5 (see the module docstring for the data flow).

    Args:
        config: architecture sizes.
    """

    checkpoint_format = CHECKPOINT_FORMAT
    config_class: type[HyperpriorConfig] = HyperpriorConfig
    branch_class: type[_Branch] = _Branch

    def __init__(self, config: HyperpriorConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or self.config_class()
        self.register_buffer("feature_mean", torch.zeros(config.num_scales, config.channels))
        self.register_buffer("feature_std", torch.ones(config.num_scales, config.channels))
        self.branches = nn.ModuleList(self.branch_class(config) for _ in range(config.num_scales if config.per_scale else 1))
        self.gains = GainUnits(config.num_scales, config.num_gains, config.latent)
        self.hyper_gains = HyperGains(config.num_scales, config.num_gains, config.hyper) if config.hyper_gains else None
        self.gaussian_conditional = GaussianConditional(None, scale_bound=config.scale_min)
        for prefix in ("z", "y"):
            self.register_buffer(f"{prefix}_cdf", torch.zeros(0, 0, dtype=torch.int32))
            self.register_buffer(f"{prefix}_cdf_length", torch.zeros(0, dtype=torch.int32))
            self.register_buffer(f"{prefix}_offset", torch.zeros(0, dtype=torch.int32))
        self._tables: dict[str, _Tables] = {}
        self.meta: dict[str, Any] = {}
        """Provenance from the checkpoint (backbone weights and fingerprint, input size, steps); not hashed."""

    # ------------------------------------------------------------------------------------------ helpers

    @property
    def phi_range(self) -> tuple[float, float]:
        return self.gains.phi_range

    def branch(self, scale: int) -> _Branch:
        """The transforms that code scale ``scale``."""
        if not 0 <= scale < self.config.num_scales:
            raise ValueError(f"scale index must lie in 0..{self.config.num_scales - 1}, got {scale}")
        return self.branches[scale if self.config.per_scale else 0]

    def _z_rows(self, scale: int) -> int:
        """First row of scale ``scale``'s hyper-latent CDFs in the z table."""
        return scale * self.config.hyper if self.config.per_scale else 0

    @staticmethod
    def _single_scale(scale: Tensor) -> int:
        first = int(scale[0])
        if not bool((scale == first).all()):
            raise ValueError("a batch must hold one scale (the scales have their own transforms)")
        return first

    def set_normalisation(self, mean: Tensor, std: Tensor) -> None:
        """Per-scale, per-channel constants ``[S, C]`` measured on training features."""
        expected = (self.config.num_scales, self.config.channels)
        if tuple(mean.shape) != expected or tuple(std.shape) != expected:
            raise ValueError(f"mean and std must be {expected}, got {tuple(mean.shape)} and {tuple(std.shape)}")
        if not (torch.isfinite(mean).all() and torch.isfinite(std).all() and (std > 0).all()):
            raise ValueError("normalisation constants must be finite with std > 0")
        self.feature_mean.copy_(mean)
        self.feature_std.copy_(std)

    def _normalise(self, x: Tensor, scale: Tensor) -> Tensor:
        inverse_std = self.feature_std[scale][..., None, None].reciprocal()
        return torch.addcmul(-self.feature_mean[scale][..., None, None] * inverse_std, x, inverse_std)

    def _denormalise(self, x: Tensor, scale: Tensor) -> Tensor:
        return x * self.feature_std[scale][..., None, None] + self.feature_mean[scale][..., None, None]

    @staticmethod
    def padded_size(height: int, width: int) -> tuple[int, int]:
        return (-(-height // PAD_MULTIPLE) * PAD_MULTIPLE, -(-width // PAD_MULTIPLE) * PAD_MULTIPLE)

    def latent_shapes(self, height: int, width: int) -> list[tuple[int, int, int]]:
        """``[(Nz, h/4, w/4), (M, h/2, w/2)]`` of the padded input: the z and y substreams, in that order."""
        ph, pw = self.padded_size(height, width)
        return [(self.config.hyper, ph // 4, pw // 4), (self.config.latent, ph // 2, pw // 2)]

    def _pad(self, x: Tensor) -> Tensor:
        ph, pw = self.padded_size(x.shape[-2], x.shape[-1])
        if (ph, pw) == tuple(x.shape[-2:]):
            return x
        return F.pad(x, (0, pw - x.shape[-1], 0, ph - x.shape[-2]), mode="replicate")

    def hyper_latent(self, branch: _Branch, y_g: Tensor, scale: Tensor, phi: Tensor) -> Tensor:
        """``z`` before rounding: ``h_a(|y_g|)``, scaled per level when the model has hyper gains."""
        z = branch.h_a(y_g.abs())
        return z if self.hyper_gains is None else z * self.hyper_gains(scale, phi)

    def _scale_sigma(self, index: Tensor) -> Tensor:
        return torch.exp(math.log(self.config.scale_min) + index * self.config.log_scale_step)

    @staticmethod
    def _z_likelihood(eb: EntropyBottleneck, z: Tensor) -> Tensor:
        """EntropyBottleneck likelihood of ``z`` ``[B, Nz, h, w]`` (values already noisy or rounded)."""
        values = z.transpose(0, 1).reshape(z.shape[1], 1, -1)
        likelihood, _, _ = eb._likelihood(values)
        likelihood = eb.likelihood_lower_bound(likelihood)
        return likelihood.reshape(z.shape[1], z.shape[0], *z.shape[2:]).transpose(0, 1)

    # ------------------------------------------------------------------------------------ training path

    def forward(self, x: Tensor, scale: Tensor, phi: Tensor) -> dict[str, Any]:
        """Training path: additive noise for the rates, straight-through rounding for the reconstruction.

        Args:
            x: ``[B, C, H, W]`` raw features.
            scale: ``[B]`` long FPN scale indexes (all equal when the model is per scale).
            phi: ``[B]`` float rate parameters in :attr:`phi_range`.

        Returns:
            ``x_hat`` (raw domain), ``x_norm`` and ``x_hat_norm`` (normalised domain, for the distortion),
            ``likelihoods`` (``{"y", "z"}``) and ``bits`` (``[B]``, estimated bits per item).
        """
        height, width = x.shape[-2:]
        branch = self.branch(self._single_scale(scale)) if self.config.per_scale else self.branches[0]
        x_norm = self._normalise(x, scale)
        gain, inverse = self.gains(scale, phi)
        y_g = branch.g_a(self._pad(x_norm)) * gain
        z = self.hyper_latent(branch, y_g, scale, phi)
        if self.training:
            z_tilde = z + torch.empty_like(z).uniform_(-0.5, 0.5)
            y_tilde = y_g + torch.empty_like(y_g).uniform_(-0.5, 0.5)
        else:
            z_tilde, y_tilde = torch.round(z), torch.round(y_g)
        z_hat = round_ste(z).clamp(-Z_MAX, Z_MAX)
        sigma = self._scale_sigma(branch.h_s(z_hat))
        z_likelihood = self._z_likelihood(branch.entropy_bottleneck, z_tilde)
        y_likelihood = self.gaussian_conditional.likelihood_lower_bound(
            self.gaussian_conditional._likelihood(y_tilde, sigma))
        x_hat_norm = branch.g_s(round_ste(y_g) * inverse)[..., :height, :width]
        bits = -(torch.log2(y_likelihood).sum(dim=(1, 2, 3)) + torch.log2(z_likelihood).sum(dim=(1, 2, 3)))
        return {
            "x_hat": self._denormalise(x_hat_norm, scale),
            "x_norm": x_norm,
            "x_hat_norm": x_hat_norm,
            "likelihoods": {"y": y_likelihood, "z": z_likelihood},
            "bits": bits,
        }

    # -------------------------------------------------------------------------------------- freezing

    @torch.no_grad()
    def update(self) -> None:
        """Freeze the CDF tables of ``z`` (from the learned density) and ``y`` (from the scale table).

        Run once after training, before saving; decoders load the tables as stored and never call this.
        """
        cdfs, lengths, offsets = [], [], []
        for branch in self.branches:
            eb = branch.entropy_bottleneck
            eb._update_quantiles()
            quantiles = eb.quantiles.detach().cpu().double()[:, 0, :]
            low = torch.floor(quantiles[:, 0]).clamp(-Z_MAX, 0).long()
            high = torch.ceil(quantiles[:, 2]).clamp(0, Z_MAX).long()
            base = int(low.min())
            samples = torch.arange(base, int(high.max()) + 1, dtype=torch.float32, device=eb.quantiles.device)
            values = samples.view(1, 1, -1).expand(self.config.hyper, 1, -1).contiguous()
            pmf, lower, upper = (t[:, 0].cpu() for t in eb._likelihood(values, stop_gradient=True))
            for channel in range(self.config.hyper):
                start, stop = int(low[channel]) - base, int(high[channel]) - base + 1
                tail = torch.sigmoid(lower[channel, start:start + 1]) + torch.sigmoid(-upper[channel, stop - 1:stop])
                cdfs.append(pmf_to_quantized_cdf(torch.cat((pmf[channel, start:stop], tail)), ENTROPY_PRECISION))
                lengths.append(stop - start + 2)
            offsets += low.tolist()
        self._store("z", cdfs, lengths, offsets)

        gc = GaussianConditional(self.config.scale_table(), scale_bound=self.config.scale_min)
        gc.update()
        y_cdfs = [gc._quantized_cdf[i, : int(gc._cdf_length[i])] for i in range(self.config.scale_levels)]
        self._store("y", y_cdfs, gc._cdf_length.tolist(), gc._offset.tolist())

    def _store(self, prefix: str, cdfs: list[Tensor], lengths: list[int], offsets: list[int]) -> None:
        width = max(len(c) for c in cdfs)
        table = torch.zeros(len(cdfs), width, dtype=torch.int32)
        for i, cdf in enumerate(cdfs):
            table[i, : len(cdf)] = torch.as_tensor(cdf, dtype=torch.int32)
        device = self.feature_mean.device
        setattr(self, f"{prefix}_cdf", table.to(device))
        setattr(self, f"{prefix}_cdf_length", torch.tensor(lengths, dtype=torch.int32, device=device))
        setattr(self, f"{prefix}_offset", torch.tensor(offsets, dtype=torch.int32, device=device))
        self._tables.pop(prefix, None)

    @property
    def frozen(self) -> bool:
        return all(getattr(self, f"{p}_cdf").numel() > 0 for p in ("z", "y"))

    def _coder_tables(self, prefix: str) -> _Tables:
        if not self.frozen:
            raise RuntimeError("CDF tables are not frozen: run update() before compress()/decompress()")
        if prefix not in self._tables:
            cdf, length, offset = (t.cpu() for t in _table_buffers(self, prefix))
            self._tables[prefix] = _Tables(cdf.tolist(), length.tolist(), offset.tolist())
        return self._tables[prefix]

    # ---------------------------------------------------------------------------------- coding path

    @torch.no_grad()
    def compress(self, x: Tensor, scale: int, phi: float) -> dict[str, Any]:
        """Code a batch of same-sized maps of one scale at one ``phi``.

        Args:
            x: ``[B, C, H, W]`` raw features.
            scale: FPN scale index (``0`` for P2 ... ``3`` for P5).
            phi: rate parameter in :attr:`phi_range`.

        Returns:
            ``strings``: per item ``[z_bytes, y_bytes]``; ``latent_shapes``: ``[(Nz, h, w), (M, h, w)]``;
            ``z_symbols``, ``y_symbols`` (int32) and ``indexes`` (int32, the y CDF indexes), for checks.
        """
        from compressai import ans

        batch, height, width = x.shape[0], x.shape[-2], x.shape[-1]
        device = self.feature_mean.device
        scales = torch.full((batch,), scale, dtype=torch.long, device=device)
        phis = torch.full((batch,), float(phi), dtype=torch.float32, device=device)
        branch = self.branch(scale)
        gain, _ = self.gains(scales, phis)
        y_g = branch.g_a(self._pad(self._normalise(x.to(device, torch.float32), scales))) * gain
        if not torch.isfinite(y_g).all():  # NaN/inf in x reach y (every input is in some receptive field)
            raise ValueError("features contain NaN or infinity")
        z = self.hyper_latent(branch, y_g, scales, phis)
        z_symbols = torch.round(z).clamp(-Z_MAX, Z_MAX).to("cpu", torch.int32)
        indexes = branch.h_s.indexes(z_symbols)
        y_symbols = torch.round(y_g).clamp(-Y_SYMBOL_MAX, Y_SYMBOL_MAX).to("cpu", torch.int32)
        z_tables, y_tables = self._coder_tables("z"), self._coder_tables("y")
        z_index = _channel_indexes(z_symbols.shape[1:], self._z_rows(scale))
        y_symbols.masked_fill_(indexes == SKIPPED_INDEX, 0)
        strings = []
        encoder = ans.RansEncoder()
        for i in range(batch):
            z_bytes = encoder.encode_with_indexes(z_symbols[i].numpy().ravel().tolist(), z_index,
                                                  z_tables.cdf, z_tables.length, z_tables.offset)
            coded = _coded_positions(indexes[i])
            y_bytes = encoder.encode_with_indexes(y_symbols[i].ravel()[coded].tolist(),
                                                  indexes[i].ravel()[coded].tolist(),
                                                  y_tables.cdf, y_tables.length, y_tables.offset)
            strings.append([z_bytes, y_bytes])
        return {
            "strings": strings,
            "latent_shapes": self.latent_shapes(height, width),
            "z_symbols": z_symbols,
            "y_symbols": y_symbols,
            "indexes": indexes,
        }

    @torch.no_grad()
    def decode_latents(self, strings: list[list[bytes]], shape: tuple[int, int], scale: int) -> dict[str, Tensor]:
        """Entropy-decode what :meth:`compress` produced, up to the integer latents.

        Args:
            strings: per item ``[z_bytes, y_bytes]``.
            shape: ``(H, W)`` of the decoded maps (the padding is derived from it).
            scale: as given to :meth:`compress`.

        Returns:
            ``z_symbols``, ``y_symbols`` and ``indexes`` (int32, CPU).
        """
        from compressai import ans

        height, width = shape
        (nz, zh, zw), (m, yh, yw) = self.latent_shapes(height, width)
        z_tables, y_tables = self._coder_tables("z"), self._coder_tables("y")
        branch = self.branch(scale)
        z_index = _channel_indexes((nz, zh, zw), self._z_rows(scale))
        decoder = ans.RansDecoder()
        z_symbols = torch.empty(len(strings), nz, zh, zw, dtype=torch.int32)
        for i, (z_bytes, _) in enumerate(strings):
            values = decoder.decode_with_indexes(z_bytes, z_index, z_tables.cdf, z_tables.length, z_tables.offset)
            z_symbols[i] = _int32_tensor(values).view(nz, zh, zw)
        z_symbols.clamp_(-Z_MAX, Z_MAX)
        indexes = branch.h_s.indexes(z_symbols)
        y_symbols = torch.zeros(len(strings), m * yh * yw, dtype=torch.int32)
        for i, (_, y_bytes) in enumerate(strings):
            coded = _coded_positions(indexes[i])
            values = decoder.decode_with_indexes(y_bytes, indexes[i].ravel()[coded].tolist(),
                                                 y_tables.cdf, y_tables.length, y_tables.offset)
            y_symbols[i, coded] = _int32_tensor(values)
        y_symbols = y_symbols.view(len(strings), m, yh, yw)
        return {"z_symbols": z_symbols, "y_symbols": y_symbols, "indexes": indexes}

    def dequantise(self, y_symbols: Tensor, scale: int, phi: float) -> Tensor:
        """``round(y_g) * G'(phi)``: integer latents back to the synthesis domain, on the model's device."""
        device = self.feature_mean.device
        scales = torch.full((len(y_symbols),), scale, dtype=torch.long, device=device)
        phis = torch.full((len(y_symbols),), float(phi), dtype=torch.float32, device=device)
        _, inverse = self.gains(scales, phis)
        return y_symbols.to(device, torch.float32) * inverse

    @torch.no_grad()
    def reconstruct(self, y_symbols: Tensor, scale: int, phi: float, shape: tuple[int, int]) -> Tensor:
        """Synthesis of decoded integer latents: raw-domain ``[B, C, H, W]`` float32 on the model's device."""
        height, width = shape
        branch = self.branch(scale)
        hidden = branch.g_s[:-1](self.dequantise(y_symbols, scale, phi))
        # The de-normalisation is folded into the last layer (one pass over the full-size output).
        last, std, mean = branch.g_s[-1], self.feature_std[scale], self.feature_mean[scale]
        x_hat = F.conv_transpose2d(hidden, last.weight * std.view(1, -1, 1, 1), torch.addcmul(mean, last.bias, std),
                                   stride=last.stride, padding=last.padding)
        return x_hat[..., :height, :width]

    def decompress(self, strings: list[list[bytes]], shape: tuple[int, int], scale: int, phi: float) -> dict[str, Any]:
        """Decode what :meth:`compress` produced: :meth:`decode_latents`, then :meth:`reconstruct`.

        Returns:
            ``x_hat`` ``[B, C, H, W]`` float32 (on the model's device), plus ``z_symbols``, ``y_symbols``
            and ``indexes`` (int32, CPU).
        """
        out: dict[str, Any] = self.decode_latents(strings, shape, scale)
        out["x_hat"] = self.reconstruct(out["y_symbols"], scale, phi, shape)
        return out

    # ------------------------------------------------------------------------------------ checkpoints

    def checkpoint(self, meta: dict[str, Any] | None = None) -> dict[str, Any]:
        """A self-describing checkpoint: format, architecture config, weights with frozen tables, provenance."""
        return {"format": self.checkpoint_format, "config": asdict(self.config),
                "state_dict": {k: v.detach().cpu() for k, v in self.state_dict().items()}, "meta": dict(meta or {})}

    @classmethod
    def from_checkpoint(cls, blob: dict[str, Any]) -> FeatureHyperprior:
        """Rebuild from :meth:`checkpoint` output; the table buffers are resized to the stored ones."""
        if not isinstance(blob, dict) or blob.get("format") != cls.checkpoint_format:
            found = blob.get("format") if isinstance(blob, dict) else type(blob).__name__
            raise ValueError(f"not a {cls.checkpoint_format} checkpoint (format {found!r})")
        model = cls(cls.config_class(**blob["config"]))
        state = blob["state_dict"]
        for prefix in ("z", "y"):
            for name in (f"{prefix}_cdf", f"{prefix}_cdf_length", f"{prefix}_offset"):
                if name in state:
                    setattr(model, name, torch.zeros_like(state[name]))
        model.load_state_dict(state)
        model._tables.clear()
        model.meta = dict(blob.get("meta") or {})
        return model


def _coded_positions(indexes: Tensor) -> Tensor:
    """Flat positions of one item's y symbols that the y string codes: the first :data:`MIN_CODED_SYMBOLS`
    and every other whose index is not :data:`SKIPPED_INDEX`."""
    coded = indexes.ravel() != SKIPPED_INDEX
    coded[:MIN_CODED_SYMBOLS] = True
    return torch.nonzero(coded).squeeze(1)


def _int32_tensor(values: list[int]) -> Tensor:
    """A list of Python ints as an int32 tensor (``array`` converts in C, several times faster than torch)."""
    return torch.frombuffer(array.array("i", values), dtype=torch.int32) if values else torch.zeros(0, dtype=torch.int32)


def _channel_indexes(shape: tuple[int, ...] | torch.Size, first_row: int) -> list[int]:
    """CDF index of every element of a ``[C, h, w]`` hyper-latent: ``first_row`` + its channel."""
    channels, height, width = shape
    return (torch.arange(channels, dtype=torch.int32) + first_row).repeat_interleave(height * width).tolist()
