"""The feature-codec interface: per-scale records in, decoded FPN maps out.

A frame is one image. ``encode`` takes P2..P5 as ``'0'..'3'`` -> [1, C, H, W] and a rate parameter
``phi`` per scale (what MFIBA sets); it returns one :class:`ScaleRecord` per scale, whose ``payload``
is every byte the decoder needs (side information included). ``decode`` inverts it and must never
trust the payload: anything inconsistent raises :class:`~fpnlink.shared.errors.CodecError` before
any large allocation.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from ..errors import CodecError

MAX_CHANNELS = 4096
MAX_SIDE = 4096
MAX_ELEMENTS = 64 * 1024 * 1024
"""Largest decoded scale accepted (elements), whatever a payload claims."""
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float16": torch.float16}


def check_shape(shape: tuple[int, int, int], what: str) -> None:
    """Raise CodecError unless a decoded ``(C, H, W)`` lies within the hard limits."""
    channels, height, width = shape
    if not (1 <= channels <= MAX_CHANNELS and 1 <= height <= MAX_SIDE and 1 <= width <= MAX_SIDE):
        raise CodecError(f"{what}: shape {shape} out of range")
    if channels * height * width > MAX_ELEMENTS:
        raise CodecError(f"{what}: shape {shape} has more than {MAX_ELEMENTS} elements")


@dataclass(frozen=True)
class ScaleRecord:
    """One coded FPN scale as it travels.

    Attributes:
        name: FPN key, ``'0'..'3'`` for P2..P5.
        shape: decoded shape ``(C, H, W)``.
        dtype: decoded dtype name, a key of :data:`DTYPES`.
        phi: the rate parameter the encoder used.
        payload: coded bytes, side information included.
    """

    name: str
    shape: tuple[int, int, int]
    dtype: str
    phi: float
    payload: bytes

    def validate(self) -> None:
        """Check the declared shape and dtype against hard limits (before anything is allocated)."""
        if len(self.shape) != 3 or any(not isinstance(s, int) for s in self.shape):
            raise CodecError(f"scale {self.name!r}: shape must be 3 integers (C, H, W), got {self.shape}")
        check_shape(self.shape, f"scale {self.name!r}")
        if self.dtype not in DTYPES:
            raise CodecError(f"scale {self.name!r}: dtype must be one of {list(DTYPES)}, got {self.dtype!r}")

    @property
    def numel(self) -> int:
        channels, height, width = self.shape
        return channels * height * width


class FeatureCodec(ABC):
    """Base class of every feature codec.

    Subclasses set ``name``, ``lossless`` and ``phi_range`` and implement :meth:`encode_scale` and
    :meth:`decode_scale`; :meth:`config` lists the settings that change the bitstream.
    """

    name: ClassVar[str]
    lossless: ClassVar[bool]
    has_weights: ClassVar[bool] = False
    """Loads a weights file (``checkpoint=``); see :func:`~fpnlink.shared.codec.registry.make_codec`."""
    phi_range: ClassVar[tuple[float, float]]
    default_phi: ClassVar[float]
    cross_scale: ClassVar[bool] = False
    """Decoding a scale needs the records of every coarser scale of the frame."""
    starve_phi: float | None = None
    """The ``phi`` at which a scale is not transmitted (a header only, the scale rebuilt from the coarser
    ones); None: every ``phi`` codes the scale."""

    def config(self) -> dict[str, Any]:
        """Settings that change the bitstream; part of the fingerprint."""
        return {}

    def weights_digest(self) -> str:
        """Hash of learned weights, for codecs that have them."""
        return ""

    @property
    def fingerprint(self) -> str:
        """Hash of name, config and weights: encoder and decoder must agree on it."""
        blob = json.dumps({"name": self.name, "config": self.config(), "weights": self.weights_digest()},
                          sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def check_phi(self, phi: float) -> float:
        """``phi`` as the codec uses it: rounded to float32, the precision of ``ScaleRecord.phi`` on the wire,
        so that a payload's header and its record carry the same value.

        Raises:
            ValueError: outside :attr:`phi_range`.
        """
        low, high = self.phi_range
        value = float(np.float32(phi))
        if not low <= value <= high:
            raise ValueError(f"{self.name}: phi must lie in [{low}, {high}], got {phi}")
        return value

    def encode(self, features: dict[str, Tensor], phi: dict[str, float] | None = None) -> list[ScaleRecord]:
        """Code each scale of one frame.

        Args:
            features: ``'0'..'3'`` -> [1, C, H, W] float tensors.
            phi: rate parameter per scale; :attr:`default_phi` where missing.
        """
        phi = phi or {}
        records = []
        for name, tensor in features.items():
            if tensor.dim() != 4 or tensor.shape[0] != 1:
                raise ValueError(f"scale {name!r}: expected [1, C, H, W], got {tuple(tensor.shape)}")
            value = self.check_phi(phi.get(name, self.default_phi))
            payload = self.encode_scale(tensor[0].detach().float().cpu(), value)
            shape = (int(tensor.shape[1]), int(tensor.shape[2]), int(tensor.shape[3]))
            records.append(ScaleRecord(name, shape, self.output_dtype(), value, payload))
        return records

    def decode(self, records: list[ScaleRecord]) -> dict[str, Tensor]:
        """Decode records into ``name -> [1, C, H, W]``; raises CodecError on any inconsistency."""
        decoded = {}
        for record in records:
            record.validate()
            if not self.phi_range[0] <= record.phi <= self.phi_range[1]:
                raise CodecError(f"scale {record.name!r}: phi {record.phi} outside {self.phi_range}")
            decoded[record.name] = self.decode_scale(record).unsqueeze(0)
        return decoded

    def output_dtype(self) -> str:
        return "float32"

    def check_backbone(self, served: Collection[str]) -> None:
        """Raise :class:`~fpnlink.shared.errors.WeightsError` unless the codec fits one of the ``served`` backbones
        (weights fingerprints, ``ModelBundle.backbone_weight_fingerprints``); codecs without weights fit any."""

    @abstractmethod
    def encode_scale(self, tensor: Tensor, phi: float) -> bytes:
        """Code one [C, H, W] float32 CPU tensor."""

    @abstractmethod
    def decode_scale(self, record: ScaleRecord) -> Tensor:
        """Decode one validated record into [C, H, W] of ``record.dtype``."""
