"""Uncompressed features: fp32 (lossless) or fp16, little-endian, C-order."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..errors import CodecError
from .base import FeatureCodec, ScaleRecord
from .registry import register_codec


@register_codec("raw")
class RawCodec(FeatureCodec):
    """fp32 bytes as they are: bit-exact."""

    name = "raw"
    lossless = True
    phi_range = (0.0, 0.0)
    default_phi = 0.0
    _numpy_dtype = np.dtype("<f4")

    def output_dtype(self) -> str:
        return "float32"

    def encode_scale(self, tensor: Tensor, phi: float) -> bytes:
        return tensor.numpy().astype(self._numpy_dtype).tobytes()

    def decode_scale(self, record: ScaleRecord) -> Tensor:
        expected = record.numel * self._numpy_dtype.itemsize
        if len(record.payload) != expected:
            raise CodecError(f"scale {record.name!r}: {self.name} payload has {len(record.payload)} bytes, "
                             f"shape {record.shape} needs {expected}")
        if record.dtype != self.output_dtype():
            raise CodecError(f"scale {record.name!r}: {self.name} carries {self.output_dtype()}, not {record.dtype}")
        array = np.frombuffer(record.payload, dtype=self._numpy_dtype).reshape(record.shape)
        return torch.from_numpy(array.copy())


@register_codec("raw16")
class Raw16Codec(RawCodec):
    """fp16 bytes: half the size of ``raw``, rounding to half precision."""

    name = "raw16"
    lossless = False
    _numpy_dtype = np.dtype("<f2")

    def output_dtype(self) -> str:
        return "float16"
