"""Dynamic batching and pipelined streams over real loopback gRPC (CloudService.run_in_background).

Which frame finishes first is controlled by the batcher itself, never by timing: with ``max_batch_size=2`` and
a ``max_queue_delay_ms`` far beyond any test, a frame stays queued until a second frame of its task set and
input size arrives, which the test sends only after it has seen the answers it expects first.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Callable, Iterator

import grpc
import httpx
import pytest
import torch
from cloud_helpers import EdgeOutput, assert_same_task_results, bad_cases, loopback_settings, make_frame

from fpnlink.cloud import CloudEngine, CloudService
from fpnlink.cloud.errors import RETRY_PUSHBACK_KEY
from fpnlink.cloud.server import SERVICE_NAME
from fpnlink.shared.codec import make_codec
from fpnlink.shared.model import ModelBundle
from fpnlink.shared.wire import pb

ALL_TASKS = ("detect", "segment", "keypoints")
BATCH_ATOL = 1e-3
"""Pixels: a batch sums its convolutions and GEMMs in another order than one frame does (float32 rounding,
about 1e-6 relative, which the untrained box regression of ``random:0`` amplifies to ~2e-4 px)."""
HOLD_MS = 10_000.0
"""A queue delay no test waits for: a lone frame runs only when its batch partner arrives."""


class Feed:
    """A Stream's requests, sent one by one by the test (the call reads them as they come)."""

    def __init__(self) -> None:
        self._items: queue.Queue[bytes | None] = queue.Queue()

    def send(self, frame: pb.FeatureFrame | bytes) -> None:
        self._items.put(frame if isinstance(frame, bytes) else frame.SerializeToString())

    def close(self) -> None:
        self._items.put(None)

    def __iter__(self) -> Iterator[bytes]:
        while (item := self._items.get()) is not None:
            yield item


def open_stream(target: str, feed: Feed) -> tuple[grpc.Channel, grpc.Call]:
    channel = grpc.insecure_channel(target)
    call = channel.stream_stream(f"/{SERVICE_NAME}/Stream", response_deserializer=pb.Result.FromString)(
        iter(feed), timeout=120)
    return channel, call


def edge_of(bundle: ModelBundle, height: int, width: int, seed: int) -> EdgeOutput:
    image = torch.rand(3, height, width, generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        features, sizes, originals = bundle.edge_half(["detect"])([image])
    return EdgeOutput(features, sizes[0], originals[0], bundle.backbone_fingerprints["faster"])


def wait_until(condition: Callable[[], bool], timeout_s: float = 60.0) -> None:
    """Poll ``condition`` until it holds; fail after ``timeout_s`` (a bound, not a timing assertion)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def metric(service: CloudService, name: str, labels: dict[str, str] | None = None) -> float:
    return service.metrics.registry.get_sample_value(name, labels or {}) or 0.0


def batches_of(service: CloudService, size: int) -> float:
    """How many batches of exactly ``size`` frames the engine ran (the histogram is exact for small sizes)."""
    below = metric(service, "fpnlink_cloud_batch_size_bucket", {"le": f"{size - 1:.1f}"}) if size > 1 else 0.0
    return metric(service, "fpnlink_cloud_batch_size_bucket", {"le": f"{size:.1f}"}) - below


def holding_service(bundle: ModelBundle, **overrides: object):
    settings = dict(max_batch_size=2, max_queue_delay_ms=HOLD_MS, workers=1)
    settings.update(overrides)
    return CloudService(loopback_settings(**settings), bundle_loader=lambda _: bundle).run_in_background()


@pytest.fixture(scope="module")
def edges(tiny_bundle) -> dict[str, EdgeOutput]:
    """Real edge features of four images at two network-input sizes (96x128 and 64x128)."""
    return {"a1": edge_of(tiny_bundle, 96, 128, 1), "a2": edge_of(tiny_bundle, 96, 128, 2),
            "b1": edge_of(tiny_bundle, 64, 128, 3), "b2": edge_of(tiny_bundle, 64, 128, 4)}


class TestEngineBatch:
    def test_a_batch_equals_its_frames_one_by_one_and_a_bad_frame_fails_alone(self, tiny_bundle, edges):
        engine = CloudEngine(tiny_bundle, {"raw": make_codec("raw")}, cache_size=0)
        frames = [make_frame(edges[name], i, tasks=ALL_TASKS) for i, name in enumerate(("a1", "a2"), 1)]
        bad = make_frame(edges["a1"], 3, tasks=ALL_TASKS)
        bad.scales[0].payload = bad.scales[0].payload[:-7]
        prepared = [engine.prepare(f, f.ByteSize()) for f in (frames[0], bad, frames[1])]
        assert len({p.batch_key for p in prepared}) == 1
        first, failed, second = engine.run_batch(prepared)
        assert "payload has" in str(failed)
        for got, frame in ((first, frames[0]), (second, frames[1])):
            assert got.frame_id == frame.frame_id
            assert_same_task_results(got.results, engine.process(frame, frame.ByteSize()).results, BATCH_ATOL)

    def test_a_batch_takes_one_batch_key(self, tiny_bundle, edges):
        engine = CloudEngine(tiny_bundle, {"raw": make_codec("raw")})
        frames = [make_frame(edges["a1"], 1), make_frame(edges["b1"], 2)]
        with pytest.raises(ValueError, match="one batch_key"):
            engine.run_batch([engine.prepare(f, f.ByteSize()) for f in frames])


class TestBatchingOverGrpc:
    def test_batched_results_equal_unbatched_for_frames_of_different_sizes(self, tiny_bundle, edges):
        frames = [make_frame(edges[name], i, tasks=ALL_TASKS) for i, name in enumerate(("a1", "b1", "a2", "b2"), 1)]
        reference = CloudEngine(tiny_bundle, {"raw": make_codec("raw")}, cache_size=0)
        expected = {f.frame_id: reference.process(f, f.ByteSize()) for f in frames}
        with holding_service(tiny_bundle) as server:
            feed = Feed()
            channel, call = open_stream(server.grpc_target, feed)
            with channel:
                for frame in frames:
                    feed.send(frame)
                feed.close()
                results = list(call)
            assert batches_of(server.service, 2) == 2 and batches_of(server.service, 1) == 0
        assert sorted(r.frame_id for r in results) == [1, 2, 3, 4]
        for result in results:
            assert not result.HasField("error")
            assert_same_task_results(result.results, expected[result.frame_id].results, BATCH_ATOL)

    def test_a_full_queue_answers_resource_exhausted_with_a_retry_hint(self, tiny_bundle, edges):
        with holding_service(tiny_bundle, max_queue=2) as server:
            batcher = server.service._batcher
            feed = Feed()
            channel, call = open_stream(server.grpc_target, feed)
            with channel:
                feed.send(make_frame(edges["a1"], 1))  # two batch keys: both wait for a partner, the queue is full
                feed.send(make_frame(edges["a1"], 2, tasks=("segment",)))
                wait_until(lambda: batcher.depth == 2)
                feed.send(make_frame(edges["a1"], 3, tasks=("keypoints",)))
                refused = next(call)
                assert refused.frame_id == 3 and refused.error.code == "RESOURCE_EXHAUSTED"
                assert "queue is full" in refused.error.message and "retry in" in refused.error.message

                unary = channel.unary_unary(f"/{SERVICE_NAME}/Analyze", response_deserializer=pb.Result.FromString)
                with pytest.raises(grpc.RpcError) as info:
                    unary(make_frame(edges["a1"], 4, tasks=("keypoints",)).SerializeToString(), timeout=30)
                assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert int(dict(info.value.trailing_metadata())[RETRY_PUSHBACK_KEY]) >= 1
                rest = httpx.post(f"{server.http_url}/v1/frames", timeout=30,
                                  content=make_frame(edges["a1"], 5, tasks=("keypoints",)).SerializeToString(),
                                  headers={"content-type": "application/x-protobuf"})
                assert rest.status_code == 503 and rest.json()["error"]["code"] == "RESOURCE_EXHAUSTED"
                assert int(rest.headers["retry-after"]) >= 1
                call.cancel()  # the client leaves: its queued frames leave the queue with it
                wait_until(lambda: batcher.depth == 0)
            assert metric(server.service, "fpnlink_cloud_errors_total",
                          {"transport": "grpc", "code": "RESOURCE_EXHAUSTED"}) == 2
            assert metric(server.service, "fpnlink_cloud_errors_total",
                          {"transport": "rest", "code": "RESOURCE_EXHAUSTED"}) == 1

    def test_a_frame_past_the_queue_deadline_gets_deadline_exceeded(self, tiny_bundle, edges):
        with holding_service(tiny_bundle, queue_deadline_s=0.5) as server:
            feed = Feed()
            channel, call = open_stream(server.grpc_target, feed)
            with channel:
                feed.send(make_frame(edges["a1"], 1))  # no partner ever comes: it expires in the queue
                expired = next(call)
                feed.send(make_frame(edges["a1"], 2))
                feed.send(make_frame(edges["a1"], 3))
                feed.close()
                rest = list(call)
            assert expired.frame_id == 1 and expired.error.code == "DEADLINE_EXCEEDED"
            assert "queue deadline" in expired.error.message
            assert sorted(r.frame_id for r in rest) == [2, 3] and not any(r.HasField("error") for r in rest)
            assert metric(server.service, "fpnlink_cloud_errors_total",
                          {"transport": "grpc", "code": "DEADLINE_EXCEEDED"}) == 1
            assert server.service._batcher.depth == 0


class TestPipelinedStream:
    def test_the_second_frame_finishing_first_is_received_first(self, tiny_bundle, edges):
        with holding_service(tiny_bundle) as server:
            feed = Feed()
            channel, call = open_stream(server.grpc_target, feed)
            with channel:
                feed.send(make_frame(edges["a1"], 1))  # detect: waits for a detect partner
                feed.send(make_frame(edges["a1"], 2, tasks=("segment",)))
                feed.send(make_frame(edges["a2"], 3, tasks=("segment",)))  # segment batch full: runs now
                early = [next(call), next(call)]
                feed.send(make_frame(edges["a2"], 4))  # frame 1's partner, sent only after 2 and 3 came back
                feed.close()
                late = list(call)
        assert sorted(r.frame_id for r in early) == [2, 3]
        assert sorted(r.frame_id for r in late) == [1, 4]
        assert not any(r.HasField("error") for r in early + late)

    def test_a_bad_frame_does_not_delay_the_good_frames_after_it(self, tiny_bundle, edges):
        with holding_service(tiny_bundle) as server:
            bad = bad_cases(edges["a1"])["truncated_payload"].data  # parses, fails only when decoded
            feed = Feed()
            channel, call = open_stream(server.grpc_target, feed)
            with channel:
                feed.send(bad)  # detect, held for a partner
                feed.send(make_frame(edges["a1"], 2, tasks=("segment",)))
                feed.send(make_frame(edges["a2"], 3, tasks=("segment",)))
                good = [next(call), next(call)]
                feed.send(make_frame(edges["a2"], 4))  # runs in one batch with the bad frame
                feed.close()
                late = {r.frame_id: r for r in call}
        assert sorted(r.frame_id for r in good) == [2, 3] and not any(r.HasField("error") for r in good)
        assert late[901].error.code == "INVALID_ARGUMENT" and "payload has" in late[901].error.message
        assert not late[4].HasField("error") and late[4].results
