"""Per-channel affine quantisation to n bits, then DEFLATE (zlib) entropy coding.

Payload layout (little-endian)::

    uint8 bits | float32[C] offset | float32[C] step | zlib(uint8[C*H*W] levels)

Each channel c is coded as ``level = round((x - offset[c]) / step[c])`` in ``[0, 2**bits - 1]`` and
decoded as ``offset[c] + level * step[c]``. The per-channel parameters travel in the payload and are
counted. ``phi`` is the bit depth (rounded to an integer in [1, 8]).
"""

from __future__ import annotations

import struct
import zlib

import numpy as np
import torch
from torch import Tensor

from ..errors import CodecError
from .base import FeatureCodec, ScaleRecord
from .registry import register_codec

_HEADER = struct.Struct("<B")
_PARAM_DTYPE = np.dtype("<f4")


@register_codec("quant")
class QuantCodec(FeatureCodec):
    """Per-channel min/max quantisation with zlib.

    Args:
        zlib_level: DEFLATE effort, 1 (fast) to 9 (small).
    """

    name = "quant"
    lossless = False
    phi_range = (1.0, 8.0)
    default_phi = 6.0

    def __init__(self, zlib_level: int = 6) -> None:
        if not 1 <= zlib_level <= 9:
            raise ValueError(f"zlib_level must be in 1..9, got {zlib_level}")
        self.zlib_level = zlib_level

    def config(self) -> dict[str, int]:
        return {"zlib_level": self.zlib_level, "format": 1}

    @staticmethod
    def bits_for(phi: float) -> int:
        return int(round(phi))

    def encode_scale(self, tensor: Tensor, phi: float) -> bytes:
        bits = self.bits_for(phi)
        values = tensor.numpy().reshape(tensor.shape[0], -1).astype(np.float32)
        if not np.isfinite(values).all():
            raise ValueError("quant: features contain NaN or infinity")
        offset = values.min(axis=1)
        levels = (1 << bits) - 1
        step = np.maximum((values.max(axis=1) - offset) / levels, np.finfo(np.float32).tiny).astype(np.float32)
        quantised = np.clip(np.rint((values - offset[:, None]) / step[:, None]), 0, levels).astype(np.uint8)
        return b"".join((
            _HEADER.pack(bits),
            offset.astype(_PARAM_DTYPE).tobytes(),
            step.astype(_PARAM_DTYPE).tobytes(),
            zlib.compress(quantised.tobytes(), self.zlib_level),
        ))

    def decode_scale(self, record: ScaleRecord) -> Tensor:
        channels = record.shape[0]
        params_end = _HEADER.size + 2 * channels * _PARAM_DTYPE.itemsize
        payload = record.payload
        if len(payload) <= params_end:
            raise CodecError(f"scale {record.name!r}: quant payload of {len(payload)} bytes is truncated")
        (bits,) = _HEADER.unpack_from(payload)
        if not 1 <= bits <= 8:
            raise CodecError(f"scale {record.name!r}: quant bit depth {bits} not in 1..8")
        params = np.frombuffer(payload, dtype=_PARAM_DTYPE, count=2 * channels, offset=_HEADER.size)
        offset, step = params[:channels], params[channels:]
        if not (np.isfinite(offset).all() and np.isfinite(step).all() and (step > 0).all()):
            raise CodecError(f"scale {record.name!r}: quant parameters are not finite positive steps")
        levels = _inflate_exactly(payload[params_end:], record.numel, record.name)
        if levels.max(initial=0) >= (1 << bits):
            raise CodecError(f"scale {record.name!r}: level exceeds {bits}-bit range")
        values = offset[:, None] + levels.reshape(channels, -1).astype(np.float32) * step[:, None]
        return torch.from_numpy(values.reshape(record.shape).astype(np.float32))


def _inflate_exactly(data: bytes, expected: int, scale: str) -> np.ndarray:
    """Inflate at most ``expected`` bytes (no zip bomb) and insist on exactly that many."""
    inflater = zlib.decompressobj()
    try:
        raw = inflater.decompress(data, expected)
    except zlib.error as exc:
        raise CodecError(f"scale {scale!r}: corrupt quant stream ({exc})") from exc
    if len(raw) != expected or not inflater.eof or inflater.unconsumed_tail or inflater.unused_data:
        raise CodecError(f"scale {scale!r}: quant stream does not hold exactly {expected} levels")
    return np.frombuffer(raw, dtype=np.uint8)
