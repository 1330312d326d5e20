"""The gRPC server over loopback: a real grpc.aio server (CloudService.run_in_background) and a plain client."""

from __future__ import annotations

import threading

import grpc
import pytest
from cloud_helpers import BAD_CASE_NAMES, bad_cases, loopback_settings, make_frame, random_frame
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from fpnlink.cloud import CloudService
from fpnlink.cloud.server import SERVICE_NAME
from fpnlink.shared.wire import pb, pb_grpc

MiB = 1024 * 1024
SMALL_CAP = 600_000
"""A lowered frame cap: a raw 96x128 frame (~1.04 MB) is over it, a quant frame is well under."""


@pytest.fixture(scope="module")
def server(tiny_bundle):
    with CloudService(loopback_settings(), bundle_loader=lambda _: tiny_bundle).run_in_background() as handle:
        yield handle


@pytest.fixture(scope="module")
def channel(server):
    with grpc.insecure_channel(server.grpc_target) as channel:
        yield channel


@pytest.fixture
def stub(channel):
    return pb_grpc.FeatureLinkStub(channel)


def raw_analyze(channel: grpc.Channel):
    """Analyze taking already-serialized bytes (so malformed messages can be sent)."""
    return channel.unary_unary(f"/{SERVICE_NAME}/Analyze", response_deserializer=pb.Result.FromString)


def raw_stream(channel: grpc.Channel):
    return channel.stream_stream(f"/{SERVICE_NAME}/Stream", response_deserializer=pb.Result.FromString)


class TestServing:
    def test_health_is_serving(self, channel):
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", SERVICE_NAME):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING

    def test_reflection_lists_the_services(self, channel):
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        requests = [reflection_pb2.ServerReflectionRequest(list_services=""),
                    reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE_NAME)]
        listed, described = list(reflection.ServerReflectionInfo(iter(requests), timeout=5))
        names = {s.name for s in listed.list_services_response.service}
        assert {"fpnlink.v1.FeatureLink", "grpc.health.v1.Health"} <= names
        assert described.file_descriptor_response.file_descriptor_proto

    def test_capabilities(self, stub, server):
        caps = stub.GetCapabilities(pb.CapabilitiesRequest(), timeout=5)
        assert caps == server.service.engine.capabilities()
        assert caps.max_frame_bytes == 256 * MiB and caps.trained is False


class TestFrames:
    def test_analyze(self, stub, edge_output):
        frame = make_frame(edge_output, 1)
        result = stub.Analyze(frame, timeout=60)
        assert (result.stream_id, result.frame_id) == ("cam-1", 1) and not result.HasField("error")
        assert result.frame_bytes == frame.ByteSize()
        assert [r.task for r in result.results] == [pb.DETECT]

    def test_stream_answers_every_frame_and_resends_are_idempotent(self, stub, edge_output):
        frames = [make_frame(edge_output, 1), make_frame(edge_output, 2, planned_bits={"0": 4096}),
                  make_frame(edge_output, 1)]
        results = list(stub.Stream(iter(frames), timeout=60))  # in completion order
        assert sorted(r.frame_id for r in results) == [1, 1, 2]
        assert sorted(r.frame_bytes for r in results) == sorted(f.ByteSize() for f in frames)
        first, again = [r for r in results if r.frame_id == 1]
        assert again == first
        assert not any(r.HasField("error") for r in results)

    def test_frame_over_4_mib(self, stub, edge_output):
        frame = random_frame(edge_output.fingerprint, (224, 256), 21)
        assert frame.ByteSize() > 4 * MiB
        result = stub.Analyze(frame, timeout=60)
        assert result.frame_bytes == frame.ByteSize() and not result.HasField("error")


class TestBadFrames:
    @pytest.mark.parametrize("name", BAD_CASE_NAMES)
    def test_analyze_returns_a_status_with_message(self, channel, edge_output, name):
        case = bad_cases(edge_output)[name]
        with pytest.raises(grpc.RpcError) as info:
            raw_analyze(channel)(case.data, timeout=10)
        assert info.value.code().name == case.code
        assert case.message in info.value.details()

    def test_stream_goes_on_after_bad_frames_and_other_streams_are_unaffected(self, channel, stub, edge_output):
        cases = bad_cases(edge_output)
        requests = [make_frame(edge_output, 41).SerializeToString(),
                    *(cases[name].data for name in BAD_CASE_NAMES),
                    make_frame(edge_output, 42).SerializeToString()]
        other: list[pb.Result] = []
        neighbour = threading.Thread(
            target=lambda: other.extend(stub.Stream(iter([make_frame(edge_output, 43, stream_id="cam-2")]),
                                                    timeout=60)))
        neighbour.start()
        results = list(raw_stream(channel)(iter(requests), timeout=60))
        neighbour.join(60)

        assert len(results) == len(requests)
        by_id = {r.frame_id: r for r in results}  # answered in completion order, matched by frame id
        first, last = by_id[41], by_id[42]
        assert not first.HasField("error") and first.results
        assert not last.HasField("error") and last.results
        failed_ids = (0, *range(901, 901 + len(BAD_CASE_NAMES) - 1))  # malformed: unparsable, no ids to echo
        for name, frame_id in zip(BAD_CASE_NAMES, failed_ids):
            result = by_id[frame_id]
            assert result.error.code == cases[name].code, name
            assert cases[name].message in result.error.message, name
            assert not result.results
        assert by_id[901].stream_id == "bad"
        [neighbour_result] = other
        assert neighbour_result.stream_id == "cam-2" and not neighbour_result.HasField("error")
        # The unary path still works too.
        assert not stub.Analyze(make_frame(edge_output, 44), timeout=60).HasField("error")


class TestFrameCap:
    @pytest.fixture(scope="class")
    def small(self, tiny_bundle):
        settings = loopback_settings(max_frame_bytes=SMALL_CAP)
        with CloudService(settings, bundle_loader=lambda _: tiny_bundle).run_in_background() as handle:
            with grpc.insecure_channel(handle.grpc_target) as channel:
                yield pb_grpc.FeatureLinkStub(channel)

    def test_oversized_frame_is_refused_by_grpc_and_the_server_goes_on(self, small, edge_output):
        big = make_frame(edge_output, 51)
        assert big.ByteSize() > SMALL_CAP
        with pytest.raises(grpc.RpcError) as info:
            small.Analyze(big, timeout=10)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        with pytest.raises(grpc.RpcError) as info:
            list(small.Stream(iter([big]), timeout=10))
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

        fits = make_frame(edge_output, 52, codec="quant")
        assert fits.ByteSize() < SMALL_CAP
        assert not small.Analyze(fits, timeout=60).HasField("error")
        assert small.GetCapabilities(pb.CapabilitiesRequest(), timeout=5).max_frame_bytes == SMALL_CAP
