"""Codecs: round trips, declared losslessness, and clear errors on bad payloads."""

from __future__ import annotations

import dataclasses
import zlib

import pytest
import torch

from fpnlink.shared.codec import ScaleRecord, available_codecs, codec_has_weights, make_codec, register_codec
from fpnlink.shared.codec.learned import TINY_CHECKPOINT
from fpnlink.shared.codec.raw import RawCodec
from fpnlink.shared.errors import CodecError, UnsupportedError


@pytest.fixture
def features() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    return {name: torch.randn(1, 8, 16 // 2**i, 24 // 2**i, generator=generator) for i, name in enumerate("0123")}


class TestRegistry:
    def test_known_codecs(self):
        assert {"raw", "raw16", "quant"} <= set(available_codecs())

    def test_unknown_codec(self):
        with pytest.raises(UnsupportedError, match="known"):
            make_codec("jpeg-xl")

    def test_checkpoint_only_for_codecs_with_weights(self):
        assert [n for n in available_codecs() if codec_has_weights(n)] == ["learned", "xscale"]
        with pytest.raises(UnsupportedError, match="codec 'quant' has no weights"):
            make_codec("quant", checkpoint=TINY_CHECKPOINT)
        assert make_codec("learned", checkpoint=TINY_CHECKPOINT).checkpoint == TINY_CHECKPOINT

    def test_duplicate_name_refused(self):
        with pytest.raises(ValueError, match="already registered"):
            register_codec("raw")(RawCodec)

    def test_fingerprints_differ_by_config(self):
        assert make_codec("quant", zlib_level=1).fingerprint != make_codec("quant", zlib_level=9).fingerprint
        assert make_codec("raw").fingerprint == make_codec("raw").fingerprint


class TestRoundTrip:
    @pytest.mark.parametrize("name", ["raw", "raw16", "quant"])
    def test_round_trip(self, features, name):
        codec = make_codec(name)
        decoded = codec.decode(codec.encode(features))
        assert set(decoded) == set(features)
        for key, tensor in features.items():
            assert decoded[key].shape == tensor.shape
            tolerance = 0 if codec.lossless else (tensor.max() - tensor.min()).item() / 2 ** codec.default_phi
            assert (decoded[key].float() - tensor).abs().max().item() <= tolerance + 1e-3

    def test_raw_is_bit_exact(self, features):
        codec = make_codec("raw")
        decoded = codec.decode(codec.encode(features))
        assert all(torch.equal(decoded[k], features[k]) for k in features)

    def test_quant_rate_falls_with_phi(self, features):
        codec = make_codec("quant")
        sizes = [sum(len(r.payload) for r in codec.encode(features, dict.fromkeys(features, float(bits))))
                 for bits in range(8, 0, -1)]
        assert sizes == sorted(sizes, reverse=True) and sizes[0] > sizes[-1]

    def test_quant_side_information_is_in_payload(self, features):
        record = make_codec("quant").encode({"0": features["0"]}, {"0": 4.0})[0]
        channels = features["0"].shape[1]
        assert len(record.payload) > 1 + 8 * channels

    def test_phi_out_of_range(self, features):
        with pytest.raises(ValueError, match="phi"):
            make_codec("quant").encode(features, {"0": 9.0})

    def test_wrong_input_rank(self):
        with pytest.raises(ValueError, match=r"\[1, C, H, W\]"):
            make_codec("raw").encode({"0": torch.zeros(8, 4, 4)})


class TestBadPayloads:
    @pytest.fixture
    def record(self, features) -> ScaleRecord:
        return make_codec("quant").encode({"0": features["0"]}, {"0": 5.0})[0]

    @pytest.mark.parametrize("cut", [0, 1, 10, -1])
    def test_truncated(self, record, cut):
        with pytest.raises(CodecError):
            make_codec("quant").decode([dataclasses.replace(record, payload=record.payload[:cut])])

    def test_bit_depth_corrupted(self, record):
        bad = bytes([0]) + record.payload[1:]
        with pytest.raises(CodecError, match="bit depth"):
            make_codec("quant").decode([dataclasses.replace(record, payload=bad)])

    def test_lying_shape_is_refused_before_allocation(self, record):
        with pytest.raises(CodecError, match="more than|out of range"):
            make_codec("quant").decode([dataclasses.replace(record, shape=(4096, 4096, 4096))])

    def test_zip_bomb_is_bounded(self, record):
        params_end = 1 + 8 * record.shape[0]
        bomb = record.payload[:params_end] + zlib.compress(bytes(50_000_000))
        with pytest.raises(CodecError, match="exactly"):
            make_codec("quant").decode([dataclasses.replace(record, payload=bomb)])

    def test_raw_wrong_length(self, features):
        record = make_codec("raw").encode({"0": features["0"]})[0]
        with pytest.raises(CodecError, match="needs"):
            make_codec("raw").decode([dataclasses.replace(record, payload=record.payload + b"x")])

    def test_bad_dtype(self, record):
        with pytest.raises(CodecError, match="dtype"):
            make_codec("quant").decode([dataclasses.replace(record, dtype="int64")])

    def test_random_bytes_never_crash(self, record):
        generator = torch.Generator().manual_seed(0)
        codec = make_codec("quant")
        for trial in range(50):
            noise = torch.randint(0, 256, (len(record.payload),), generator=generator, dtype=torch.uint8)
            mutated = bytes(noise.tolist()) if trial % 2 else _flip_bytes(record.payload, trial)
            try:
                codec.decode([dataclasses.replace(record, payload=mutated)])
            except CodecError:
                pass


def _flip_bytes(payload: bytes, seed: int) -> bytes:
    data = bytearray(payload)
    for offset in range(seed % 7, len(data), 97 + seed):
        data[offset] ^= 0xFF
    return bytes(data)
