"""Wire protocol: generated code is fresh; frames validate before anything is decoded."""

from __future__ import annotations

import pytest
import torch

from fpnlink.shared.codec import make_codec
from fpnlink.shared.errors import BadFrameError, UnsupportedError
from fpnlink.shared.wire import FrameHeader, build_frame, parse_frame, pb, result_to_dict, task_result
from fpnlink.shared.wire.convert import expected_scale_shape
from fpnlink.tools import protogen


def test_generated_code_is_fresh(tmp_path):
    for generated in protogen.generate(tmp_path):
        committed = protogen.OUTPUT_DIR / generated.name
        assert committed.read_text() == generated.read_text(), (
            f"{committed} is stale: run `python -m fpnlink.tools.protogen`")


def _header(**overrides) -> FrameHeader:
    values = dict(stream_id="cam-1", frame_id=7, capture_time_us=1, original_size=(96, 128), input_size=(96, 128),
                  model_fingerprint="m", tasks=["detect"], codec="raw", codec_fingerprint="c")
    values.update(overrides)
    return FrameHeader(**values)


def _frame(input_size=(96, 128), channels=4, **overrides) -> pb.FeatureFrame:
    features = {}
    for name in "0123":
        height, width = expected_scale_shape(input_size, name)
        features[name] = torch.zeros(1, channels, height, width)
    records = make_codec("raw").encode(features)
    return build_frame(_header(input_size=input_size, **overrides), records, planned_bits={"0": 123})


class TestFrames:
    def test_round_trip(self):
        frame = pb.FeatureFrame.FromString(_frame().SerializeToString())
        header, records = parse_frame(frame)
        assert header == _header()
        assert [r.name for r in records] == ["0", "1", "2", "3"]
        assert records[0].shape == (4, 24, 32)
        assert frame.scales[0].planned_bits == 123

    def test_expected_shapes_pad_to_32(self):
        assert expected_scale_shape((100, 130), "0") == (32, 40)
        assert expected_scale_shape((100, 130), "3") == (4, 5)

    def test_missing_scale(self):
        frame = _frame()
        del frame.scales[3]
        with pytest.raises(BadFrameError, match="once each"):
            parse_frame(frame)

    def test_pool_is_not_accepted(self):
        frame = _frame()
        frame.scales.add(name="pool", shape=[4, 2, 2], dtype="float32")
        with pytest.raises(BadFrameError, match="once each"):
            parse_frame(frame)

    def test_wrong_shape(self):
        frame = _frame()
        frame.scales[1].shape[1] += 1
        with pytest.raises(BadFrameError, match="does not match input size"):
            parse_frame(frame)

    def test_channel_mismatch(self):
        frame = _frame()
        frame.scales[2].shape[0] = 5
        with pytest.raises(BadFrameError, match="channels"):
            parse_frame(frame)

    def test_no_tasks(self):
        frame = _frame()
        del frame.tasks[:]
        with pytest.raises(BadFrameError, match="no task"):
            parse_frame(frame)

    def test_unknown_task(self):
        frame = _frame()
        frame.tasks.append(42)
        with pytest.raises(UnsupportedError, match="task"):
            parse_frame(frame)

    @pytest.mark.parametrize("size", [(0, 10), (10, 100_000)])
    def test_bad_sizes(self, size):
        frame = _frame()
        frame.input_size.height, frame.input_size.width = size
        with pytest.raises(BadFrameError, match="input_size"):
            parse_frame(frame)


class TestResults:
    def test_masks_travel_as_rle_and_keypoints_as_triplets(self):
        masks = torch.zeros(2, 1, 20, 30)
        masks[0, 0, 2:10, 3:12] = 0.9
        detections = {"boxes": torch.tensor([[3.0, 2, 12, 10], [0, 0, 5, 5]]), "labels": torch.tensor([1, 2]),
                      "scores": torch.tensor([0.9, 0.2]), "masks": masks,
                      "keypoints": torch.ones(2, 17, 3), "keypoints_scores": torch.ones(2, 17)}
        segment = task_result("segment", detections, ["bg", "disc", "star"])
        keypoints = task_result("keypoints", detections, ["bg", "disc", "star"])
        result = pb.Result(frame_id=1, results=[segment, keypoints])
        plain = result_to_dict(pb.Result.FromString(result.SerializeToString()))
        assert plain["segment"][0]["category"] == "disc"
        assert plain["segment"][0]["mask"]["size"] == [20, 30]
        assert isinstance(plain["segment"][0]["mask"]["counts"], str)
        assert "mask" not in plain["keypoints"][0]
        assert len(plain["keypoints"][0]["keypoints"]) == 51

    def test_keypoints_task_lists_only_detections_with_keypoints(self):
        keypoints = torch.ones(3, 17, 3)
        keypoints[1] = 0  # a category the keypoint head does not serve
        detections = {"boxes": torch.zeros(3, 4), "labels": torch.tensor([6, 1, 6]),
                      "scores": torch.tensor([0.9, 0.8, 0.7]), "keypoints": keypoints,
                      "keypoints_scores": torch.ones(3, 17)}
        categories = ["bg", "disc", "square", "triangle", "star", "ring", "person"]
        listed = task_result("keypoints", detections, categories).detections
        assert [d.score for d in listed] == pytest.approx([0.9, 0.7])
        assert len(task_result("detect", detections, categories).detections) == 3

    def test_rle_decodes_to_the_mask(self):
        from pycocotools import mask as mask_utils

        masks = torch.zeros(1, 1, 20, 30)
        masks[0, 0, 5:15, 4:9] = 1.0
        det = task_result("segment", {"boxes": torch.zeros(1, 4), "labels": torch.tensor([1]),
                                      "scores": torch.ones(1), "masks": masks}, ["bg", "a"]).detections[0]
        decoded = mask_utils.decode({"size": [det.mask.height, det.mask.width], "counts": det.mask.counts})
        assert decoded.sum() == 50 and decoded[5:15, 4:9].all()
