"""The versioned container every learned-codec payload travels in: header + substreams, checked before use.

Layout (little-endian)::

    offset  size    field
    0       4       magic b"FPNC"
    4       1       version (1)
    5       1       n = length of the codec id (1..32)
    6       n       codec id, ASCII (e.g. b"learned")
    6+n     8       codec fingerprint (the 16 hex digits of FeatureCodec.fingerprint, as 8 bytes)
    14+n    1       scale index (0..3 for P2..P5; 255 when the payload is not tied to a scale)
    15+n    6       decoded shape C, H, W (uint16 each)
    21+n    8       phi (float64)
    29+n    1       k = substream count (0..8)
    30+n    14*k    per substream: latent shape c, h, w (uint16 each), byte length (uint32),
                    check (uint32, codec-defined: the learned codec stores the CRC32 of the
                    substream's decoded int32 symbols, verified after entropy decoding)
    30+n+14k 4      CRC32 (zlib.crc32) of the header bytes before it, then of the body
    34+n+14k ...    body: the substreams, concatenated in order

:func:`unpack` checks, in order and before anything is decoded or allocated: the header is complete,
magic and version, codec id and fingerprint equal what the receiver expects, shapes lie within the
limits of :mod:`.base`, the substream lengths add up to exactly the body, and the CRC matches. The
CRC covers the header too, so every single flipped bit and every burst of up to 32 bits is caught.
It is what guards the rANS decoder against corrupted bodies (CompressAI's decoder does not bound its
reads on garbage input); it is an integrity check, not authentication. The per-substream check then
catches what survives it: a forged payload with a recomputed CRC, or an encoder and a decoder that
disagree on the CDF indexes (CompressAI #279), is refused instead of decoded into garbage.
"""

from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass

from ..errors import CodecError
from .base import MAX_CHANNELS, MAX_ELEMENTS, MAX_SIDE, check_shape

MAGIC = b"FPNC"
VERSION = 1
MAX_CODEC_ID = 32
MAX_STREAMS = 8
NO_SCALE = 255
FINGERPRINT_BYTES = 8

_FIXED = struct.Struct("<4sBB")
_MIDDLE = struct.Struct("<8sB3HdB")
_STREAM = struct.Struct("<3HII")
_CRC = struct.Struct("<I")

Shape = tuple[int, int, int]


@dataclass(frozen=True)
class PayloadHeader:
    """What a payload declares about itself.

    Attributes:
        codec: codec id (registry name).
        fingerprint: 16 hex digits, the encoder's :attr:`FeatureCodec.fingerprint`.
        scale: FPN scale index, or :data:`NO_SCALE`.
        shape: decoded ``(C, H, W)``.
        phi: rate parameter used by the encoder.
        latent_shapes: ``(c, h, w)`` of each substream's latent, in body order.
        checks: one codec-defined uint32 per substream (0 when unused).
    """

    codec: str
    fingerprint: str
    scale: int
    shape: Shape
    phi: float
    latent_shapes: tuple[Shape, ...]
    checks: tuple[int, ...] = ()

    def validate(self) -> None:
        """Check every field against hard limits; raises :class:`CodecError` naming the field."""
        if not (1 <= len(self.codec) <= MAX_CODEC_ID and self.codec.isascii() and self.codec.isprintable()):
            raise CodecError(f"codec id {self.codec!r} must be 1..{MAX_CODEC_ID} printable ASCII characters")
        try:
            if len(bytes.fromhex(self.fingerprint)) != FINGERPRINT_BYTES:
                raise ValueError
        except ValueError:
            raise CodecError(f"fingerprint {self.fingerprint!r} is not {2 * FINGERPRINT_BYTES} hex digits") from None
        if not 0 <= self.scale <= NO_SCALE:
            raise CodecError(f"scale index {self.scale} out of range 0..{NO_SCALE}")
        check_shape(self.shape, "container header")
        if not math.isfinite(self.phi):
            raise CodecError(f"phi {self.phi} is not finite")
        if len(self.latent_shapes) > MAX_STREAMS:
            raise CodecError(f"{len(self.latent_shapes)} substreams exceed {MAX_STREAMS}")
        if len(self.checks) != len(self.latent_shapes) or not all(0 <= c < 2**32 for c in self.checks):
            raise CodecError(f"need one uint32 check per substream, got {self.checks}")
        total = 0
        for latent in self.latent_shapes:
            if len(latent) != 3 or not all(1 <= side <= max(MAX_CHANNELS, MAX_SIDE) for side in latent):
                raise CodecError(f"latent shape {latent} out of range")
            total += latent[0] * latent[1] * latent[2]
        if total > MAX_ELEMENTS:
            raise CodecError(f"latents hold {total} elements, more than {MAX_ELEMENTS}")


def pack(header: PayloadHeader, streams: list[bytes]) -> bytes:
    """Serialise ``header`` and ``streams`` (one per latent shape) into one payload."""
    header.validate()
    if len(streams) != len(header.latent_shapes):
        raise ValueError(f"{len(streams)} substreams for {len(header.latent_shapes)} latent shapes")
    codec = header.codec.encode("ascii")
    body = b"".join(streams)
    parts = [
        _FIXED.pack(MAGIC, VERSION, len(codec)),
        codec,
        _MIDDLE.pack(bytes.fromhex(header.fingerprint), header.scale, *header.shape, float(header.phi),
                     len(streams)),
    ]
    for latent, stream, check in zip(header.latent_shapes, streams, header.checks):
        if len(stream) >= 2**32:
            raise ValueError(f"substream of {len(stream)} bytes does not fit a uint32 length")
        parts.append(_STREAM.pack(*latent, len(stream), check))
    head = b"".join(parts)
    return b"".join((head, _CRC.pack(zlib.crc32(body, zlib.crc32(head))), body))


def unpack(payload: bytes, codec: str | None = None, fingerprint: str | None = None,
           ) -> tuple[PayloadHeader, list[bytes]]:
    """Parse and check a payload; returns its header and substreams.

    Args:
        payload: the bytes as received.
        codec, fingerprint: what the receiver decodes; a payload declaring anything else is refused.

    Raises:
        CodecError: truncated, corrupt or inconsistent payload, or one from another codec.
    """
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise CodecError(f"payload must be bytes, got {type(payload).__name__}")
    payload = bytes(payload)
    view = _Reader(payload)
    magic, version, codec_length = view.take(_FIXED)
    if magic != MAGIC:
        raise CodecError(f"bad magic {magic!r}: not an fpnlink codec payload")
    if version != VERSION:
        raise CodecError(f"container version {version} is not supported (this build reads {VERSION})")
    if not 1 <= codec_length <= MAX_CODEC_ID:
        raise CodecError(f"codec id length {codec_length} out of range 1..{MAX_CODEC_ID}")
    raw_codec = view.bytes(codec_length)
    try:
        codec_id = raw_codec.decode("ascii")
    except UnicodeDecodeError:
        raise CodecError(f"codec id {raw_codec!r} is not ASCII") from None
    raw_print, scale, channels, height, width, phi, count = view.take(_MIDDLE)
    if count > MAX_STREAMS:
        raise CodecError(f"{count} substreams exceed {MAX_STREAMS}")
    latents, lengths, checks = [], [], []
    for _ in range(count):
        c, h, w, length, check = view.take(_STREAM)
        latents.append((c, h, w))
        lengths.append(length)
        checks.append(check)
    head_end = view.offset
    (crc,) = view.take(_CRC)
    header = PayloadHeader(codec_id, raw_print.hex(), scale, (channels, height, width), phi, tuple(latents),
                           tuple(checks))
    header.validate()
    if codec is not None and codec_id != codec:
        raise CodecError(f"payload is from codec {codec_id!r}, expected {codec!r}")
    if fingerprint is not None and header.fingerprint != fingerprint:
        raise CodecError(f"payload fingerprint {header.fingerprint} differs from the decoder's {fingerprint}")
    body = payload[view.offset:]
    if sum(lengths) != len(body):
        raise CodecError(f"substream lengths add up to {sum(lengths)} bytes, the body holds {len(body)}")
    if zlib.crc32(body, zlib.crc32(payload[:head_end])) != crc:
        raise CodecError("CRC32 mismatch: the payload is corrupt")
    streams, start = [], 0
    for length in lengths:
        streams.append(body[start:start + length])
        start += length
    return header, streams


class _Reader:
    """Bounds-checked sequential reads."""

    def __init__(self, data: bytes) -> None:
        self.data, self.offset = data, 0

    def bytes(self, size: int) -> bytes:
        if self.offset + size > len(self.data):
            raise CodecError(f"payload truncated: header needs {self.offset + size} bytes, got {len(self.data)}")
        chunk = self.data[self.offset:self.offset + size]
        self.offset += size
        return chunk

    def take(self, layout: struct.Struct) -> tuple:
        return layout.unpack(self.bytes(layout.size))
