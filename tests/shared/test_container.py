"""The learned-codec container: round trip, limits, and fuzzed payloads that must raise CodecError."""

from __future__ import annotations

import dataclasses
import random
import struct
import zlib

import pytest

from fpnlink.shared.codec import container
from fpnlink.shared.codec.base import MAX_ELEMENTS
from fpnlink.shared.errors import CodecError

FINGERPRINT = "0123456789abcdef"
HEADER = container.PayloadHeader("learned", FINGERPRINT, 3, (256, 25, 38), 1.25, ((8, 7, 10), (16, 14, 20)),
                                 (11, 22))
STREAMS = [b"z" * 9, bytes(range(40))]


def _payload() -> bytes:
    return container.pack(HEADER, STREAMS)


def _header_end(payload: bytes) -> int:
    return len(payload) - sum(len(s) for s in STREAMS) - 4


def _reseal(head: bytes, body: bytes) -> bytes:
    """A payload whose CRC is recomputed: it lies consistently, so only validation can refuse it."""
    return head + struct.pack("<I", zlib.crc32(body, zlib.crc32(head))) + body


class TestRoundTrip:
    def test_pack_unpack(self):
        header, streams = container.unpack(_payload(), codec="learned", fingerprint=FINGERPRINT)
        assert header == HEADER and streams == STREAMS

    def test_header_size(self):
        overhead = len(_payload()) - sum(len(s) for s in STREAMS)
        assert overhead == 6 + len("learned") + 24 + 14 * 2 + 4

    def test_no_substreams(self):
        header = dataclasses.replace(HEADER, latent_shapes=(), checks=())
        assert container.unpack(container.pack(header, []))[1] == []

    def test_pack_refuses_mismatched_streams(self):
        with pytest.raises(ValueError, match="substreams"):
            container.pack(HEADER, STREAMS[:1])

    @pytest.mark.parametrize("field, value", [
        ("codec", ""), ("codec", "x" * 40), ("fingerprint", "xyz"), ("scale", 256), ("shape", (0, 4, 4)),
        ("shape", (256, 4097, 4)), ("shape", (4096, 4096, 4096)), ("phi", float("nan")),
        ("latent_shapes", ((0, 1, 1), (1, 1, 1))), ("checks", (1,)),
    ])
    def test_invalid_header_refused(self, field, value):
        with pytest.raises(CodecError):
            dataclasses.replace(HEADER, **{field: value}).validate()


class TestRefusals:
    def test_other_codec(self):
        with pytest.raises(CodecError, match="codec"):
            container.unpack(_payload(), codec="hyper")

    def test_other_fingerprint(self):
        with pytest.raises(CodecError, match="fingerprint"):
            container.unpack(_payload(), fingerprint="f" * 16)

    def test_not_bytes(self):
        with pytest.raises(CodecError, match="bytes"):
            container.unpack("text")  # type: ignore[arg-type]

    def test_future_version(self):
        payload = bytearray(_payload())
        payload[4] = container.VERSION + 1
        with pytest.raises(CodecError, match="version"):
            container.unpack(bytes(payload))

    def test_lying_lengths_with_valid_crc(self):
        payload = _payload()
        end = _header_end(payload)
        head, body = bytearray(payload[:end]), payload[end + 4:]
        length_at = end - 14 * 2 + 6  # first substream's length field
        struct.pack_into("<I", head, length_at, 2**31)
        with pytest.raises(CodecError, match="lengths add up"):
            container.unpack(_reseal(bytes(head), body))

    def test_huge_latent_with_valid_crc(self):
        payload = _payload()
        end = _header_end(payload)
        head, body = bytearray(payload[:end]), payload[end + 4:]
        struct.pack_into("<3H", head, end - 14 * 2, 4096, 4096, 4096)
        with pytest.raises(CodecError, match="latent"):
            container.unpack(_reseal(bytes(head), body))
        assert 4096**3 > MAX_ELEMENTS


class TestFuzz:
    """A few hundred corrupted payloads: each raises CodecError (never another exception, never hangs)."""

    def test_every_truncation(self):
        payload = _payload()
        for size in range(len(payload)):
            with pytest.raises(CodecError):
                container.unpack(payload[:size])

    def test_random_bit_flips(self):
        payload, rng = _payload(), random.Random(0)
        for _ in range(300):
            corrupt = bytearray(payload)
            for _ in range(rng.randint(1, 3)):
                corrupt[rng.randrange(len(corrupt))] ^= 1 << rng.randrange(8)
            if bytes(corrupt) == payload:
                continue
            with pytest.raises(CodecError):
                container.unpack(bytes(corrupt), codec="learned", fingerprint=FINGERPRINT)

    def test_random_header_fields_with_valid_crc(self):
        payload, rng = _payload(), random.Random(1)
        end = _header_end(payload)
        body = payload[end + 4:]
        accepted = 0
        for _ in range(300):
            head = bytearray(payload[:end])
            for _ in range(rng.randint(1, 4)):
                head[rng.randrange(len(head))] = rng.randrange(256)
            try:
                header, streams = container.unpack(_reseal(bytes(head), body))
            except CodecError:
                continue
            # What passes is internally consistent and within limits: the codec checks the rest.
            header.validate()
            assert sum(len(s) for s in streams) == len(body)
            accepted += 1
        assert accepted < 300

    def test_random_bytes(self):
        rng = random.Random(2)
        for _ in range(200):
            blob = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 120)))
            if rng.random() < 0.5:
                blob = container.MAGIC + bytes([container.VERSION]) + blob
            with pytest.raises(CodecError):
                container.unpack(blob)
