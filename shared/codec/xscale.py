"""``xscale``: the cross-scale learned codec (:mod:`.crossscale`) behind the codec interface.

Encoding is per scale, exactly as :mod:`.learned` (one container payload with ``z`` and ``y``
substreams), except at the lowest ``phi``, the *starve* level: the payload is a container header with
no substreams (about 40 bytes) and the decoder rebuilds the scale from the coarser ones. Decoding is
per frame, coarse to fine::

    records ─> unpack + checks (every record) ─> rANS ─> integer latents ─> CRC of the symbols
            ─> CrossScaleHyperprior.decompress_frame (P5 first; each scale given the coarser ones)

A frame must therefore carry, with any scale, every coarser scale (P5 always): a frame missing one
is refused. CDF indexes come from the integer scale network, so the entropy decoding is bit-exact
across machines; the synthesis that follows is ordinary float math.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from ..errors import CodecError
from . import container
from .base import ScaleRecord
from .hyperprior import FeatureHyperprior
from .learned import SCALE_INDEX, LearnedCodec
from .registry import register_codec

ASSETS = Path(__file__).with_name("assets")
TINY_CHECKPOINT = ASSETS / "xscale-tiny.pt"
r"""A tiny cross-scale model (M=16, 4 gain levels) on ``random:0`` features at 128 px: for tests and wiring.
Rebuilt with (the trainer of commit 1002e5c; its start-up defaults changed since)::

    fpnlink codec extract --data synth:24:0:128 --weights random:0 --min-size 128 --max-size 128 --out T
    fpnlink codec train-xscale --shards T --out xtiny.pt --steps 600 --batch 4 --crop 32 --latent 16 \
        --hyper 8 --hidden 16 --decoder 16 --lambdas 16,128,1024,8192 --threads 1
    fpnlink codec export --ckpt xtiny.pt --out shared/codec/assets/xscale-tiny.pt
"""
SYNTHETIC_CHECKPOINT = ASSETS / "xscale-synthetic.pt"
r"""The default learned codec: cross-scale, M=128, Nz=48, D=64, 5 gain levels (phi 0..4, phi 0 starves a scale),
for the ``synthetic`` backbone at 256 px. Trained on 2 CPU cores from a PCA-32-per-position start, 12,000 steps
(batch 8, P2 crop 48; 0.45 s a step idle) with the task-aware distortion, lambdas retargeted at step 2,300, the
learning rate divided by 10 from step 10,800; transforms stored in float16 (NOTES.md, issue 10). Rebuilt with::

    fpnlink data synth --n 4000 --size 256 --seed 0 --out DATA
    fpnlink codec extract --data DATA/annotations/train.json --weights synthetic --min-size 256 --max-size 256 \
        --limit 1200 --out TRAIN
    fpnlink codec train-xscale --shards TRAIN --out x.pt --steps 12000 --stop-at 2300 --batch 8 --crop 48 \
        --latent 128 --decoder 64 --pca-init --lr 2e-4 --threads 2   # --lambdas 0.1,0.5,2.5,12,60 (the default)
    fpnlink codec train-xscale --shards TRAIN --out x.pt --resume --steps 12000 --lambdas 0.5,2.5,10,40,160
    fpnlink codec export --ckpt x.pt --out shared/codec/assets/xscale-synthetic.pt --half
"""


@register_codec("xscale")
class CrossScaleCodec(LearnedCodec):
    """Cross-scale learned codec from one checkpoint; ``phi`` at the low end of the range starves a scale.

    Args:
        checkpoint: a ``fpnlink.cross-scale-codec/1`` file; :data:`SYNTHETIC_CHECKPOINT` when omitted.
        device: where the transforms run (entropy coding and the integer scale network run on the CPU).
    """

    name = "xscale"
    cross_scale = True
    default_checkpoint = SYNTHETIC_CHECKPOINT

    def __init__(self, checkpoint: str | Path | None = None, device: str | torch.device = "cpu") -> None:
        super().__init__(checkpoint, device)
        self.model.channels_last_synthesis()
        self.starve_phi = self.phi_range[0]

    @staticmethod
    def model_class() -> type[FeatureHyperprior]:
        from .crossscale import CrossScaleHyperprior

        return CrossScaleHyperprior

    def _encode_one_scale(self, name: str, tensor: Tensor, phi: float) -> list[ScaleRecord]:
        if phi > self.starve_phi:
            return super()._encode_one_scale(name, tensor, phi)
        if not torch.isfinite(tensor).all():
            raise ValueError(f"scale {name!r}: features contain NaN or infinity")
        shape = (int(tensor.shape[1]), int(tensor.shape[2]), int(tensor.shape[3]))
        header = container.PayloadHeader(self.name, self.fingerprint, SCALE_INDEX[name], shape, phi, ())
        payload = container.pack(header, [])
        return [ScaleRecord(name, shape, self.output_dtype(), phi, payload) for _ in range(tensor.shape[0])]

    def decode(self, records: list[ScaleRecord]) -> dict[str, Tensor]:
        """Decode one frame's records into ``name -> [1, C, H, W]``; :class:`CodecError` on any inconsistency."""
        latents: dict[int, tuple[Tensor | None, float]] = {}
        sizes: dict[int, tuple[int, int]] = {}
        names: dict[int, str] = {}
        for record in records:
            record.validate()
            if not self.phi_range[0] <= record.phi <= self.phi_range[1]:
                raise CodecError(f"scale {record.name!r}: phi {record.phi} outside {self.phi_range}")
            starved = record.phi <= self.starve_phi
            scale = SCALE_INDEX.get(record.name)
            if scale in names:
                raise CodecError(f"scale {record.name!r} appears twice in the frame")
            if starved:
                scale, _, _ = self.checked_streams(record, latent_shapes=())
                latents[scale] = (None, record.phi)
            else:
                latents[scale] = (self.entropy_decode(record)["y_symbols"], record.phi)
            names[scale], sizes[scale] = record.name, record.shape[1:]
        if not names:
            return {}
        missing = [s for s in range(min(names), len(SCALE_INDEX)) if s not in names]
        if missing:
            raise CodecError(f"xscale decodes a scale only with every coarser one; the frame lacks "
                             f"{[str(s) for s in missing]}")
        self._check_nesting(sizes)
        decoded = self.model.decompress_frame(latents, sizes)
        return {names[s]: decoded[s].float().cpu() for s in sorted(decoded)}

    @staticmethod
    def _check_nesting(sizes: dict[int, tuple[int, int]]) -> None:
        for scale, (height, width) in sizes.items():
            coarser = sizes.get(scale + 1)
            if coarser is not None and not (coarser[0] * 2 - 1 <= height <= coarser[0] * 2
                                            and coarser[1] * 2 - 1 <= width <= coarser[1] * 2):
                raise CodecError(f"scale {scale}: size {(height, width)} is not twice the coarser scale's {coarser}")

    def decode_scale(self, record: ScaleRecord) -> Tensor:
        raise CodecError("xscale decodes whole frames (a scale depends on the coarser ones): use decode()")

    def decode_symbols(self, record: ScaleRecord) -> dict[str, Tensor]:
        raise CodecError("xscale decodes whole frames (a scale depends on the coarser ones): use decode(), or "
                         "entropy_decode() for one record's symbols")
