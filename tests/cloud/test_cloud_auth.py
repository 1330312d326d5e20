"""The auth matrix over real sockets: bearer tokens on REST and gRPC, TLS, mutual TLS and device-owned streams.

One server serves mutual TLS with a token file; certificates are made at test time (``tests/pki.py``).
"""

from __future__ import annotations

import logging
import ssl

import grpc
import httpx
import pytest
from cloud_helpers import loopback_settings, make_frame
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pki import TestCA

from fpnlink.cloud import CloudService
from fpnlink.cloud.tokens import add_token
from fpnlink.edge import Client, LinkError
from fpnlink.shared.wire import pb_grpc

PROTOBUF = {"content-type": "application/x-protobuf"}
DEVICE = "cam-7"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    directory = tmp_path_factory.mktemp("pki")
    ca, other = TestCA(directory, "fleet"), TestCA(directory, "other")
    return {"ca": ca.cert, "server": ca.issue("localhost", server=True), "device": ca.issue(DEVICE),
            "foreign": other.issue(DEVICE)}


@pytest.fixture(scope="module")
def tokens(tmp_path_factory):
    path = tmp_path_factory.mktemp("tokens") / "tokens.json"
    return path, {scope: add_token(path, f"{scope}-holder", [scope]) for scope in ("ingest", "read", "admin")}


@pytest.fixture(scope="module")
def server(tiny_bundle, pki, tokens, tmp_path_factory):
    settings = loopback_settings(tls_cert=pki["server"].cert, tls_key=pki["server"].key, tls_client_ca=pki["ca"],
                                 token_file=tokens[0], health_port=0, store=True,
                                 database_path=tmp_path_factory.mktemp("auth-store") / "cloud.db")
    with CloudService(settings, bundle_loader=lambda _: tiny_bundle).run_in_background() as handle:
        yield handle


@pytest.fixture(scope="module")
def http(server, pki):
    with httpx.Client(base_url=server.http_url, verify=ssl.create_default_context(cafile=str(pki["ca"])),
                      timeout=60) as client:
        yield client


def _device_channel(server, pki, identity: str = "device") -> grpc.Channel:
    issued = pki[identity]
    credentials = grpc.ssl_channel_credentials(pki["ca"].read_bytes(), issued.key.read_bytes(),
                                               issued.cert.read_bytes())
    return grpc.secure_channel(f"localhost:{server.grpc_port}", credentials)


def _bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


class TestRest:
    def test_no_token_is_401(self, http, edge_output):
        reply = http.post("/v1/frames", content=make_frame(edge_output, 1, stream_id=DEVICE).SerializeToString(),
                          headers=PROTOBUF)
        assert reply.status_code == 401
        assert reply.headers["www-authenticate"] == "Bearer"
        assert reply.json()["error"]["code"] == "UNAUTHENTICATED"

    def test_unknown_token_is_401(self, http):
        assert http.get("/v1/capabilities", headers=_bearer("fpl_not-a-token")).status_code == 401

    def test_wrong_scope_is_403(self, http, tokens, edge_output):
        frame = make_frame(edge_output, 2, stream_id=DEVICE).SerializeToString()
        reply = http.post("/v1/frames", content=frame, headers=PROTOBUF | _bearer(tokens[1]["read"]))
        assert reply.status_code == 403
        assert "needs ingest" in reply.json()["error"]["message"]

    @pytest.mark.parametrize("scope", ["ingest", "admin"])
    def test_right_token_works(self, http, tokens, edge_output, scope):
        frame = make_frame(edge_output, 3, stream_id=DEVICE)
        reply = http.post("/v1/frames", content=frame.SerializeToString(), headers=PROTOBUF | _bearer(tokens[1][scope]))
        assert reply.status_code == 200, reply.text
        assert reply.json()["frame_id"] == 3

    def test_analytics_need_read(self, http, tokens):
        assert http.get("/v1/streams").status_code == 401
        assert http.get("/v1/streams", headers=_bearer(tokens[1]["ingest"])).status_code == 403
        reply = http.get("/v1/streams", headers=_bearer(tokens[1]["read"]))
        assert reply.status_code == 200, reply.text
        assert DEVICE in {item["stream_id"] for item in reply.json()["items"]}

    def test_read_scope_reads_capabilities(self, http, tokens):
        reply = http.get("/v1/capabilities", headers=_bearer(tokens[1]["read"]))
        assert reply.status_code == 200 and reply.json()["tasks"]

    def test_probes_metrics_and_docs_are_open(self, http):
        for path in ("/healthz", "/readyz", "/metrics", "/docs", "/openapi.json"):
            assert http.get(path).status_code == 200, path

    def test_refusals_are_counted(self, http):
        http.get("/v1/capabilities")
        text = http.get("/metrics").text
        assert 'fpnlink_cloud_auth_failures_total{code="UNAUTHENTICATED",transport="rest"}' in text

    def test_plain_http_is_refused(self, server):
        plain = server.http_url.replace("https://", "http://")
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"{plain}/healthz", timeout=10)


class TestGrpcTokens:
    def test_missing_token_is_unauthenticated(self, server, pki, edge_output):
        with _device_channel(server, pki) as channel, pytest.raises(grpc.RpcError) as caught:
            pb_grpc.FeatureLinkStub(channel).Analyze(make_frame(edge_output, 10, stream_id=DEVICE), timeout=30)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED

    def test_bad_token_is_unauthenticated_on_a_stream(self, server, pki, edge_output):
        frames = iter([make_frame(edge_output, 11, stream_id=DEVICE)])
        with _device_channel(server, pki) as channel, pytest.raises(grpc.RpcError) as caught:
            list(pb_grpc.FeatureLinkStub(channel).Stream(frames, metadata=tuple(_bearer("fpl_bad").items()),
                                                         timeout=30))
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED

    def test_read_scope_cannot_ingest(self, server, pki, tokens, edge_output):
        metadata = tuple(_bearer(tokens[1]["read"]).items())
        with _device_channel(server, pki) as channel, pytest.raises(grpc.RpcError) as caught:
            pb_grpc.FeatureLinkStub(channel).Analyze(make_frame(edge_output, 12, stream_id=DEVICE),
                                                     metadata=metadata, timeout=30)
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED

    def test_health_needs_no_token(self, server, pki):
        with _device_channel(server, pki) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


class TestHealthPort:
    """The plaintext health-only port of the kubelet's gRPC probes: status, and nothing else."""

    def test_serving_without_tls(self, server):
        with grpc.insecure_channel(f"127.0.0.1:{server.service.health_port}") as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="fpnlink.v1.FeatureLink"), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING

    def test_no_frames_there(self, server, edge_output):
        with grpc.insecure_channel(f"127.0.0.1:{server.service.health_port}") as channel, \
                pytest.raises(grpc.RpcError) as caught:
            pb_grpc.FeatureLinkStub(channel).Analyze(make_frame(edge_output, 70, stream_id=DEVICE), timeout=10)
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


class TestMutualTls:
    def test_edge_client_streams_its_own_stream(self, server, pki, tokens, edge_output):
        device = pki["device"]
        with Client(f"localhost:{server.grpc_port}", tls_ca=pki["ca"], tls_cert=device.cert, tls_key=device.key,
                    token=tokens[1]["ingest"]) as client:
            frames = [make_frame(edge_output, i, stream_id=f"{DEVICE}:front") for i in (20, 21)]
            results = list(client.stream(frames, ordered=True))
        assert [r.frame_id for r in results] == [20, 21]
        assert all(not r.HasField("error") for r in results)

    def test_the_device_identity_is_stored_with_the_frame(self, http, tokens):
        reply = http.get(f"/v1/streams/{DEVICE}:front/frames/20", headers=_bearer(tokens[1]["read"]))
        assert reply.status_code == 200, reply.text
        assert reply.json()["device_id"] == DEVICE
        rest = http.get(f"/v1/streams/{DEVICE}/frames/3", headers=_bearer(tokens[1]["read"]))
        assert rest.status_code == 200 and rest.json().get("device_id") is None  # REST carries no certificate

    def test_another_devices_stream_is_refused(self, server, pki, tokens, edge_output):
        metadata = tuple(_bearer(tokens[1]["ingest"]).items())
        with _device_channel(server, pki) as channel:
            stub = pb_grpc.FeatureLinkStub(channel)
            with pytest.raises(grpc.RpcError) as caught:
                stub.Analyze(make_frame(edge_output, 30, stream_id="cam-70"), metadata=metadata, timeout=30)
            assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "cam-7" in caught.value.details()
            mixed = [make_frame(edge_output, 31, stream_id="cam-8:front"), make_frame(edge_output, 32, stream_id=DEVICE)]
            results = list(stub.Stream(iter(mixed), metadata=metadata, timeout=30))
        assert results[0].error.code == "PERMISSION_DENIED"
        assert results[1].frame_id == 32 and not results[1].HasField("error")

    @pytest.mark.parametrize("identity", ["foreign", None])
    def test_a_certificate_from_another_ca_or_none_fails_the_handshake(self, server, pki, identity):
        if identity is None:
            channel = grpc.secure_channel(f"localhost:{server.grpc_port}",
                                          grpc.ssl_channel_credentials(pki["ca"].read_bytes()))
        else:
            channel = _device_channel(server, pki, identity)
        with channel, pytest.raises(grpc.RpcError) as caught:
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE

    def test_plaintext_client_fails(self, server):
        with grpc.insecure_channel(f"localhost:{server.grpc_port}") as channel, \
                pytest.raises(grpc.RpcError) as caught:
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE

    def test_edge_client_reports_the_refusal(self, server, pki, tokens, edge_output):
        device = pki["device"]
        with Client(f"localhost:{server.grpc_port}", tls_ca=pki["ca"], tls_cert=device.cert, tls_key=device.key,
                    token=tokens[1]["read"]) as client, pytest.raises(LinkError) as caught:
            client.analyze(make_frame(edge_output, 40, stream_id=DEVICE), check=False)
        assert caught.value.code == grpc.StatusCode.PERMISSION_DENIED


class TestServerTlsOnly:
    """TLS without client certificates: no device identity, so any stream; tokens off."""

    def test_tls_client_works_and_plaintext_fails(self, tiny_bundle, pki, edge_output):
        settings = loopback_settings(tls_cert=pki["server"].cert, tls_key=pki["server"].key)
        with CloudService(settings, bundle_loader=lambda _: tiny_bundle).run_in_background() as handle:
            with Client(f"localhost:{handle.grpc_port}", tls_ca=pki["ca"]) as client:
                result = client.analyze(make_frame(edge_output, 50, stream_id="anyone"), check=False)
            assert result.frame_id == 50 and not result.HasField("error")
            with Client(f"localhost:{handle.grpc_port}", retries=0) as plain, pytest.raises(LinkError):
                plain.analyze(make_frame(edge_output, 51), check=False, timeout_s=10)


class TestInsecureServing:
    def test_loopback_token_client_reaches_a_plaintext_server(self, tiny_bundle, edge_output, tokens):
        settings = loopback_settings(token_file=tokens[0])
        with CloudService(settings, bundle_loader=lambda _: tiny_bundle).run_in_background() as handle:
            with Client(handle.grpc_target, token=tokens[1]["ingest"]) as client:
                assert client.analyze(make_frame(edge_output, 60), check=False).frame_id == 60
            with Client(handle.grpc_target, retries=0) as anonymous, pytest.raises(LinkError) as caught:
                anonymous.analyze(make_frame(edge_output, 61), check=False)
        assert caught.value.code == grpc.StatusCode.UNAUTHENTICATED

    def test_non_loopback_warns(self, tiny_bundle, caplog):
        settings = loopback_settings(host="0.0.0.0")
        with caplog.at_level(logging.WARNING, logger="fpnlink.cloud.service"):
            with CloudService(settings, bundle_loader=lambda _: tiny_bundle).run_in_background(wait_ready=False):
                pass
        assert any("without TLS or tokens" in r.getMessage() for r in caplog.records)

    def test_loopback_does_not_warn(self, tiny_bundle, caplog):
        with caplog.at_level(logging.WARNING, logger="fpnlink.cloud.service"):
            with CloudService(loopback_settings(), bundle_loader=lambda _: tiny_bundle).run_in_background(
                    wait_ready=False):
                pass
        assert not any("non-loopback" in r.getMessage() for r in caplog.records)

