"""``learned``: the variable-rate hyperprior codec (:mod:`.hyperprior`) behind the codec interface.

Each scale's payload is one :mod:`.container` payload with two substreams, ``z`` then ``y``::

    encode: '0'..'3' -> [N, 256, H, W] ─> FeatureHyperprior.compress (one batch per scale) ─> pack ─> ScaleRecord
    decode: ScaleRecord ─> unpack (magic, version, codec, fingerprint, limits, lengths, CRC)
                        ─> latent shapes == those implied by (C, H, W) ─> decompress ─> [C, H, W] float32

``phi`` lies in ``[0, N - 1]`` (``N`` gain vectors of the checkpoint) and travels in both the record
and the payload header, which must agree. The decoder depends on nothing but the payload and the
checkpoint: the CDF tables are stored in the checkpoint and the CDF indexes are computed by the
integer scale network (:mod:`.intnet`), so a stream decodes identically on any machine.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ..errors import CodecError, WeightsError
from ..model.fingerprint import hash_state
from . import container
from .base import FeatureCodec, ScaleRecord
from .intnet import EXACT_LIMIT
from .registry import register_codec

if TYPE_CHECKING:
    from .hyperprior import FeatureHyperprior

TINY_CHECKPOINT = Path(__file__).with_name("assets") / "learned-tiny.pt"
r"""A tiny per-scale model (M=16, 4 gain levels) trained on ``random:0`` features at 128 px: for tests and wiring,
not for quality. Rebuilt with::

    fpnlink codec extract --data synth:24:0:128 --weights random:0 --min-size 128 --max-size 128 --out T
    fpnlink codec train --shards T --out tiny.pt --steps 2000 --batch 8 --crop 32 --latent 16 --hyper 8 \
        --hidden 16 --lambdas 16,128,1024,8192 --lr 2e-3 --threads 1
    fpnlink codec export --ckpt tiny.pt --out shared/codec/assets/learned-tiny.pt
"""
SYNTHETIC_CHECKPOINT = Path(__file__).with_name("assets") / "learned-synthetic.pt"
r"""The production configuration (per-scale, M=96, Nz=48, 5 gain levels, phi 0..4) for the ``synthetic``
backbone at 256 px, trained on 2 CPU cores in two stages. First on the features of the earlier (1,800-iteration)
``synthetic`` backbone: 32,000 steps (42 min) at lambda 16..4096, then 3,624 steps (15 min) with the
rate-ordering penalty. Then fine-tuned on the features of the shipped (6,600-iteration) backbone with the gain
levels retargeted to lambda 2..4096, which lowers phi 0's rate so that allocation can go below the old
minimum: 8,781 steps (15 min), then 1,861 steps (6 min) with the penalty. Transforms stored in float16.
Rebuilt with::

    fpnlink data synth --n 4000 --size 256 --seed 0 --out DATA
    fpnlink codec extract --data DATA/annotations/train.json --weights synthetic --min-size 256 --max-size 256 \
        --limit 1500 --crop 40 --out TRAIN            # once per backbone: OLD_TRAIN, then TRAIN
    fpnlink codec train --shards OLD_TRAIN --out prod.pt --steps 32000 --batch 16 --crop 40 --latent 96 \
        --hyper 48 --hidden 48 --lambdas 16,64,256,1024,4096 --threads 2
    fpnlink codec train --shards OLD_TRAIN --out prod.pt --resume --steps 40000 --monotone 1 --max-minutes 15
    fpnlink codec train --shards TRAIN --out prod.pt --resume --steps 60000 --lambdas 2,14,90,600,4096 \
        --max-minutes 15
    fpnlink codec train --shards TRAIN --out prod.pt --resume --steps 80000 --monotone 1 --max-minutes 6
    fpnlink codec export --ckpt prod.pt --out shared/codec/assets/learned-synthetic.pt --half
"""
DEFAULT_CHECKPOINT = SYNTHETIC_CHECKPOINT
"""What ``LearnedCodec()`` loads when no checkpoint is named: the codec of the default offline backbone."""
SCALE_INDEX: dict[str, int] = {"0": 0, "1": 1, "2": 2, "3": 3}
MIN_STREAM_BYTES = 8
"""An rANS stream always holds at least its 64-bit final state."""
_DECODE_GUARD = bytes(16)
"""Zero bytes appended to a stream before rANS decoding, so a short over-read stays inside the buffer."""


def symbol_crc(symbols: Tensor) -> int:
    """CRC32 of an int32 symbol tensor's little-endian bytes (the container's per-substream check)."""
    return zlib.crc32(symbols.contiguous().numpy().astype("<i4", copy=False).tobytes())


def load_model(checkpoint: str | Path, device: str | torch.device = "cpu",
               model_class: type[FeatureHyperprior] | None = None) -> FeatureHyperprior:
    """Load a frozen :class:`FeatureHyperprior` (or ``model_class``) checkpoint; :class:`WeightsError` when
    unusable.

    CompressAI is imported here, not at module import: it pulls in torch_geometric and costs seconds.
    """
    from .hyperprior import FeatureHyperprior

    path = Path(checkpoint)
    if not path.is_file():
        raise WeightsError(f"no learned-codec checkpoint at {path}")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        model = (model_class or FeatureHyperprior).from_checkpoint(blob)
    except Exception as exc:  # torch and load_state_dict raise several types for a bad file
        raise WeightsError(f"cannot load learned-codec checkpoint {path}: {exc}") from exc
    if not model.frozen:
        raise WeightsError(f"checkpoint {path} has no frozen CDF tables; it was saved before update()")
    if max(branch.h_s.exact_bound() for branch in model.branches) >= EXACT_LIMIT:
        raise WeightsError(f"checkpoint {path}: the integer scale network could exceed exact float64 range")
    return model.to(device).eval()


@register_codec("learned")
class LearnedCodec(FeatureCodec):
    """Variable-rate learned codec from one checkpoint.

    Args:
        checkpoint: a ``fpnlink.learned-codec/1`` file (``fpnlink codec train``);
            :data:`DEFAULT_CHECKPOINT` when omitted.
        device: where the analysis/synthesis transforms run (entropy coding and the integer scale
            network always run on the CPU).
    """

    name = "learned"
    lossless = False
    has_weights = True
    phi_range = (0.0, 5.0)
    default_phi = 2.5

    default_checkpoint = DEFAULT_CHECKPOINT

    def __init__(self, checkpoint: str | Path | None = None, device: str | torch.device = "cpu") -> None:
        self.checkpoint = Path(checkpoint) if checkpoint is not None else self.default_checkpoint
        self.device = torch.device(device)
        self.model = load_model(self.checkpoint, self.device, self.model_class())
        low, high = self.model.phi_range
        self.phi_range = (low, high)
        self.default_phi = (low + high) / 2
        self._digest = hash_state(self.model.state_dict(), json.dumps(self.model.config.identity(), sort_keys=True))

    @staticmethod
    def model_class() -> type[FeatureHyperprior]:
        """The network class this codec's checkpoints hold."""
        from .hyperprior import FeatureHyperprior

        return FeatureHyperprior

    def config(self) -> dict[str, Any]:
        from .hyperprior import SKIPPED_INDEX

        return {"format": self.model.checkpoint_format, "container": container.VERSION, "skipped_index": SKIPPED_INDEX,
                **self.model.config.identity()}

    @property
    def trained_backbone(self) -> str | None:
        """Weights fingerprint of the backbone whose features trained the checkpoint (None when it does not say)."""
        return self.model.meta.get("backbone_weights")

    def check_backbone(self, served: Collection[str]) -> None:
        trained = self.trained_backbone
        if trained is not None and trained not in served:
            raise WeightsError(f"{self.name} codec {self.checkpoint.name} was trained on the features of backbone "
                               f"weights {trained}, but this side runs {sorted(served)}: serve the backbone it "
                               "was trained on, or train a codec for this one (fpnlink codec extract, train)")

    def weights_digest(self) -> str:
        return self._digest

    # ------------------------------------------------------------------------------------------ encode

    def encode(self, features: dict[str, Tensor], phi: dict[str, float] | None = None) -> list[ScaleRecord]:
        """Code one frame; see :meth:`FeatureCodec.encode`."""
        for name, tensor in features.items():
            if tensor.dim() != 4 or tensor.shape[0] != 1:
                raise ValueError(f"scale {name!r}: expected [1, C, H, W], got {tuple(tensor.shape)}")
        return [frame[0] for frame in self._encode_scales(features, phi)]

    def encode_batch(self, features: dict[str, Tensor], phi: dict[str, float] | None = None,
                     ) -> list[list[ScaleRecord]]:
        """Code ``N`` frames at once (one network pass per scale).

        Args:
            features: ``'0'..'3'`` -> ``[N, C, H, W]``.
            phi: rate parameter per scale, the same for every frame.

        Returns:
            One list of records per frame, in input order.
        """
        per_scale = self._encode_scales(features, phi)
        count = len(per_scale[0]) if per_scale else 0
        return [[records[i] for records in per_scale] for i in range(count)]

    def _encode_scales(self, features: dict[str, Tensor], phi: dict[str, float] | None) -> list[list[ScaleRecord]]:
        phi = phi or {}
        batch_sizes = {int(t.shape[0]) for t in features.values() if t.dim() == 4}
        if len(batch_sizes) > 1:
            raise ValueError(f"every scale needs the same batch size, got {sorted(batch_sizes)}")
        per_scale = []
        for name, tensor in features.items():
            if name not in SCALE_INDEX:
                raise ValueError(f"learned codec codes scales {list(SCALE_INDEX)}, got {name!r}")
            if tensor.dim() != 4 or tensor.shape[1] != self.model.config.channels:
                raise ValueError(f"scale {name!r}: expected [N, {self.model.config.channels}, H, W], "
                                 f"got {tuple(tensor.shape)}")
            value = self.check_phi(phi.get(name, self.default_phi))
            per_scale.append(self._encode_one_scale(name, tensor.detach(), value))
        return per_scale

    def _encode_one_scale(self, name: str, tensor: Tensor, phi: float) -> list[ScaleRecord]:
        shape = (int(tensor.shape[1]), int(tensor.shape[2]), int(tensor.shape[3]))
        try:
            coded = self.model.compress(tensor, SCALE_INDEX[name], phi)
        except ValueError as exc:
            raise ValueError(f"scale {name!r}: {exc}") from exc
        records = []
        for i, streams in enumerate(coded["strings"]):
            checks = (symbol_crc(coded["z_symbols"][i]), symbol_crc(coded["y_symbols"][i]))
            header = container.PayloadHeader(self.name, self.fingerprint, SCALE_INDEX[name], shape, phi,
                                             tuple(coded["latent_shapes"]), checks)
            records.append(ScaleRecord(name, shape, self.output_dtype(), phi, container.pack(header, streams)))
        return records

    def encode_scale(self, tensor: Tensor, phi: float, name: str | None = None) -> bytes:
        """Code one ``[C, H, W]`` map of scale ``name`` (required: the model is conditioned on it)."""
        if name is None:
            raise ValueError("the learned codec is conditioned on the scale: pass name='0'..'3' or use encode()")
        return self._encode_one_scale(name, tensor.unsqueeze(0), self.check_phi(phi))[0].payload

    # ------------------------------------------------------------------------------------------ decode

    def decode_scale(self, record: ScaleRecord) -> Tensor:
        return self.decode_symbols(record)["x_hat"][0]

    def decode_symbols(self, record: ScaleRecord) -> dict[str, Tensor]:
        """Decode one validated record; returns ``x_hat`` ``[1, C, H, W]`` and the decoded integer latents."""
        out = self.entropy_decode(record)
        out["x_hat"] = self.model.reconstruct(out["y_symbols"], SCALE_INDEX[record.name], record.phi,
                                              record.shape[1:]).float().cpu()
        return out

    def entropy_decode(self, record: ScaleRecord) -> dict[str, Tensor]:
        """Unpack, check and rANS-decode one record up to its integer latents (``z_symbols``, ``y_symbols``,
        ``indexes``), whose CRCs must match the header's."""
        scale, streams, checks = self.checked_streams(record)
        try:
            out = self.model.decode_latents([[s + _DECODE_GUARD for s in streams]], record.shape[1:], scale)
        except (RuntimeError, ValueError, OverflowError) as exc:
            raise CodecError(f"scale {record.name!r}: cannot decode the entropy-coded streams ({exc})") from exc
        if (symbol_crc(out["z_symbols"][0]), symbol_crc(out["y_symbols"][0])) != checks:
            raise CodecError(f"scale {record.name!r}: decoded symbols fail their check: corrupt payload, or an "
                             "encoder whose CDF indexes differ from this decoder's")
        return out

    def checked_streams(self, record: ScaleRecord, latent_shapes: tuple | None = None,
                        ) -> tuple[int, list[bytes], tuple[int, ...]]:
        """Unpack and cross-check a record's payload; returns its scale index, substreams and symbol checks.

        Args:
            latent_shapes: what the header must declare; those implied by the record's shape when omitted.
        """
        header, streams = container.unpack(record.payload, codec=self.name, fingerprint=self.fingerprint)
        scale = SCALE_INDEX.get(record.name)
        if scale is None:
            raise CodecError(f"{self.name} codec decodes scales {list(SCALE_INDEX)}, not {record.name!r}")
        channels, height, width = record.shape
        if header.scale != scale or header.shape != record.shape or header.phi != record.phi:
            raise CodecError(f"scale {record.name!r}: payload header (scale {header.scale}, shape {header.shape}, "
                             f"phi {header.phi}) disagrees with the record ({scale}, {record.shape}, {record.phi})")
        if record.dtype != self.output_dtype():
            raise CodecError(f"scale {record.name!r}: {self.name} codec outputs {self.output_dtype()}, not {record.dtype}")
        if channels != self.model.config.channels:
            raise CodecError(f"scale {record.name!r}: {channels} channels, this model codes "
                             f"{self.model.config.channels}")
        expected = tuple(self.model.latent_shapes(height, width)) if latent_shapes is None else latent_shapes
        if header.latent_shapes != expected:
            raise CodecError(f"scale {record.name!r}: latent shapes {header.latent_shapes} do not match "
                             f"{expected} implied by {record.shape}")
        if any(len(s) < MIN_STREAM_BYTES for s in streams):
            raise CodecError(f"scale {record.name!r}: a substream is shorter than {MIN_STREAM_BYTES} bytes")
        return scale, streams, header.checks
