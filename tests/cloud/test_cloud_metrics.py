"""CloudMetrics: its own registry per instance, record functions that never raise."""

from __future__ import annotations

import logging

import pytest

from fpnlink.cloud import CloudMetrics
from fpnlink.shared.wire import pb


CAPTURED_US = 1_700_000_000_000_000


def _frame() -> pb.FeatureFrame:
    return pb.FeatureFrame(codec="quant", capture_time_us=CAPTURED_US, scales=[
        pb.ScaleRecord(name="0", phi=6.0, payload=b"x" * 100, planned_bits=1000),
        pb.ScaleRecord(name="3", phi=2.0, payload=b"y" * 10),
    ])


def test_record_frame():
    metrics = CloudMetrics()
    result = pb.Result(frame_bytes=321, stage_ms={"decode": 2.0, "heads": 30.0, "total": 33.0})
    metrics.record_frame("grpc", _frame(), result, now_us=CAPTURED_US + 250_000)
    metrics.record_frame("grpc", _frame(), result, now_us=CAPTURED_US + 750_000)
    metrics.record_frame("rest", _frame(), result, now_us=CAPTURED_US - 1)  # edge clock ahead: no sample
    value = metrics.registry.get_sample_value
    assert value("fpnlink_cloud_frames_total", {"transport": "grpc", "codec": "quant"}) == 2
    assert value("fpnlink_cloud_frame_bytes_total", {"transport": "grpc", "codec": "quant"}) == 642
    assert value("fpnlink_cloud_frame_size_bytes_count", {"transport": "grpc"}) == 2
    assert value("fpnlink_cloud_stage_seconds_sum", {"stage": "heads"}) == pytest.approx(0.09)
    assert value("fpnlink_cloud_capture_to_result_seconds_sum", {"transport": "grpc"}) == pytest.approx(1.0)
    assert value("fpnlink_cloud_capture_to_result_seconds_bucket", {"transport": "grpc", "le": "0.5"}) == 1
    assert value("fpnlink_cloud_capture_to_result_seconds_count", {"transport": "rest"}) is None
    assert value("fpnlink_cloud_scale_phi", {"scale": "P2"}) == 6.0
    assert value("fpnlink_cloud_scale_payload_bytes_sum", {"scale": "P2"}) == 3 * 100
    assert value("fpnlink_cloud_scale_payload_bytes_sum", {"scale": "P5"}) == 3 * 10
    assert value("fpnlink_cloud_scale_planned_bytes_sum", {"scale": "P2"}) == 3 * 125
    assert value("fpnlink_cloud_scale_planned_bytes_count", {"scale": "P5"}) is None  # no plan, nothing observed


def test_queue_and_auth_failures():
    metrics = CloudMetrics()
    metrics.set_queue_depth(3)
    metrics.record_queue_wait(0.02)
    metrics.record_auth_failure("grpc", "UNAUTHENTICATED")
    value = metrics.registry.get_sample_value
    assert value("fpnlink_cloud_queue_depth") == 3
    assert value("fpnlink_cloud_queue_wait_seconds_bucket", {"le": "0.025"}) == 1
    assert value("fpnlink_cloud_queue_wait_seconds_bucket", {"le": "0.01"}) == 0
    assert value("fpnlink_cloud_auth_failures_total", {"transport": "grpc", "code": "UNAUTHENTICATED"}) == 1


def test_errors_images_and_readiness():
    metrics = CloudMetrics()
    metrics.record_error("rest", "INVALID_ARGUMENT")
    metrics.record_image("rest", pb.Result(stage_ms={"backbone": 5.0}))
    metrics.set_ready(True)
    value = metrics.registry.get_sample_value
    assert value("fpnlink_cloud_errors_total", {"transport": "rest", "code": "INVALID_ARGUMENT"}) == 1
    assert value("fpnlink_cloud_images_total", {"transport": "rest"}) == 1
    assert value("fpnlink_cloud_ready") == 1
    body, content_type = metrics.render()
    assert b"fpnlink_cloud_errors_total" in body and content_type.startswith("text/plain")


def test_instances_do_not_collide():
    first, second = CloudMetrics(), CloudMetrics()
    first.record_error("grpc", "INTERNAL")
    assert second.registry.get_sample_value("fpnlink_cloud_errors_total", {"transport": "grpc", "code": "INTERNAL"}) \
        is None


def test_a_failing_update_never_raises(caplog, monkeypatch):
    metrics = CloudMetrics()

    def broken(*args, **kwargs):
        raise RuntimeError("observer bug")

    monkeypatch.setattr(metrics.frames, "labels", broken)
    with caplog.at_level(logging.ERROR, logger="fpnlink.cloud.metrics"):
        metrics.record_frame("grpc", _frame(), pb.Result())
    assert "record_frame failed" in caplog.text
