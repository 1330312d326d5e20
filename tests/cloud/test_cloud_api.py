"""The REST app over a real uvicorn socket (httpx), on the same service as gRPC."""

from __future__ import annotations

import grpc
import httpx
import pytest
from cloud_helpers import bad_cases, loopback_settings, make_frame, png_bytes

from fpnlink.cloud import CloudService
from fpnlink.shared.wire import pb_grpc

PROTOBUF = {"content-type": "application/x-protobuf"}
UPLOAD_CAP = 200_000
PIXEL_CAP = 100_000
FRAME_CAP = 600_000


@pytest.fixture(scope="module")
def server(tiny_bundle):
    settings = loopback_settings(max_upload_bytes=UPLOAD_CAP, max_image_pixels=PIXEL_CAP)
    with CloudService(settings, bundle_loader=lambda _: tiny_bundle).run_in_background() as handle:
        yield handle


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.http_url, timeout=60) as client:
        yield client


def _error(response: httpx.Response) -> dict:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    return body["error"]


class TestAnalyze:
    def test_image_upload(self, client):
        response = client.post("/v1/analyze", params={"tasks": "detect"},
                               files={"image": ("scene.png", png_bytes(), "image/png")})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["trained"] is False and set(body["stage_ms"]) == {"backbone", "heads", "total"}
        assert isinstance(body["detect"], list) and "segment" not in body and "error" not in body

    def test_non_image_upload(self, client):
        response = client.post("/v1/analyze", files={"image": ("notes.txt", b"just some text", "text/plain")})
        assert response.status_code == 400
        error = _error(response)
        assert error["code"] == "INVALID_ARGUMENT" and "not an image" in error["message"]

    def test_empty_upload(self, client):
        response = client.post("/v1/analyze", files={"image": ("empty.png", b"", "image/png")})
        assert response.status_code == 400 and "empty" in _error(response)["message"]

    def test_oversized_upload(self, client):
        response = client.post("/v1/analyze", files={"image": ("big.png", b"\0" * (UPLOAD_CAP + 1), "image/png")})
        assert response.status_code == 413
        assert _error(response)["code"] == "RESOURCE_EXHAUSTED" and str(UPLOAD_CAP) in _error(response)["message"]

    def test_too_many_pixels(self, client):
        data = png_bytes(400, 400, seed=None)  # 160,000 pixels, a small file
        assert len(data) < UPLOAD_CAP
        response = client.post("/v1/analyze", files={"image": ("wide.png", data, "image/png")})
        assert response.status_code == 413 and str(PIXEL_CAP) in _error(response)["message"]

    def test_unknown_task_by_query_or_form(self, client):
        image = {"image": ("scene.png", png_bytes(), "image/png")}
        by_query = client.post("/v1/analyze", params={"tasks": "track"}, files=image)
        by_form = client.post("/v1/analyze", data={"tasks": "detect,pose"}, files=image)
        assert by_query.status_code == by_form.status_code == 422
        assert "track" in _error(by_query)["message"] and "pose" in _error(by_form)["message"]

    def test_missing_image_field(self, client):
        assert client.post("/v1/analyze", data={"tasks": "detect"}).status_code == 422


class TestFrames:
    def test_frame(self, client, edge_output):
        data = make_frame(edge_output, 61, codec="quant").SerializeToString()
        response = client.post("/v1/frames", content=data, headers=PROTOBUF)
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["stream_id"], body["frame_id"], body["frame_bytes"]) == ("cam-1", 61, len(data))
        assert set(body["stage_ms"]) == {"decode", "heads", "total"} and "detect" in body

    def test_garbage(self, client):
        response = client.post("/v1/frames", content=b"\x0a\xff\xff\xff\xff\x0f", headers=PROTOBUF)
        assert response.status_code == 400
        assert "not a serialized fpnlink.v1.FeatureFrame" in _error(response)["message"]

    def test_wrong_content_type(self, client):
        response = client.post("/v1/frames", json={"frame": 1})
        assert response.status_code == 400 and "application/x-protobuf" in _error(response)["message"]

    @pytest.mark.parametrize(("name", "status"), [("unknown_codec", 422), ("model_fingerprint", 409),
                                                  ("truncated_payload", 400), ("no_tasks", 400)])
    def test_refused_frames(self, client, edge_output, name, status):
        case = bad_cases(edge_output)[name]
        response = client.post("/v1/frames", content=case.data, headers=PROTOBUF)
        assert response.status_code == status
        assert _error(response)["code"] == case.code and case.message in _error(response)["message"]


class TestFrameCap:
    @pytest.fixture(scope="class")
    def client(self, tiny_bundle):
        settings = loopback_settings(max_frame_bytes=FRAME_CAP)
        with CloudService(settings, bundle_loader=lambda _: tiny_bundle).run_in_background() as handle:
            with httpx.Client(base_url=handle.http_url, timeout=60) as client:
                yield client

    def test_oversized_frame_declared_or_streamed(self, client, edge_output):
        data = make_frame(edge_output, 62).SerializeToString()
        assert len(data) > FRAME_CAP
        declared = client.post("/v1/frames", content=data, headers=PROTOBUF)
        streamed = client.post("/v1/frames", content=iter([data[:300_000], data[300_000:]]), headers=PROTOBUF)
        for response in (declared, streamed):
            assert response.status_code == 413 and _error(response)["code"] == "RESOURCE_EXHAUSTED"
        # The server goes on.
        fits = make_frame(edge_output, 63, codec="quant").SerializeToString()
        assert client.post("/v1/frames", content=fits, headers=PROTOBUF).status_code == 200


class TestService:
    def test_health_and_readiness(self, client):
        assert client.get("/healthz").json() == {"status": "ok"}
        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["ready"] is True

    def test_capabilities(self, client, server):
        body = client.get("/v1/capabilities").json()
        assert body["weights"] == "random:0" and body["tasks"] == ["detect", "segment", "keypoints"]
        assert body["max_frame_bytes"] == 256 * 1024 * 1024 and (body["min_size"], body["max_size"]) == (128, 128)
        faster = next(m for m in body["models"] if m["arch"] == "faster")
        assert faster["task"] == "detect"
        assert faster["backbone_fingerprint"] == server.service.engine.bundle.backbone_fingerprints["faster"]

    def test_openapi(self, client):
        assert client.get("/docs").status_code == 200
        paths = client.get("/openapi.json").json()["paths"]
        assert {"/v1/analyze", "/v1/frames", "/v1/capabilities", "/healthz", "/readyz"} <= set(paths)

    def test_metrics_count_both_transports(self, client, server, edge_output):
        fits = make_frame(edge_output, 71, codec="quant")
        with grpc.insecure_channel(server.grpc_target) as channel:
            pb_grpc.FeatureLinkStub(channel).Analyze(fits, timeout=60)
        client.post("/v1/frames", content=fits.SerializeToString(), headers=PROTOBUF)
        client.post("/v1/frames", content=b"\x0a\xff\xff\xff\xff\x0f", headers=PROTOBUF)
        text = client.get("/metrics").text
        assert 'fpnlink_cloud_frames_total{codec="quant",transport="grpc"}' in text
        assert 'fpnlink_cloud_frames_total{codec="quant",transport="rest"}' in text
        assert 'fpnlink_cloud_errors_total{code="INVALID_ARGUMENT",transport="rest"}' in text
        assert 'fpnlink_cloud_stage_seconds_bucket{le="+Inf",stage="heads"}' in text
        assert 'fpnlink_cloud_scale_payload_bytes_count{scale="P2"}' in text
        assert "fpnlink_cloud_ready 1.0" in text
