"""The cross-scale codec: frame round trips, the starve level, cross-process decoding, refusals.

Uses the shipped tiny checkpoint (``shared/codec/assets/xscale-tiny.pt``: M=16, 4 gain levels, trained on
``random:0`` features at 128 px).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from payload_fuzz import fuzzed_payloads

from fpnlink.shared.codec import CrossScaleCodec, LearnedCodec, make_codec
from fpnlink.shared.codec.container import unpack
from fpnlink.shared.codec.crossscale import CrossScaleConfig, CrossScaleHyperprior
from fpnlink.shared.codec.xscale import TINY_CHECKPOINT
from fpnlink.shared.errors import CodecError, WeightsError
from fpnlink.shared.wire import pb
from fpnlink.shared.wire.convert import FrameHeader, build_frame, parse_frame

SCALES = ("0", "1", "2", "3")


@pytest.fixture(scope="module")
def codec() -> CrossScaleCodec:
    return CrossScaleCodec(TINY_CHECKPOINT)


@pytest.fixture(scope="module")
def features(tiny_bundle) -> dict[str, torch.Tensor]:
    """P2..P5 of one 96x128 image from the random:0 backbone (P5 is 3x4: odd sizes are exercised)."""
    image = torch.rand(3, 96, 128, generator=torch.Generator().manual_seed(7))
    with torch.inference_mode():
        maps = tiny_bundle.edge_half(["detect"])([image])[0]
    return {name: maps[name].clone() for name in SCALES}


def _relative_error(decoded: dict[str, torch.Tensor], features: dict[str, torch.Tensor], name: str) -> float:
    return float((decoded[name] - features[name]).pow(2).mean() / features[name].var())


class TestRoundTrip:
    def test_registered(self):
        assert isinstance(make_codec("xscale", TINY_CHECKPOINT), CrossScaleCodec)

    def test_frame_round_trip(self, codec, features):
        records = codec.encode(features, dict.fromkeys(SCALES, 2.0))
        decoded = codec.decode(records)
        assert list(decoded) == list(SCALES)
        for name in SCALES:
            assert decoded[name].shape == features[name].shape
            assert _relative_error(decoded, features, name) < 0.5

    def test_channels_last_decoder_gives_contiguous_maps_equal_to_the_standard_layout(self, codec, features):
        records = codec.encode(features, dict.fromkeys(SCALES, 2.0))
        assert codec.model.branches[0].g_s[0].weight.is_contiguous(memory_format=torch.channels_last)
        standard = make_codec("xscale", TINY_CHECKPOINT)
        standard.model.to(memory_format=torch.contiguous_format)
        assert standard.model.branches[0].g_s[0].weight.is_contiguous()
        assert standard.fingerprint == codec.fingerprint
        decoded, reference = codec.decode(records), standard.decode(records)
        for name in SCALES:
            assert decoded[name].is_contiguous()
            torch.testing.assert_close(decoded[name], reference[name], rtol=1e-4, atol=1e-4)

    def test_any_phi_survives_the_wire(self, codec, features):
        # Rate control picks phi such as 3.525815366170543; the wire's ScaleRecord.phi is a float32.
        phi = {name: 1.0 + 1 / 3 + index / 7 for index, name in enumerate(SCALES)}
        records = codec.encode(features, phi)
        header = FrameHeader("s", 1, 0, (96, 128), (96, 128), "0" * 16, ["detect"], codec.name, codec.fingerprint)
        frame = pb.FeatureFrame.FromString(build_frame(header, records).SerializeToString())
        _, received = parse_frame(frame)
        decoded, local = codec.decode(received), codec.decode(records)
        assert [r.phi for r in received] == [r.phi for r in records] == [float(np.float32(phi[n])) for n in SCALES]
        assert all(torch.equal(decoded[n], local[n]) for n in SCALES)

    def test_records_in_any_order(self, codec, features):
        records = codec.encode(features, dict.fromkeys(SCALES, 1.5))
        forward, backward = codec.decode(records), codec.decode(records[::-1])
        assert all(torch.equal(forward[n], backward[n]) for n in SCALES)

    def test_partial_frame_with_every_coarser_scale(self, codec, features):
        coarse = {n: features[n] for n in ("2", "3")}
        decoded = codec.decode(codec.encode(coarse, dict.fromkeys(coarse, 1.0)))
        assert list(decoded) == ["2", "3"]

    @pytest.mark.parametrize("height, width", [(128, 128), (200, 333), (416, 1333)])
    def test_input_sizes(self, codec, tiny_bundle, height, width):
        image = torch.rand(3, height, width, generator=torch.Generator().manual_seed(height))
        with torch.inference_mode():
            maps = tiny_bundle.edge_half(["detect"])([image])[0]
        frame = {n: maps[n] for n in SCALES}
        decoded = codec.decode(codec.encode(frame, dict.fromkeys(SCALES, 1.0)))
        assert all(decoded[n].shape == frame[n].shape and torch.isfinite(decoded[n]).all() for n in SCALES)

    def test_scale_bytes_depend_on_own_phi_only(self, codec, features):
        """MFIBA allocates per scale: a scale's payload does not change with another scale's phi."""
        low = codec.encode(features, {"0": 2.0, "1": 0.5, "2": 0.5, "3": 0.5})
        high = codec.encode(features, {"0": 2.0, "1": 3.0, "2": 3.0, "3": 3.0})
        assert low[0].payload == high[0].payload

    def test_cross_process_decode_is_bit_exact(self, features):
        from fpnlink.tools.codec.crosscheck import cross_process_check

        result = cross_process_check(TINY_CHECKPOINT, features, 2.0, threads=(1, 2), codec_name="xscale")
        assert result["symbols_identical"], result
        assert result["deterministic"], result


class TestStarve:
    def test_starve_level_sends_a_header_only(self, codec, features):
        records = codec.encode(features, dict.fromkeys(SCALES, codec.starve_phi))
        for record in records:
            header, streams = unpack(record.payload, codec="xscale", fingerprint=codec.fingerprint)
            assert streams == [] and header.latent_shapes == ()
            assert len(record.payload) < 48
        decoded = codec.decode(records)
        assert all(torch.isfinite(decoded[n]).all() for n in SCALES)

    def test_starved_scale_is_rebuilt_from_coarser_ones(self, codec, features):
        """Each scale starved in turn, the others coded: cheap and still an estimate of the scale."""
        coded = {r.name: r for r in codec.encode(features, dict.fromkeys(SCALES, 3.0))}
        starved = {r.name: r for r in codec.encode(features, dict.fromkeys(SCALES, codec.starve_phi))}
        for name in SCALES:
            records = [starved[n] if n == name else coded[n] for n in SCALES]
            decoded = codec.decode(records)
            assert len(starved[name].payload) * 2 < len(coded[name].payload)
            assert _relative_error(decoded, features, name) < 1.5

    def test_starve_header_with_streams_refused(self, codec, features):
        coded = codec.encode(features, dict.fromkeys(SCALES, 2.0))
        forged = [dataclasses.replace(r, phi=codec.starve_phi) for r in coded]
        with pytest.raises(CodecError):
            codec.decode(forged)


class TestRefusals:
    def test_missing_coarser_scale(self, codec, features):
        records = codec.encode(features, dict.fromkeys(SCALES, 1.0))
        with pytest.raises(CodecError, match="every coarser"):
            codec.decode([r for r in records if r.name != "2"])

    def test_duplicate_scale(self, codec, features):
        records = codec.encode(features, dict.fromkeys(SCALES, 1.0))
        with pytest.raises(CodecError, match="twice"):
            codec.decode(records + records[:1])

    def test_sizes_that_do_not_nest(self, codec, features):
        shrunk = dict(features, **{"0": features["0"][..., :10, :10]})
        records = codec.encode(shrunk, dict.fromkeys(SCALES, 1.0))
        with pytest.raises(CodecError, match="twice the coarser"):
            codec.decode(records)

    def test_single_scale_decode_points_to_frame_decode(self, codec, features):
        record = codec.encode(features, dict.fromkeys(SCALES, 1.0))[0]
        with pytest.raises(CodecError, match="whole frames"):
            codec.decode_scale(record)

    def test_learned_checkpoint_is_not_an_xscale_one(self):
        from fpnlink.shared.codec.learned import TINY_CHECKPOINT as LEARNED_TINY

        with pytest.raises(WeightsError, match="cross-scale"):
            CrossScaleCodec(LEARNED_TINY)
        with pytest.raises(WeightsError):
            LearnedCodec(TINY_CHECKPOINT)

    def test_codec_of_another_backbone(self, codec, tiny_bundle):
        codec.check_backbone({tiny_bundle.backbone_weight_fingerprints["faster"]})
        with pytest.raises(WeightsError, match="trained on the features of backbone"):
            codec.check_backbone({"0123456789abcdef"})

    def test_edge_and_cloud_refuse_a_codec_of_another_backbone(self, codec, tiny_bundle):
        from fpnlink.cloud.engine import CloudEngine, default_codecs
        from fpnlink.edge.agent import EdgeAgent
        from fpnlink.shared.model import load_bundle

        other = load_bundle("random:1", tiny_bundle.config, archs=("faster",))
        with pytest.raises(WeightsError, match="trained on the features of backbone"):
            EdgeAgent(other, codec, ["detect"], "s")
        with pytest.raises(WeightsError, match="trained on the features of backbone"):
            CloudEngine(other, codecs={"xscale": codec})
        assert "xscale" not in default_codecs(other) and "quant" in default_codecs(other)
        EdgeAgent(tiny_bundle, codec, ["detect"], "s")

    def test_fuzzed_payloads(self, codec, features):
        """Truncations, bit flips, forged headers (CRC recomputed) and random bytes: CodecError only."""
        records = codec.encode(features, dict.fromkeys(SCALES, 2.0))
        target = records[1]
        _, streams = unpack(target.payload, codec=codec.name, fingerprint=codec.fingerprint)
        for case in fuzzed_payloads(target.payload, sum(len(s) for s in streams), seed=1):
            frame = [dataclasses.replace(r, payload=case) if r is target else r for r in records]
            with pytest.raises(CodecError):
                codec.decode(frame)


class TestNetwork:
    def test_training_path_starves_and_counts_bits(self):
        model = CrossScaleHyperprior(CrossScaleConfig(latent=8, hyper=4, hidden=8, num_gains=3, decoder=8))
        crops = [torch.randn(2, 256, 16 >> s, 16 >> s) for s in range(4)]
        starve = torch.tensor([[True, False, False, True], [False, False, False, False]])
        out = model.forward_frame(crops, torch.full((2, 4), 1.0), starve)
        assert out["bits"][0][0] == 0 and out["bits"][3][0] == 0
        assert all(out["bits"][s][1] > 0 for s in range(4))
        assert all(out["x_hat_norm"][s].shape == crops[s].shape for s in range(4))

    def test_config_wants_four_per_scale_branches(self):
        with pytest.raises(ValueError):
            CrossScaleConfig(per_scale=False)
