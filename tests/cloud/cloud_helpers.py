"""Helpers of the cloud tests: frame builders, test images and loopback service settings."""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from PIL import Image

from fpnlink.cloud.settings import CloudSettings
from fpnlink.shared.codec import make_codec
from fpnlink.shared.wire import FrameHeader, build_frame, expected_scale_shape, pb

IMAGE_SHAPE = (3, 96, 128)


@dataclass(frozen=True)
class EdgeOutput:
    """What the edge front half produced for one image."""

    features: dict[str, torch.Tensor]
    input_size: tuple[int, int]
    original_size: tuple[int, int]
    fingerprint: str


def make_frame(
    edge: EdgeOutput,
    frame_id: int = 1,
    *,
    tasks: Sequence[str] = ("detect",),
    codec: str = "raw",
    stream_id: str = "cam-1",
    planned_bits: dict[str, int] | None = None,
    **header_overrides: object,
) -> pb.FeatureFrame:
    """A valid frame of ``edge``'s features coded with ``codec``; header fields can be overridden."""
    coder = make_codec(codec)
    values = dict(stream_id=stream_id, frame_id=frame_id, capture_time_us=1_700_000_000_000_000,
                  original_size=edge.original_size, input_size=edge.input_size, model_fingerprint=edge.fingerprint,
                  tasks=list(tasks), codec=codec, codec_fingerprint=coder.fingerprint)
    values.update(header_overrides)
    return build_frame(FrameHeader(**values), coder.encode(edge.features), planned_bits)


def assert_same_task_results(got: Sequence[pb.TaskResult], expected: Sequence[pb.TaskResult],
                             pixel_atol: float = 1e-4) -> None:
    """Same tasks and detections: labels and masks equal, scores within 1e-4, boxes and keypoints (pixels)
    within ``pixel_atol``."""
    assert [r.task for r in got] == [r.task for r in expected]
    for got_task, expected_task in zip(got, expected):
        assert len(expected_task.detections) > 0
        assert len(got_task.detections) == len(expected_task.detections)
        for a, b in zip(got_task.detections, expected_task.detections):
            assert (a.label, a.category) == (b.label, b.category)
            assert a.box == pytest.approx(b.box, abs=pixel_atol) and a.score == pytest.approx(b.score, abs=1e-4)
            assert a.mask == b.mask
            assert a.keypoints == pytest.approx(b.keypoints, abs=pixel_atol)
            assert a.keypoint_scores == pytest.approx(b.keypoint_scores, abs=pixel_atol)


def random_frame(fingerprint: str, input_size: tuple[int, int], frame_id: int, channels: int = 256,
                 ) -> pb.FeatureFrame:
    """A raw frame of random features for any input size (bigger than the 128 px edge produces)."""
    generator = torch.Generator().manual_seed(frame_id)
    features = {name: torch.randn(1, channels, *expected_scale_shape(input_size, name), generator=generator)
                for name in "0123"}
    raw = make_codec("raw")
    header = FrameHeader("big", frame_id, 0, input_size, input_size, fingerprint, ["detect"], "raw", raw.fingerprint)
    return build_frame(header, raw.encode(features))


def png_bytes(height: int = 96, width: int = 128, seed: int | None = 0) -> bytes:
    """A PNG of random pixels, or of one flat colour (a tiny file) when ``seed`` is None."""
    if seed is None:
        pixels = np.full((height, width, 3), 128, dtype=np.uint8)
    else:
        pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def loopback_settings(**overrides: object) -> CloudSettings:
    """Settings for a test server: loopback, ephemeral ports, tiny model config, no warm-up, no results store
    (tests of the store pass ``store=True`` and a ``database_url``)."""
    values = dict(host="127.0.0.1", grpc_port=0, http_port=0, min_size=128, max_size=128, detections_per_img=5,
                  warmup=False, grace_s=1.0, log_level="warning", store=False)
    values.update(overrides)
    return CloudSettings(**values)


@dataclass(frozen=True)
class BadCase:
    """A request the cloud must refuse: serialized bytes, the gRPC status name and a message fragment."""

    data: bytes
    code: str
    message: str


NOT_A_PROTOBUF = b"\x0a\xff\xff\xff\xff\x0f"
"""Field 1 declared with a 4-GiB length: no protobuf parser accepts it."""


def bad_cases(edge: EdgeOutput) -> dict[str, BadCase]:
    """Every malformed-frame case, keyed by name (each built from a fresh valid frame)."""

    def frame(frame_id: int) -> pb.FeatureFrame:
        return make_frame(edge, frame_id, stream_id="bad")

    truncated = frame(901)
    truncated.scales[0].payload = truncated.scales[0].payload[:-7]
    unknown_codec = frame(902)
    unknown_codec.codec = "no-such-codec"
    codec_print = frame(903)
    codec_print.codec_fingerprint = "0123456789abcdef"
    model_print = frame(904)
    model_print.model_fingerprint = "fedcba9876543210"
    wrong_shape = frame(905)
    wrong_shape.scales[1].shape[1] = 99
    missing_scale = frame(906)
    del missing_scale.scales[3]
    no_tasks = frame(907)
    del no_tasks.tasks[:]
    unknown_task = frame(908)
    unknown_task.tasks.append(42)
    wrong_channels = random_frame(edge.fingerprint, edge.input_size, 909, channels=8)
    wrong_dtype = frame(910)
    wrong_dtype.scales[2].dtype = "float16"
    return {
        "malformed": BadCase(NOT_A_PROTOBUF, "INVALID_ARGUMENT", "not a serialized fpnlink.v1.FeatureFrame"),
        "truncated_payload": BadCase(truncated.SerializeToString(), "INVALID_ARGUMENT", "payload has"),
        "unknown_codec": BadCase(unknown_codec.SerializeToString(), "UNIMPLEMENTED", "'no-such-codec' is not served"),
        "codec_fingerprint": BadCase(codec_print.SerializeToString(), "FAILED_PRECONDITION", "0123456789abcdef"),
        "model_fingerprint": BadCase(model_print.SerializeToString(), "FAILED_PRECONDITION", "fedcba9876543210"),
        "wrong_shape": BadCase(wrong_shape.SerializeToString(), "INVALID_ARGUMENT", "spatial shape"),
        "missing_scale": BadCase(missing_scale.SerializeToString(), "INVALID_ARGUMENT", "once each"),
        "no_tasks": BadCase(no_tasks.SerializeToString(), "INVALID_ARGUMENT", "no task"),
        "unknown_task": BadCase(unknown_task.SerializeToString(), "UNIMPLEMENTED", "unknown task"),
        "wrong_channels": BadCase(wrong_channels.SerializeToString(), "INVALID_ARGUMENT", "8 channels"),
        "wrong_dtype": BadCase(wrong_dtype.SerializeToString(), "INVALID_ARGUMENT", "float16"),
    }


BAD_CASE_NAMES = ("malformed", "truncated_payload", "unknown_codec", "codec_fingerprint", "model_fingerprint",
                  "wrong_shape", "missing_scale", "no_tasks", "unknown_task", "wrong_channels", "wrong_dtype")
