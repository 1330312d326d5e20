"""The /v1 analytics over real sockets: a CloudService with its results store (SQLite file or PostgreSQL
server), frames sent over loopback gRPC, REST read back with httpx; every bad query's 4xx, the live feed,
a database that goes down (with gRPC health and the edge's wait_ready), a full store queue, bad store settings."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time

import grpc
import httpx
import pytest
from cloud_helpers import loopback_settings, make_frame
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pydantic import ValidationError

from fpnlink.cloud import CloudService, cli
from fpnlink.cloud.server import SERVICE_NAME
from fpnlink.edge.client import Client, LinkError
from fpnlink.shared.wire import pb, pb_grpc

T0_US = 1_764_000_000_000_000
SECOND_US = 1_000_000


def send(target: str, frames: list[pb.FeatureFrame]) -> list[pb.Result]:
    """Stream ``frames``; their results by frame id (a stream answers in completion order)."""
    with grpc.insecure_channel(target) as channel:
        return sorted(pb_grpc.FeatureLinkStub(channel).Stream(iter(frames), timeout=60), key=lambda r: r.frame_id)


def store_settings(database_url: str, **overrides: object):
    return loopback_settings(store=True, database_url=database_url, codecs=["quant"], **overrides)


@pytest.fixture(scope="module")
def cloud(tiny_bundle, module_database_url):
    with CloudService(store_settings(module_database_url), bundle_loader=lambda _: tiny_bundle
                      ).run_in_background() as handle:
        yield handle


@pytest.fixture(scope="module")
def filled(cloud, edge_output):
    frames = [make_frame(edge_output, i, tasks=("detect", "segment"), codec="quant", stream_id="cam-a",
                         capture_time_us=T0_US + i * SECOND_US) for i in range(1, 6)]
    bad = make_frame(edge_output, 6, codec="quant", stream_id="cam-a", capture_time_us=T0_US + 6 * SECOND_US)
    bad.codec_fingerprint = "0123456789abcdef"
    results = send(cloud.grpc_target, [*frames, bad])
    assert [r.HasField("error") for r in results] == [False] * 5 + [True]
    with httpx.Client(base_url=cloud.http_url, timeout=30) as http:
        yield http, results


class TestQueries:
    def test_streams_and_one_stream(self, filled):
        http, _ = filled
        [stream] = http.get("/v1/streams").json()["items"]
        assert (stream["stream_id"], stream["frame_count"], stream["error_count"]) == ("cam-a", 6, 1)
        assert http.get("/v1/streams/cam-a").json()["frame_count"] == 6

    def test_frames_newest_first_with_the_failure_kept(self, filled):
        http, _ = filled
        body = http.get("/v1/streams/cam-a/frames", params={"limit": 4}).json()
        assert [f["frame_id"] for f in body["items"]] == [6, 5, 4, 3] and body["next_cursor"]
        assert body["items"][0]["error"]["code"] == "FAILED_PRECONDITION"
        rest = http.get("/v1/streams/cam-a/frames", params={"limit": 4, "cursor": body["next_cursor"]}).json()
        assert [f["frame_id"] for f in rest["items"]] == [2, 1] and rest["next_cursor"] is None

    def test_task_and_category_filters(self, filled):
        http, results = filled
        category = results[0].results[1].detections[0].category
        with_category = {i + 1 for i, r in enumerate(results[:5])
                         if any(d.category == category for d in r.results[1].detections)}
        body = http.get("/v1/streams/cam-a/frames", params={"task": "segment", "category": category}).json()
        assert {f["frame_id"] for f in body["items"]} == with_category

    def test_one_frame_in_full(self, filled):
        http, results = filled
        detail = http.get("/v1/streams/cam-a/frames/2").json()
        assert [s["scale"] for s in detail["scales"]] == ["P2", "P3", "P4", "P5"]
        assert len(detail["result"]["segment"]) == len(results[1].results[1].detections)
        assert detail["result"]["segment"][0]["mask"]["counts"]

    def test_aggregates(self, filled):
        http, results = filled
        body = http.get("/v1/streams/cam-a/aggregates", params={"bucket": "1h", "task": "detect"}).json()
        [bucket] = body["buckets"]
        assert body["bucket_s"] == 3600 and (bucket["frames"], bucket["errors"]) == (6, 1)
        assert sum(bucket["detections"].values()) == sum(len(r.results[0].detections) for r in results[:5])
        assert bucket["latency_ms_p95"] >= bucket["latency_ms_mean"] > 0 and bucket["kbps"] > 0

    @pytest.mark.parametrize("path, params, status, message", [
        ("/v1/streams/nobody/frames", {}, 404, "'nobody' has no stored frames"),
        ("/v1/streams/nobody", {}, 404, "no stored frames"),
        ("/v1/streams/cam-a/frames/99", {}, 404, "frame 99 of stream 'cam-a' is not stored"),
        ("/v1/streams/cam-a/frames", {"cursor": "bm90IGEgY3Vyc29y"}, 400, "is not a frames cursor"),
        ("/v1/streams", {"cursor": "%%%"}, 400, "is not a streams cursor"),
        ("/v1/streams/cam-a/frames", {"since": "2026-01-02T00:00:00Z", "until": "2026-01-01T00:00:00Z"}, 400,
         "empty time window"),
        ("/v1/streams/cam-a/aggregates", {"bucket": "5x"}, 400, "must be a number and a unit"),
        ("/v1/streams/cam-a/aggregates", {"bucket": "30s"}, 400, "bucket must be 60 s"),
        ("/v1/streams/cam-a/aggregates", {"bucket": "2d"}, 400, "bucket must be 60 s"),
        ("/v1/no-such-route", {}, 404, "Not Found"),
    ])
    def test_bad_queries_get_4xx_with_a_message(self, filled, path, params, status, message):
        http, _ = filled
        response = http.get(path, params=params)
        assert response.status_code == status and message in response.json()["error"]["message"]

    def test_a_time_that_is_not_iso_8601_gets_400(self, filled):
        http, _ = filled
        response = http.get("/v1/streams/cam-a/frames", params={"since": "yesterday"})
        assert response.status_code == 400 and "not an ISO 8601 time" in response.json()["error"]["message"]

    @pytest.mark.parametrize("params", [{"limit": 0}, {"limit": 1001}, {"task": "count"}])
    def test_invalid_parameters_get_422(self, filled, params):
        http, _ = filled
        assert http.get("/v1/streams/cam-a/frames", params=params).status_code == 422


def test_live_feed_sends_each_stored_frame(cloud, edge_output):
    events: list[dict] = []
    connected = threading.Event()

    def listen() -> None:
        with httpx.Client(base_url=cloud.http_url, timeout=30) as http, \
                http.stream("GET", "/v1/streams/live/events") as response:
            connected.set()
            for line in response.iter_lines():
                if line.startswith("data:"):
                    events.append(json.loads(line[5:]))
                    if len(events) == 2:
                        return

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    assert connected.wait(30)
    _until(lambda: cloud.service.recorder.feed.subscribers == 1)
    send(cloud.grpc_target, [make_frame(edge_output, i, codec="quant", stream_id="live") for i in (1, 2)])
    send(cloud.grpc_target, [make_frame(edge_output, 1, codec="quant", stream_id="other")])
    listener.join(30)
    assert sorted(e["frame_id"] for e in events) == [1, 2] and all(e["stream_id"] == "live" for e in events)
    assert "detect" in events[0]["result"]


def test_a_frame_without_a_stream_id_cannot_be_stored(cloud, edge_output):
    [result] = send(cloud.grpc_target, [make_frame(edge_output, 1, codec="quant", stream_id="")])
    assert result.error.code == "INVALID_ARGUMENT" and "stream_id is empty" in result.error.message


def test_analytics_without_a_store_say_so(tiny_bundle):
    with CloudService(loopback_settings(codecs=["quant"]), bundle_loader=lambda _: tiny_bundle).run_in_background() as h:
        response = httpx.get(f"{h.http_url}/v1/streams", timeout=10)
    assert response.status_code == 422 and "without a results store" in response.json()["error"]["message"]


def health_statuses(channel: grpc.Channel) -> set[str]:
    """The grpc.health.v1 ``Check`` status names of the server overall and of FeatureLink."""
    check = health_pb2_grpc.HealthStub(channel).Check
    return {health_pb2.HealthCheckResponse.ServingStatus.Name(check(health_pb2.HealthCheckRequest(service=name),
                                                                    timeout=10).status)
            for name in ("", SERVICE_NAME)}


def test_database_down_means_not_ready_and_unavailable(tiny_bundle, postgres_server, edge_output):
    settings = store_settings(postgres_server.url, store_timeout_s=2.0)
    with CloudService(settings, bundle_loader=lambda _: tiny_bundle).run_in_background() as cloud, \
            httpx.Client(base_url=cloud.http_url, timeout=30) as http, \
            grpc.insecure_channel(cloud.grpc_target) as health_channel:
        assert http.get("/readyz").status_code == 200
        assert health_statuses(health_channel) == {"SERVING"}
        postgres_server.stop()
        try:
            # no frame sent yet: the store writer's idle ping notices, and gRPC health follows /readyz
            _until(lambda: health_statuses(health_channel) == {"NOT_SERVING"})
            not_ready = http.get("/readyz")
            assert not_ready.status_code == 503 and "results store unavailable" in not_ready.json()["reason"]
            [result] = send(cloud.grpc_target, [make_frame(edge_output, 1, codec="quant", stream_id="down-svc")])
            assert result.error.code == "UNAVAILABLE" and "results database" in result.error.message
            with grpc.insecure_channel(cloud.grpc_target) as channel, pytest.raises(grpc.RpcError) as caught:
                pb_grpc.FeatureLinkStub(channel).Analyze(make_frame(edge_output, 2, codec="quant",
                                                                    stream_id="down-svc"), timeout=30)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            not_ready = http.get("/readyz")
            assert not_ready.status_code == 503 and "results store unavailable" in not_ready.json()["reason"]
            assert health_statuses(health_channel) == {"NOT_SERVING"}
            # the edge's wait_ready gives up in its timeout and names the status, rather than hanging
            with Client(cloud.grpc_target) as edge, pytest.raises(LinkError) as refused:
                started = time.monotonic()
                edge.wait_ready(timeout_s=1.0)
            assert time.monotonic() - started < 10
            assert refused.value.code == grpc.StatusCode.UNAVAILABLE and "NOT_SERVING" in str(refused.value)
        finally:
            postgres_server.start()
        # recovery without traffic: the idle ping reaches the database again
        _until(lambda: health_statuses(health_channel) == {"SERVING"})
        ready = http.get("/readyz")
        assert ready.status_code == 200, ready.text
        with Client(cloud.grpc_target) as edge:
            edge.wait_ready(timeout_s=10)
        [result] = send(cloud.grpc_target, [make_frame(edge_output, 3, codec="quant", stream_id="down-svc")])
        assert not result.HasField("error")
        ready = http.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert health_statuses(health_channel) == {"SERVING"}


def test_a_full_store_queue_refuses_frames_and_shows_in_metrics(tiny_bundle, edge_output, tmp_path):
    path = tmp_path / "full.db"
    settings = store_settings(f"sqlite:///{path}", store_queue_size=1, store_timeout_s=30)
    with CloudService(settings, bundle_loader=lambda _: tiny_bundle).run_in_background() as cloud, \
            grpc.insecure_channel(cloud.grpc_target) as channel:
        analyze = pb_grpc.FeatureLinkStub(channel).Analyze
        writer = cloud.service.recorder.writer
        lock = sqlite3.connect(path, isolation_level=None)
        lock.execute("BEGIN IMMEDIATE")  # another writer holds the database: the store's commit waits
        waiting = [analyze.future(make_frame(edge_output, 1, codec="quant", stream_id="full"), timeout=60)]
        _until(lambda: _stored_or_taken(writer))  # the writer took frame 1 and waits for the lock
        waiting.append(analyze.future(make_frame(edge_output, 2, codec="quant", stream_id="full"), timeout=60))
        _until(lambda: writer.depth == 1)  # frame 2 fills the one-slot queue
        with pytest.raises(grpc.RpcError) as refused:
            analyze(make_frame(edge_output, 3, codec="quant", stream_id="full"), timeout=60)
        lock.execute("ROLLBACK")
        assert [future.result().frame_id for future in waiting] == [1, 2]  # answered once committed
        metrics = httpx.get(f"{cloud.http_url}/metrics", timeout=10).text
        assert cloud.service.recorder.store.count() == 2
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE and "write queue is full" in refused.value.details()
    assert "fpnlink_cloud_store_queue_full_total 1.0" in metrics


def _stored_or_taken(writer) -> bool:
    """True once the writer has taken the first record off its queue (its batch waits for the lock)."""
    return writer.depth == 0 and writer.busy


def _until(condition, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition never held"
        time.sleep(0.01)


def test_bad_database_url_exits_2(capsys):
    assert cli.main(["serve", "--database-url", "mysql://db/x"]) == 2
    assert "use sqlite:///PATH or postgresql://" in capsys.readouterr().err


def test_unreachable_database_at_start_exits_1(caplog):
    settings = store_settings("postgresql://nobody@127.0.0.1:1/none", store_timeout_s=1)
    assert asyncio.run(cli.serve(settings, bundle_loader=lambda _: pytest.fail("the store opens first"))) == 1
    assert "cannot migrate the results database" in caplog.text


def test_settings_refuse_bad_store_values():
    with pytest.raises(ValidationError, match="retention_max_frames"):
        loopback_settings(retention_max_frames=0)
