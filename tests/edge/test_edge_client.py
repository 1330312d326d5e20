"""The gRPC client against a real server on loopback (the in-test EchoServicer peer)."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2

from fpnlink.edge import Client, LinkError
from fpnlink.edge.client import SERVICE_NAME, check_compatible
from fpnlink.shared.errors import FingerprintMismatchError, LimitExceededError, UnsupportedError

MiB = 1024 * 1024


class TestUnary:
    def test_capabilities_and_ready(self, peer):
        servicer, target, _ = peer
        with Client(target) as client:
            client.wait_ready(timeout_s=5)
            caps = client.capabilities()
        assert caps.min_size == 128 and {c.name for c in caps.codecs} == {"raw", "quant"}

    def test_analyze(self, peer, make_frame):
        servicer, target, _ = peer
        with Client(target) as client:
            result = client.analyze(make_frame(42))
        assert result.frame_id == 42 and not result.HasField("error")
        assert servicer.analyze_calls == [42]

    def test_analyze_retries_unavailable_with_the_same_frame_id(self, peer, make_frame):
        servicer, target, _ = peer
        servicer.unavailable_first = 2
        with Client(target, retries=3, backoff_s=0.01) as client:
            assert client.analyze(make_frame(9)).frame_id == 9
        assert servicer.analyze_calls == [9, 9, 9]

    def test_analyze_gives_up_after_retries(self, peer, make_frame):
        servicer, target, _ = peer
        servicer.unavailable_first = 5
        with Client(target, retries=1, backoff_s=0.01) as client, pytest.raises(LinkError) as info:
            client.analyze(make_frame(9))
        assert info.value.code == grpc.StatusCode.UNAVAILABLE and "warming up" in str(info.value)
        assert servicer.analyze_calls == [9, 9]

    def test_large_frame(self, peer, make_frame):
        _, target, _ = peer
        frame = make_frame(1, payload_bytes=5 * MiB)
        with Client(target) as client:
            assert client.analyze(frame).frame_bytes == frame.ByteSize() > 5 * MiB


class TestReady:
    def test_not_serving_times_out_naming_the_status(self, peer):
        _, target, health_servicer = peer
        health_servicer.set(SERVICE_NAME, health_pb2.HealthCheckResponse.NOT_SERVING)
        not_ready = "answers but is not ready \\(health status NOT_SERVING"
        with Client(target) as client, pytest.raises(LinkError, match=not_ready):
            client.wait_ready(timeout_s=0.5)

    def test_overall_status_when_service_is_not_registered(self, serve):
        target = serve(health_service=None)
        with Client(target) as client:
            client.wait_ready(timeout_s=2)


class TestUnreachable:
    def test_every_call_raises_link_error(self, closed_target, make_frame):
        with Client(closed_target, retries=1, backoff_s=0.01) as client:
            with pytest.raises(LinkError, match=f"not ready after .*{closed_target}|{closed_target}") as info:
                client.wait_ready(timeout_s=0.3)
            assert info.value.code == grpc.StatusCode.UNAVAILABLE
            for call in (client.capabilities, lambda: client.analyze(make_frame(1)),
                         lambda: list(client.stream([make_frame(1)]))):
                with pytest.raises(LinkError) as info:
                    call()
                assert info.value.code == grpc.StatusCode.UNAVAILABLE
                assert closed_target in str(info.value) and "is fpnlink-cloud serving gRPC" in str(info.value)


class TestStream:
    def test_results_match_frames(self, peer, make_frame):
        servicer, target, _ = peer
        frames = [make_frame(i, tasks=("detect", "segment")) for i in range(1, 6)]
        with Client(target) as client:
            replies = list(client.stream_replies(frames))
        assert [r.result.frame_id for r in replies] == [1, 2, 3, 4, 5]
        assert all(r.round_trip_ms > 0 for r in replies)
        assert [r.result.frame_bytes for r in replies] == [f.ByteSize() for f in frames]
        assert len(replies[0].result.results) == 2

    def test_any_order_and_ordered(self, peer, make_frame):
        servicer, target, _ = peer
        servicer.reverse = True
        with Client(target) as client:
            arrived = [r.frame_id for r in client.stream(make_frame(i) for i in range(1, 5))]
            ordered = [r.frame_id for r in client.stream((make_frame(i) for i in range(1, 5)), ordered=True)]
        assert arrived == [4, 3, 2, 1]
        assert ordered == [1, 2, 3, 4]

    def test_large_frames(self, peer, make_frame):
        _, target, _ = peer
        frames = [make_frame(i, payload_bytes=5 * MiB) for i in (1, 2)]
        with Client(target) as client:
            results = list(client.stream(frames))
        assert [r.frame_bytes for r in results] == [f.ByteSize() for f in frames]

    def test_frame_over_the_cap_is_refused_before_sending(self, peer, make_frame):
        servicer, target, _ = peer
        with Client(target, max_frame_bytes=MiB) as client, pytest.raises(LimitExceededError, match="cap"):
            list(client.stream([make_frame(1, payload_bytes=2 * MiB)]))
        assert servicer.received == []

    def test_error_results_do_not_end_the_stream(self, peer, make_frame):
        servicer, target, _ = peer
        servicer.fail_ids = {2}
        with Client(target) as client:
            results = list(client.stream(make_frame(i) for i in (1, 2, 3)))
        assert [r.HasField("error") for r in results] == [False, True, False]
        assert results[1].error.code == "INVALID_ARGUMENT"

    def test_server_abort_is_a_link_error_after_earlier_results(self, peer, make_frame):
        servicer, target, _ = peer
        servicer.abort_after = 2
        seen = []
        with Client(target) as client, pytest.raises(LinkError) as info:
            for result in client.stream(make_frame(i) for i in range(1, 6)):
                seen.append(result.frame_id)
        assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "test peer gives up" in str(info.value)
        assert seen == [1, 2]

    def test_missing_result_is_a_protocol_error(self, peer, make_frame):
        servicer, target, _ = peer
        servicer.skip_ids = {2}
        with Client(target) as client, pytest.raises(LinkError, match=r"without results for 1 frame\(s\), ids \[2\]"):
            list(client.stream(make_frame(i) for i in (1, 2, 3)))

    def test_duplicate_frame_ids_are_refused(self, peer, make_frame):
        servicer, target, _ = peer
        servicer.reverse = True  # keeps frame 1 in flight when its duplicate comes
        with Client(target) as client, pytest.raises(ValueError, match="already in flight"):
            list(client.stream([make_frame(1), make_frame(1)]))

    def test_error_in_the_frame_source_surfaces_after_sent_frames(self, peer, make_frame):
        _, target, _ = peer

        def frames():
            yield make_frame(1)
            raise RuntimeError("camera unplugged")

        seen = []
        with Client(target) as client, pytest.raises(RuntimeError, match="camera unplugged"):
            for result in client.stream(frames()):
                seen.append(result.frame_id)
        assert seen == [1]

    def test_stopping_early_cancels_and_the_client_stays_usable(self, peer, make_frame):
        _, target, _ = peer
        with Client(target) as client:
            for result in client.stream(make_frame(i) for i in range(1, 100)):
                break
            assert result.frame_id == 1
            assert client.analyze(make_frame(7)).frame_id == 7

    def test_empty_stream(self, peer):
        servicer, target, _ = peer
        with Client(target) as client:
            assert list(client.stream([])) == []
        assert servicer.received == []


class TestCapabilityCheck:
    def test_backbone_mismatch_names_both_fingerprints(self, peer, make_frame):
        servicer, target, _ = peer
        with Client(target) as client, pytest.raises(FingerprintMismatchError) as info:
            list(client.stream([make_frame(1, model_fingerprint="0123456789abcdef")]))
        message = str(info.value)
        assert "0123456789abcdef" in message and servicer.model_fingerprint in message and "random:0" in message
        assert servicer.received == []

    def test_codec_mismatch(self, peer, make_frame):
        servicer, target, _ = peer
        with Client(target) as client:
            with pytest.raises(FingerprintMismatchError, match="codec 'quant' fingerprint"):
                client.analyze(make_frame(1, codec="quant", codec_fingerprint="0000"))
            with pytest.raises(UnsupportedError, match="no codec 'raw16'"):
                client.analyze(make_frame(1, codec="raw16"))
        assert servicer.analyze_calls == []

    def test_task_not_served(self, peer, make_frame):
        servicer, target, _ = peer
        with Client(target) as client, pytest.raises(UnsupportedError, match="not 'keypoints'"):
            list(client.stream([make_frame(1, tasks=("keypoints",))]))

    def test_later_mismatching_frame_stops_the_stream(self, peer, make_frame):
        servicer, target, _ = peer
        frames = [make_frame(1), make_frame(2, model_fingerprint="other"), make_frame(3)]
        seen = []
        with Client(target) as client, pytest.raises(FingerprintMismatchError):
            for result in client.stream(frames):
                seen.append(result.frame_id)
        assert seen == [1] and servicer.received == [1]

    def test_check_can_be_skipped(self, peer, make_frame):
        servicer, target, _ = peer
        with Client(target) as client:
            assert client.analyze(make_frame(1, model_fingerprint="other"), check=False).frame_id == 1

    def test_check_compatible_accepts_a_match(self, peer):
        servicer, target, _ = peer
        with Client(target) as client:
            caps = client.capabilities()
        check_compatible(caps, tasks=["detect", "segment"], model_fingerprint=servicer.model_fingerprint,
                         codec="quant", codec_fingerprint=servicer.codecs["quant"].fingerprint)


class TestClientArguments:
    @pytest.mark.parametrize("kwargs", [{"target": ""}, {"max_frame_bytes": 0}, {"timeout_s": 0}, {"retries": -1}])
    def test_invalid(self, kwargs):
        with pytest.raises(ValueError):
            Client(**{"target": "localhost:1", **kwargs})
