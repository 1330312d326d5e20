"""The edge agent: front half + codec into one FeatureFrame, validated before any work."""

from __future__ import annotations

import time

import pytest
import torch

from fpnlink.edge import EdgeAgent
from fpnlink.shared.codec import make_codec
from fpnlink.shared.errors import UnsupportedError
from fpnlink.shared.model import TRANSMITTED_SCALES, ModelConfig, load_bundle
from fpnlink.shared.wire import TASK_TO_PB, parse_frame
from fpnlink.shared.wire.convert import expected_scale_shape

TASKS = ["detect", "segment"]


@pytest.fixture(scope="module")
def agents(tiny_bundle) -> dict[str, EdgeAgent]:
    return {name: EdgeAgent(tiny_bundle, make_codec(name), TASKS, "cam-1") for name in ("raw", "quant")}


@pytest.fixture(scope="module")
def encoded(agents):
    image = torch.rand(3, 96, 128, generator=torch.Generator().manual_seed(3))
    return image, {name: agent.encode(image, frame_id=5) for name, agent in agents.items()}


class TestEncode:
    def test_frame_carries_p2_to_p5_with_consistent_shapes(self, encoded):
        _, out = encoded
        frame = out["quant"].frame
        assert [s.name for s in frame.scales] == list(TRANSMITTED_SCALES)
        assert (frame.input_size.height, frame.input_size.width) == (96, 128)
        assert (frame.original_size.height, frame.original_size.width) == (96, 128)
        for scale in frame.scales:
            assert tuple(scale.shape) == (256, *expected_scale_shape((96, 128), scale.name))
            assert scale.phi == make_codec("quant").default_phi

    def test_header_and_fingerprints(self, encoded, tiny_bundle):
        _, out = encoded
        frame = out["quant"].frame
        assert frame.model_fingerprint == tiny_bundle.backbone_fingerprint_for(TASKS)
        assert frame.codec == "quant" and frame.codec_fingerprint == make_codec("quant").fingerprint
        assert list(frame.tasks) == [TASK_TO_PB[t] for t in TASKS]
        assert frame.stream_id == "cam-1" and frame.frame_id == 5
        assert abs(frame.capture_time_us - time.time_ns() // 1000) < 600 * 10**6

    def test_sizes_and_timings(self, encoded):
        _, out = encoded
        raw, quant = out["raw"], out["quant"]
        fp32 = 256 * sum(h * w for h, w in (expected_scale_shape((96, 128), n) for n in TRANSMITTED_SCALES)) * 4
        for item in (raw, quant):
            assert item.frame_bytes == len(item.frame.SerializeToString())
            assert item.raw_feature_bytes == fp32
            assert set(item.stage_ms) == {"backbone", "encode"} and min(item.stage_ms.values()) > 0
            assert item.rate_decision is None  # no rate control
        assert sum(len(s.payload) for s in raw.frame.scales) == fp32
        assert raw.frame_bytes > fp32
        assert quant.frame_bytes < raw.frame_bytes / 3

    def test_raw_frame_decodes_to_the_edge_features(self, encoded, agents):
        image, out = encoded
        _, records = parse_frame(out["raw"].frame)
        decoded = make_codec("raw").decode(records)
        with torch.inference_mode():
            features, _, _ = agents["raw"].edge([image])
        assert decoded.keys() == features.keys()
        for name in TRANSMITTED_SCALES:
            assert torch.equal(decoded[name], features[name])

    def test_fingerprint_ignores_head_settings(self, tiny_bundle):
        # The edge cannot know the cloud's detection cap or score threshold: they must not change the print.
        other = load_bundle("random:0", ModelConfig(min_size=128, max_size=128, detections_per_img=50,
                                                    score_thresh=0.5), archs=("faster",))
        assert other.backbone_fingerprint_for(["detect"]) == tiny_bundle.backbone_fingerprint_for(TASKS)

    def test_resized_input(self, agents):
        item = agents["quant"].encode(torch.rand(3, 120, 200), frame_id=6)
        frame = item.frame
        original = (frame.original_size.height, frame.original_size.width)
        input_size = (frame.input_size.height, frame.input_size.width)
        assert original == (120, 200) and max(input_size) == 128
        for scale in frame.scales:
            assert tuple(scale.shape[1:]) == expected_scale_shape(input_size, scale.name)
        parse_frame(frame)

    def test_phi_per_scale(self, agents):
        image = torch.rand(3, 96, 128)
        low = agents["quant"].encode(image, frame_id=7, phi={"0": 2.0}).frame
        assert [s.phi for s in low.scales] == [2.0, 6.0, 6.0, 6.0]
        high = agents["quant"].encode(image, frame_id=7, phi={"0": 8.0}).frame
        assert len(low.scales[0].payload) < len(high.scales[0].payload)


class TestInvalid:
    @pytest.mark.parametrize("image, match", [
        (torch.rand(1, 96, 128), r"\[3, H, W\]"),
        (torch.rand(96, 128), r"\[3, H, W\]"),
        (torch.zeros(3, 96, 128, dtype=torch.uint8), "float"),
        (torch.full((3, 96, 128), 2.0), r"\[0, 1\]"),
        (torch.full((3, 96, 128), float("nan")), r"\[0, 1\]"),
        (torch.rand(3, 96, 9000), "8192"),
    ])
    def test_bad_image(self, agents, image, match):
        with pytest.raises(ValueError, match=match):
            agents["quant"].encode(image, frame_id=1)

    @pytest.mark.parametrize("frame_id", [-1, 2**64])
    def test_bad_frame_id(self, agents, frame_id):
        with pytest.raises(ValueError, match="frame_id"):
            agents["quant"].encode(torch.rand(3, 8, 8), frame_id=frame_id)

    def test_bad_phi(self, agents):
        with pytest.raises(ValueError, match="phi keys"):
            agents["quant"].encode(torch.rand(3, 8, 8), frame_id=1, phi={"pool": 4.0})
        with pytest.raises(ValueError, match="phi must lie"):
            agents["quant"].encode(torch.rand(3, 8, 8), frame_id=1, phi={"0": 9.0})

    def test_bad_tasks(self, tiny_bundle):
        with pytest.raises(UnsupportedError, match="tasks"):
            EdgeAgent(tiny_bundle, make_codec("raw"), ["track"], "s")
        with pytest.raises(UnsupportedError):
            EdgeAgent(tiny_bundle, make_codec("raw"), [], "s")

    def test_long_stream_id(self, tiny_bundle):
        with pytest.raises(ValueError, match="stream_id"):
            EdgeAgent(tiny_bundle, make_codec("raw"), ["detect"], "x" * 300)
