"""A cross-scale feature codec network: per-scale latents, one coarse-to-fine synthesis for P2..P5.

Each scale keeps its own analysis transform, hyperprior, gain vectors and bitstream (exactly the
:class:`~.hyperprior.FeatureHyperprior` coding path, so the integer index path and every payload check
carry over, and a scale's rate depends on its own ``phi`` only). What is new is the decoder: it rebuilds
the scales coarse to fine, each from its own latent AND the decoded hidden state of the coarser scale,
the way FPN's top-down path built them::

    P5: y5 ─> g_s[3] ─> u5 ──────────────────────────────> h5 = u5 + fuse(u5, 0) ─> out[3] ─> P5_hat
                                                                 │ up[3] (convT 4x4/2)
    P4: y4 ─> g_s[2] ─> u4 ────────────────────────────────> h4 = u4 + c4 + fuse(u4, c4) ─> out[2] ─> P4_hat
      ... down to P2; fuse = 1x1 conv (2D -> D), ReLU, 1x1 conv (D -> D); out = 1x1 conv (D -> 256)

Because the coarser scales carry what the scales share, training (which sees every scale at once,
each at its own random ``phi``) teaches each finer latent to spend bits on what the coarser ones do
not already give the decoder. The lowest ``phi`` of a scale is a *starve* level: nothing of the scale
is transmitted and the decoder rebuilds it from the coarser scales alone (``u = g_s(0)``); training
draws it for each scale and item with a fixed probability (``fpnlink codec train-xscale --starve``).

Why this design (and not a single fused latent, L-MSFC style): with one fused latent every scale's
rate is one number, and MFIBA has nothing to allocate; conditioning the *encoder* of a finer scale on
the decoded coarser ones would make a scale's bytes depend on the other scales' ``phi``, so MFIBA's
per-scale rate-phi model and rate control's re-encoding of changed scales would no longer hold.
Measured against the same network with the cross-scale path cut (``context=False``, ``fpnlink codec
train-xscale --no-context``), same recipe, both at step 2,200 (16 val images, box AP through the faster heads,
uniform phi): BD-rate against JPEG -13.0% with the path, -18.1% without; the path against none +2.1%, within
what 16 images resolve. So at equal early steps the path does not pay yet; whether it does at the shipped
12,000 steps, and what a starved scale costs without it, are not measured. A fused latent is not measured.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from compressai.layers import GDN
from torch import Tensor, nn
from torch.nn import functional as F

from .hyperprior import FeatureHyperprior, HyperpriorConfig, _Branch
from .intnet import Z_MAX, round_ste

CHECKPOINT_FORMAT = "fpnlink.cross-scale-codec/1"
COARSEST = 3
"""Scale index of P5, where decoding starts."""


@dataclass(frozen=True)
class CrossScaleConfig(HyperpriorConfig):
    """:class:`HyperpriorConfig` plus the cross-scale decoder's sizes.

    Args:
        decoder: ``D``, channels of the decoder's hidden state (and of the context passed to the finer scale).
        context: pass the coarser scale's hidden state to the finer one (False: the ablation baseline).
    """

    decoder: int = 64
    context: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.per_scale or self.num_scales != 4:
            raise ValueError("the cross-scale codec has per-scale transforms for exactly the four scales P2..P5")
        if self.decoder < 1:
            raise ValueError(f"decoder must be >= 1, got {self.decoder}")


class _CrossScaleBranch(_Branch):
    """One scale's coding transforms plus its part of the coarse-to-fine decoder."""

    def __init__(self, config: CrossScaleConfig) -> None:
        super().__init__(config)
        m, d = config.latent, config.decoder
        self.g_s = nn.Sequential(nn.Conv2d(m, m, 3, 1, 1), GDN(m, inverse=True), nn.ConvTranspose2d(m, d, 4, 2, 1))
        self.fuse = nn.Sequential(nn.Conv2d(2 * d, d, 1), nn.ReLU(inplace=True), nn.Conv2d(d, d, 1))
        self.out = nn.Conv2d(d, config.channels, 1)
        self.up = nn.ConvTranspose2d(d, d, 4, 2, 1)
        """Context for the next finer scale (unused on P2)."""


class CrossScaleHyperprior(FeatureHyperprior):
    """Per-scale hyperprior coding with a coarse-to-fine decoder (see the module docstring)."""

    checkpoint_format = CHECKPOINT_FORMAT
    config_class = CrossScaleConfig
    branch_class = _CrossScaleBranch
    config: CrossScaleConfig

    def context_for(self, hidden: Tensor | None, scale: int, size: tuple[int, int]) -> Tensor | None:
        """The context scale ``scale`` receives from the coarser scale's hidden state, cropped to ``size``."""
        if hidden is None or not self.config.context:
            return None
        context = self.branches[scale + 1].up(hidden)
        if context.shape[-2] < size[0] or context.shape[-1] < size[1]:
            raise ValueError(f"scale {scale}: size {size} is more than twice the coarser scale's "
                             f"{tuple(hidden.shape[-2:])}")
        return context[..., : size[0], : size[1]]

    def synthesize(self, y_hat: Tensor | None, context: Tensor | None, scale: int, size: tuple[int, int],
                   batch: int = 1) -> tuple[Tensor, Tensor]:
        """Hidden state and normalised reconstruction of one scale (arguments as :meth:`hidden_state`).

        Returns:
            ``(hidden [B, D, H, W], x_hat_norm [B, C, H, W])``.
        """
        hidden = self.hidden_state(y_hat, context, scale, size, batch)
        return hidden, self.branches[scale].out(hidden)

    def raw_output(self, hidden: Tensor, scale: int) -> Tensor:
        """The raw-domain reconstruction of one scale: the de-normalisation folded into the 1x1 ``out`` conv,
        so the full-size map is written once, in the standard (contiguous) layout."""
        out, std, mean = self.branches[scale].out, self.feature_std[scale], self.feature_mean[scale]
        return F.conv2d(hidden.contiguous(), out.weight * std.view(-1, 1, 1, 1), torch.addcmul(mean, out.bias, std))

    def synthesis_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """``(name, parameter)`` of the decoder side only (``g_s``, ``fuse``, ``up``, ``out`` of every scale):
        what a decoder-only fine-tune trains, leaving every bitstream as it was."""
        parts = ("g_s", "fuse", "up", "out")
        return [(name, param) for name, param in self.named_parameters()
                if name.startswith("branches.") and name.split(".")[2] in parts]

    def channels_last_synthesis(self) -> CrossScaleHyperprior:
        """Keep the decoder's convolutions up to the hidden state channels-last, oneDNN's faster layout on CPU;
        :meth:`raw_output` still writes the decoded maps contiguous."""
        for branch in self.branches:
            for module in (branch.g_s, branch.fuse, branch.up):
                module.to(memory_format=torch.channels_last)
        return self

    def hidden_state(self, y_hat: Tensor | None, context: Tensor | None, scale: int, size: tuple[int, int],
                     batch: int = 1) -> Tensor:
        """The decoder's hidden state ``[B, D, H, W]`` of one scale.

        Args:
            y_hat: dequantised latent ``[B, M, h, w]``, or None for a starved scale (read as zeros).
            context: from :meth:`context_for`, or None (P5, or the ablation).
            size: ``(H, W)`` of the scale.
            batch: batch size when ``y_hat`` is None.
        """
        branch = self.branches[scale]
        if y_hat is None:
            ph, pw = self.padded_size(*size)
            y_hat = torch.zeros(batch, self.config.latent, ph // 2, pw // 2, device=self.feature_mean.device)
        own = branch.g_s(y_hat)[..., : size[0], : size[1]]
        context = torch.zeros_like(own) if context is None else context
        return own + context + branch.fuse(torch.cat((own, context), dim=1))

    # ------------------------------------------------------------------------------------ training path

    def forward_frame(self, features: list[Tensor], phi: Tensor, starve: Tensor) -> dict[str, Any]:
        """Training path over aligned crops of all four scales.

        Args:
            features: raw ``[B, C, H_s, W_s]`` for P2..P5 (index = scale), each about half the previous.
            phi: ``[B, 4]`` rate parameters.
            starve: ``[B, 4]`` bool, scales dropped to the starve level (no latent, no rate).

        Returns:
            per scale lists ``x_norm``, ``x_hat_norm``, ``bits`` (``[B]``), coarse to fine order undone
            (index = scale).
        """
        batch = features[0].shape[0]
        x_norm, x_hat_norm, bits = [None] * 4, [None] * 4, [None] * 4
        hidden = None
        for scale in range(COARSEST, -1, -1):
            x = features[scale]
            size = (int(x.shape[-2]), int(x.shape[-1]))
            scales = torch.full((batch,), scale, dtype=torch.long, device=x.device)
            branch = self.branches[scale]
            x_norm[scale] = self._normalise(x, scales)
            gain, inverse = self.gains(scales, phi[:, scale])
            y_g = branch.g_a(self._pad(x_norm[scale])) * gain
            z = self.hyper_latent(branch, y_g, scales, phi[:, scale])
            z_tilde = z + torch.empty_like(z).uniform_(-0.5, 0.5)
            y_tilde = y_g + torch.empty_like(y_g).uniform_(-0.5, 0.5)
            sigma = self._scale_sigma(branch.h_s(round_ste(z).clamp(-Z_MAX, Z_MAX)))
            z_likelihood = self._z_likelihood(branch.entropy_bottleneck, z_tilde)
            y_likelihood = self.gaussian_conditional.likelihood_lower_bound(
                self.gaussian_conditional._likelihood(y_tilde, sigma))
            keep = (~starve[:, scale]).to(x.dtype)
            item_bits = -(torch.log2(y_likelihood).sum(dim=(1, 2, 3)) + torch.log2(z_likelihood).sum(dim=(1, 2, 3)))
            bits[scale] = item_bits * keep
            y_hat = round_ste(y_g) * inverse * keep.view(-1, 1, 1, 1)
            context = self.context_for(hidden, scale, size)
            hidden, x_hat_norm[scale] = self.synthesize(y_hat, context, scale, size)
        return {"x_norm": x_norm, "x_hat_norm": x_hat_norm, "bits": bits}

    # -------------------------------------------------------------------------------------- coding path

    @torch.no_grad()
    def decompress_frame(self, latents: dict[int, tuple[Tensor | None, float]], sizes: dict[int, tuple[int, int]],
                         ) -> dict[int, Tensor]:
        """Rebuild every scale in ``sizes`` coarse to fine.

        Args:
            latents: scale -> (integer latent ``[1, M, h, w]`` int32, phi), or (None, phi) for a starved scale.
            sizes: scale -> ``(H, W)``; must hold P5 and every scale between the finest one and P5.

        Returns:
            scale -> raw-domain ``[1, C, H, W]`` float32 (on the model's device).
        """
        finest = min(sizes)
        if sorted(sizes) != list(range(finest, COARSEST + 1)):
            raise ValueError(f"scales {sorted(sizes)}: the cross-scale decoder needs every scale from the finest "
                             "one up to P5")
        decoded, hidden = {}, None
        for scale in range(COARSEST, finest - 1, -1):
            symbols, phi = latents[scale]
            y_hat = None if symbols is None else self.dequantise(symbols, scale, phi)
            context = self.context_for(hidden, scale, sizes[scale])
            hidden = self.hidden_state(y_hat, context, scale, sizes[scale])
            decoded[scale] = self.raw_output(hidden, scale)
        return decoded

    @torch.no_grad()
    def init_from_pca(self, bases: Tensor) -> None:
        """Start every scale as a transform coder on a fixed PCA basis of its (normalised) features.

        With ``bases`` ``[4, C, K]`` (orthonormal columns, ``4 * K == M``, ``K <= D``), ``g_a`` maps each 2x2
        block of positions to its ``K`` coefficients per position (``M = 4K`` latent channels), ``g_s`` puts
        them back on their positions and ``out`` applies the basis: before training the decoder is exactly the
        PCA-K reconstruction of the dequantised latent (GDNs near identity, cross-scale path zero). A fixed
        32-dim PCA per scale loses no box AP through the shipped heads (``../shared/notes/CODEC.md``); training
        from there needs far fewer steps than from random transforms.
        """
        m, d = self.config.latent, self.config.decoder
        k = bases.shape[-1]
        if tuple(bases.shape) != (self.config.num_scales, self.config.channels, k) or 4 * k != m or k > d:
            raise ValueError(f"bases must be [{self.config.num_scales}, {self.config.channels}, K] with 4K == "
                             f"latent ({m}) and K <= decoder ({d}), got {tuple(bases.shape)}")
        identity = torch.zeros(m, m, 3, 3)
        identity[torch.arange(m), torch.arange(m), 1, 1] = 1.0
        for scale, branch in enumerate(self.branches):
            basis = bases[scale].to(branch.out.weight)
            analysis, spread = torch.zeros(m, self.config.channels, 3, 3), torch.zeros(m, d, 4, 4)
            for group, (a, b) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1))):
                analysis[group * k:(group + 1) * k, :, 1 + a, 1 + b] = basis.T
                spread[group * k + torch.arange(k), torch.arange(k), 1 + a, 1 + b] = 1.0
            for conv, weight in ((branch.g_a[0], analysis), (branch.g_a[2], identity), (branch.g_s[0], identity),
                                 (branch.g_s[2], spread)):
                conv.weight.copy_(weight)
                conv.bias.zero_()
            for gdn in (branch.g_a[1], branch.g_s[1]):
                gdn.gamma.copy_(gdn.gamma_reparam.init(1e-4 * torch.eye(m)))
            branch.out.weight.zero_()
            branch.out.weight[:, :k, 0, 0] = basis
            branch.out.bias.zero_()
            for conv in (branch.fuse[2], branch.up):
                conv.weight.zero_()
                conv.bias.zero_()

    def warm_start(self, donor: FeatureHyperprior, skip: tuple[str, ...] = ()) -> list[str]:
        """Copy every tensor of ``donor`` whose name and shape match (analysis, hyperprior, gains,
        normalisation) but for names starting with a prefix in ``skip``; returns the names copied."""
        own = self.state_dict()
        matching = {k: v.to(own[k].dtype) for k, v in donor.state_dict().items()
                    if k in own and own[k].shape == v.shape and own[k].numel() > 0 and not k.startswith(skip)}
        self.load_state_dict({**own, **matching})
        return sorted(matching)
