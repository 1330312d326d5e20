"""CloudService lifecycle: bound before ready, NOT_SERVING/503 until set up, setup failures, settings."""

from __future__ import annotations

import threading

import grpc
import httpx
import pytest
import torch
from cloud_helpers import loopback_settings, make_frame
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pydantic import ValidationError

from fpnlink.cloud import CloudEngine, CloudService, CloudSettings
from fpnlink.cloud.server import SERVICE_NAME
from fpnlink.cloud.service import logger as service_logger
from fpnlink.shared.codec import make_codec
from fpnlink.shared.codec.learned import TINY_CHECKPOINT, LearnedCodec
from fpnlink.shared.errors import WeightsError
from fpnlink.shared.wire import pb, pb_grpc

PROTOBUF = {"content-type": "application/x-protobuf"}


def _health(target: str) -> int:
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return stub.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=5).status


class TestReadiness:
    def test_not_ready_until_setup_is_done(self, tiny_bundle, edge_output, caplog):
        release = threading.Event()

        def slow_loader(settings: CloudSettings):
            assert release.wait(30), "test never released the loader"
            return tiny_bundle

        service = CloudService(loopback_settings(), bundle_loader=slow_loader)
        caplog.set_level("INFO", logger=service_logger.name)
        with service.run_in_background(wait_ready=False) as handle, httpx.Client(base_url=handle.http_url) as http:
            try:
                self._check_not_ready(handle, http, make_frame(edge_output, 81, codec="quant"))
            finally:
                release.set()
            handle.wait_ready(30)
            assert http.get("/readyz").status_code == 200
            assert _health(handle.grpc_target) == health_pb2.HealthCheckResponse.SERVING
            assert "fpnlink_cloud_ready 1.0" in http.get("/metrics").text
        [ready] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("engine ready")]
        backbones = ",".join(sorted(set(tiny_bundle.backbone_fingerprints.values())))
        assert f"weights 'random:0' (backbone {backbones}), input 128/128, device cpu" in ready  # its operating point
        assert f"(1 workers x {torch.get_num_threads()} torch threads, batches of up to 1)" in ready
        assert f"quant ({make_codec('quant').fingerprint})" in ready

    @staticmethod
    def _check_not_ready(handle, http: httpx.Client, frame: pb.FeatureFrame) -> None:
        assert handle.grpc_port > 0 and handle.http_port > 0 and handle.grpc_port != handle.http_port
        assert http.get("/healthz").status_code == 200
        not_ready = http.get("/readyz")
        assert not_ready.status_code == 503 and "still loading weights 'random:0'" in not_ready.json()["reason"]
        assert _health(handle.grpc_target) == health_pb2.HealthCheckResponse.NOT_SERVING
        with grpc.insecure_channel(handle.grpc_target) as channel:
            stub = pb_grpc.FeatureLinkStub(channel)
            with pytest.raises(grpc.RpcError) as info:
                stub.Analyze(frame, timeout=5)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            [result] = stub.Stream(iter([frame]), timeout=5)
            assert result.error.code == "UNAVAILABLE" and result.frame_id == 81
        refused = http.post("/v1/frames", content=frame.SerializeToString(), headers=PROTOBUF)
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "UNAVAILABLE"
        assert http.get("/v1/capabilities").status_code == 503
        assert "fpnlink_cloud_ready 0.0" in http.get("/metrics").text

    def test_setup_failure_is_reported(self):
        def broken_loader(settings: CloudSettings):
            raise WeightsError("no checkpoint at /nowhere.pt")

        service = CloudService(loopback_settings(), bundle_loader=broken_loader)
        with pytest.raises(WeightsError, match="nowhere"):
            service.run_in_background(wait_ready=True, timeout=30)

        with CloudService(loopback_settings(), bundle_loader=broken_loader).run_in_background(wait_ready=False) as h:
            with pytest.raises(WeightsError):
                h.wait_ready(30)
            response = httpx.get(f"{h.http_url}/readyz")
            assert response.status_code == 503 and "setup failed: WeightsError" in response.json()["reason"]

    def test_warm_up_runs_before_serving(self, tiny_bundle, monkeypatch):
        calls = []
        monkeypatch.setattr(CloudEngine, "warmup", lambda engine: calls.append(engine))
        service = CloudService(loopback_settings(warmup=True), bundle_loader=lambda _: tiny_bundle)
        with service.run_in_background() as handle:
            assert calls == [handle.service.engine]

    def test_stop_is_idempotent_and_frees_the_ports(self, tiny_bundle):
        handle = CloudService(loopback_settings(), bundle_loader=lambda _: tiny_bundle).run_in_background()
        handle.stop()
        handle.stop()
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{handle.http_url}/healthz", timeout=2)

    def test_codec_subset_from_settings(self, tiny_bundle):
        settings = loopback_settings(codecs=["quant"])
        with CloudService(settings, bundle_loader=lambda _: tiny_bundle).run_in_background() as handle:
            assert list(handle.service.engine.codecs) == ["quant"]
            with grpc.insecure_channel(handle.grpc_target) as channel:
                caps = pb_grpc.FeatureLinkStub(channel).GetCapabilities(pb.CapabilitiesRequest(), timeout=5)
            assert [c.name for c in caps.codecs] == ["quant"]


    def test_codec_checkpoint_from_settings(self, tiny_bundle):
        settings = loopback_settings(codecs=["quant", "learned"], codec_checkpoint=TINY_CHECKPOINT)
        with CloudService(settings, bundle_loader=lambda _: tiny_bundle).run_in_background() as handle:
            with grpc.insecure_channel(handle.grpc_target) as channel:
                caps = pb_grpc.FeatureLinkStub(channel).GetCapabilities(pb.CapabilitiesRequest(), timeout=5)
        served = {c.name: c.fingerprint for c in caps.codecs}
        assert served["learned"] == LearnedCodec(TINY_CHECKPOINT).fingerprint

    def test_codec_checkpoint_goes_to_the_codec_it_was_trained_for(self, tiny_bundle):
        from fpnlink.shared.codec import CrossScaleCodec
        from fpnlink.shared.codec.xscale import TINY_CHECKPOINT as XSCALE_TINY

        settings = loopback_settings(codecs=["learned", "xscale"], codec_checkpoint=XSCALE_TINY)
        with CloudService(settings, bundle_loader=lambda _: tiny_bundle).run_in_background() as handle:
            with grpc.insecure_channel(handle.grpc_target) as channel:
                caps = pb_grpc.FeatureLinkStub(channel).GetCapabilities(pb.CapabilitiesRequest(), timeout=5)
        served = {c.name: c.fingerprint for c in caps.codecs}
        assert served["xscale"] == CrossScaleCodec(XSCALE_TINY).fingerprint
        assert served["learned"] == LearnedCodec().fingerprint

    def test_unloadable_codec_checkpoint_fails_setup(self, tiny_bundle, tmp_path):
        broken = tmp_path / "codec.pt"
        broken.write_bytes(b"not a checkpoint")
        service = CloudService(loopback_settings(codec_checkpoint=broken), bundle_loader=lambda _: tiny_bundle)
        with pytest.raises(WeightsError, match="cannot read codec checkpoint"):
            service.run_in_background(wait_ready=True, timeout=30)


class TestSettings:
    def test_environment_with_prefix(self, monkeypatch):
        monkeypatch.setenv("FPNLINK_CLOUD_GRPC_PORT", "1234")
        monkeypatch.setenv("FPNLINK_CLOUD_WEIGHTS", "coco")
        monkeypatch.setenv("FPNLINK_CLOUD_CODECS", '["raw", "quant"]')
        settings = CloudSettings()
        assert (settings.grpc_port, settings.weights, settings.codecs) == (1234, "coco", ["raw", "quant"])
        assert CloudSettings(grpc_port=99).grpc_port == 99  # arguments win over the environment

    def test_defaults(self):
        settings = CloudSettings()
        assert (settings.grpc_port, settings.http_port, settings.weights) == (50051, 8080, "random:0")
        assert settings.max_frame_bytes == 256 * 1024 * 1024
        assert settings.network_config().min_size == 800

    @pytest.mark.parametrize("given, cores, expected", [
        ({}, 2, (2, 1)),                                   # one worker per core at one thread
        ({"workers": 1}, 4, (1, 4)),                       # one worker takes every core
        ({"threads": 2}, 4, (2, 2)),
        ({"workers": 3, "threads": 3}, 2, (3, 3)),         # both given: kept, even oversubscribed
        ({}, 256, (64, 4)),                                # workers capped, the cores still used
        ({"device": "cuda"}, 16, (1, None)),               # the device works: one worker, torch's threads
        ({"device": "cuda:1", "workers": 2}, 16, (2, None)),
    ])
    def test_for_process_splits_the_cpu_cores(self, given, cores, expected):
        settings = CloudSettings(**given).for_process(cores)
        assert (settings.workers, settings.threads) == expected
        assert CloudSettings(**given).workers == given.get("workers")  # embedded services: 1 when omitted

    @pytest.mark.parametrize("given, expected", [({}, 1), ({"device": "cuda"}, 8), ({"max_batch_size": 4}, 4),
                                                 ({"device": "cuda:0", "max_batch_size": 2}, 2)])
    def test_batch_size_by_device(self, given, expected):
        assert CloudSettings(**given).batch_size() == expected

    def test_for_process_needs_a_core(self):
        with pytest.raises(ValueError, match="cores must be >= 1"):
            CloudSettings().for_process(0)

    @pytest.mark.parametrize("kwargs", [{"min_size": 900, "max_size": 800}, {"grpc_port": 70000}, {"workers": 0},
                                        {"max_frame_bytes": 2**31}, {"unknown": 1},
                                        {"codec_checkpoint": "/nonexistent/codec.pt"},
                                        {"codec_checkpoint": __file__, "codecs": ["quant", "raw"]}])
    def test_invalid(self, kwargs):
        with pytest.raises(ValidationError):
            CloudSettings(**kwargs)
