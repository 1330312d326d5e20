"""End to end over real processes: the edge streams frames to ``fpnlink-cloud serve``, the cloud is killed and
started again on the same store (an SQLite file, then a real PostgreSQL server), and the REST analytics return
exactly what was sent; a resent frame is answered from the store without running the heads."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

import httpx
import pytest
import torch
from cloud_process import CloudProcess

from fpnlink.cloud.schemas import ResultModel
from fpnlink.edge import Client, EdgeAgent
from fpnlink.shared.codec import make_codec
from fpnlink.shared.wire import pb

FRAMES = 10
T0_US = 1_764_000_000_000_000  # 2025-11-24T16:00:00Z
STEP_US = 10_000_000  # one frame every 10 s of capture time: the frames span two one-minute buckets
RESENT = 4
TASKS = ["detect", "segment"]


def _iso(us: int) -> str:
    seconds, micro = divmod(us, 1_000_000)
    return datetime.fromtimestamp(seconds, UTC).replace(microsecond=micro).isoformat()


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _all_pages(http: httpx.Client, path: str, limit: int, **params: str) -> list[dict]:
    items, cursor = [], None
    while True:
        page = http.get(path, params={"limit": limit, **({"cursor": cursor} if cursor else {}), **params})
        assert page.status_code == 200, page.text
        body = page.json()
        items += body["items"]
        cursor = body["next_cursor"]
        if cursor is None:
            return items


@pytest.fixture(scope="module")
def encoded(tiny_bundle) -> dict[int, pb.FeatureFrame]:
    agent = EdgeAgent(tiny_bundle, make_codec("quant"), TASKS, stream_id="restart")
    generator = torch.Generator().manual_seed(5)
    return {i: agent.encode(torch.rand(3, 96, 128, generator=generator), i, capture_time_us=T0_US + i * STEP_US).frame
            for i in range(FRAMES)}


def test_results_survive_a_cloud_restart(database_url, encoded, tmp_path):
    first = CloudProcess(tmp_path / "first.log", "--database-url", database_url)
    try:
        with Client(first.grpc_target) as client:
            sent = {r.frame_id: r for r in client.stream(encoded.values())}
    finally:
        first.kill()  # SIGKILL: every frame answered OK must already be committed
    assert sorted(sent) == list(range(FRAMES)) and not any(r.HasField("error") for r in sent.values())

    second = CloudProcess(tmp_path / "second.log", "--database-url", database_url)
    try:
        with httpx.Client(base_url=second.http_url, timeout=30) as http:
            [stream] = http.get("/v1/streams").json()["items"]
            assert (stream["stream_id"], stream["frame_count"], stream["error_count"]) == ("restart", FRAMES, 0)

            frames = _all_pages(http, "/v1/streams/restart/frames", limit=3)
            assert [f["frame_id"] for f in frames] == list(range(FRAMES))[::-1]  # newest first, no gap or repeat
            assert [f["frame_bytes"] for f in frames] == [sent[f["frame_id"]].frame_bytes for f in frames]

            window = _all_pages(http, "/v1/streams/restart/frames", limit=2, since=_iso(T0_US + 3 * STEP_US),
                                until=_iso(T0_US + 7 * STEP_US))
            assert [f["frame_id"] for f in window] == [6, 5, 4, 3]

            sent_counts = Counter(d.category for r in sent.values() for t in r.results for d in t.detections)
            buckets = http.get("/v1/streams/restart/aggregates", params={"bucket": "1m"}).json()["buckets"]
            stored_counts = Counter()
            for bucket in buckets:
                stored_counts.update(bucket["detections"])
            assert sum(b["frames"] for b in buckets) == FRAMES and len(buckets) == 2
            assert stored_counts == sent_counts and sum(sent_counts.values()) > 0

            detail = http.get(f"/v1/streams/restart/frames/{RESENT}").json()
            assert detail["result"] == ResultModel.from_pb(sent[RESENT]).model_dump(mode="json", exclude_none=True)

            before = http.get("/metrics").text
            with Client(second.grpc_target) as client:
                again = client.analyze(encoded[RESENT])
            after = http.get("/metrics").text
        assert again == sent[RESENT]
        served = "fpnlink_cloud_frames_from_store_total"
        assert _metric(after, served) == _metric(before, served) + 1
        assert _metric(after, 'fpnlink_cloud_stage_seconds_count{stage="heads"}') == 0.0  # the heads never ran
    finally:
        assert second.terminate() == 0
