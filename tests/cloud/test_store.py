"""The results store against real databases (an SQLite file and a PostgreSQL server): schema, writes,
resend lookups, retention, analytics queries, the batching writer and its failures."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from cloud_helpers import make_frame

from fpnlink.cloud import CloudEngine
from fpnlink.cloud.store import (
    Analytics, FrameRecord, ResultStore, Retention, StoreFullError, StoreUnavailableError, StoreWriter, TimeWindow,
    frame_record,
)
from fpnlink.cloud.store.database import current_revision, normalize_url
from fpnlink.cloud.store.schema import metadata
from fpnlink.shared.errors import BadFrameError, InvalidArgumentError, NotFoundError
from fpnlink.shared.wire import pb

T0_US = 1_700_000_000_000_000
SECOND_US = 1_000_000
ALL_TASKS = ("detect", "segment", "keypoints")


@pytest.fixture(scope="module")
def answered(tiny_bundle, edge_output) -> tuple[pb.FeatureFrame, pb.Result]:
    """A real frame of all three tasks and the engine's Result for it (masks and keypoints included)."""
    frame = make_frame(edge_output, 1, tasks=ALL_TASKS, codec="quant", planned_bits={"0": 4000})
    result = CloudEngine(tiny_bundle, cache_size=0).process(frame, frame.ByteSize())
    assert all(len(r.detections) > 0 for r in result.results), "random weights should still detect"
    return frame, result


def record(answered, frame_id: int, *, stream_id: str = "cam-1", capture_us: int | None = None,
           error: tuple[str, str] | None = None, receive_us: int | None = None) -> FrameRecord:
    frame, result = answered
    frame = pb.FeatureFrame.FromString(frame.SerializeToString())
    frame.stream_id, frame.frame_id = stream_id, frame_id
    frame.capture_time_us = T0_US + frame_id * SECOND_US if capture_us is None else capture_us
    stored = None
    if error is None:
        stored = pb.Result.FromString(result.SerializeToString())
        stored.stream_id, stored.frame_id = stream_id, frame_id
    receive = frame.capture_time_us + 1000 if receive_us is None else receive_us
    return frame_record(frame, receive_time_us=receive, complete_time_us=receive + 20_000,
                        frame_bytes=frame.ByteSize(), result=stored, error=error)


@pytest.fixture
def store(database_url) -> ResultStore:
    store = ResultStore(database_url)
    store.open()
    yield store
    store.close()


class TestSchema:
    def test_migrations_reach_head_and_match_the_tables(self, store):
        assert current_revision(store.engine) == "0001"
        with store.engine.connect() as connection:
            assert compare_metadata(MigrationContext.configure(connection), metadata) == []

    def test_open_twice_is_a_no_op(self, store, answered):
        store.write([record(answered, 1)])
        store.open()
        assert store.count() == 1

    def test_sqlite_file_is_created_in_wal_mode(self, tmp_path):
        path = tmp_path / "new" / "folder" / "cloud.db"
        store = ResultStore(f"sqlite:///{path}")
        store.open()
        store.close()
        with sqlite3.connect(path) as connection:
            assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"

    @pytest.mark.parametrize("url, message", [
        ("mysql://db/x", "use sqlite:///PATH or postgresql://"),
        ("sqlite://", "needs a file path"),
        ("not a url", "does not parse"),
    ])
    def test_bad_urls_are_refused(self, url, message):
        with pytest.raises(ValueError, match=message):
            normalize_url(url)

    def test_postgres_urls_get_psycopg(self):
        assert normalize_url("postgresql://u@h:5/db").drivername == "postgresql+psycopg"


class TestWrites:
    def test_stored_result_equals_the_answered_one(self, store, answered):
        written = record(answered, 7)
        store.write([written])
        assert store.lookup("cam-1", 7) == written.result
        assert store.lookup("cam-1", 8) is None

    def test_a_resend_keeps_the_first_result(self, store, answered):
        first = record(answered, 3)
        store.write([first])
        second = record(answered, 3, capture_us=T0_US)
        store.write([second, record(answered, 4)])
        assert store.count() == 2
        assert Analytics(store).frame("cam-1", 3).summary.capture_time_us == first.capture_time_us

    def test_a_failure_is_replaced_by_a_later_success(self, store, answered):
        store.write([record(answered, 5, error=("INVALID_ARGUMENT", "bad payload"))])
        assert store.lookup("cam-1", 5) is None
        store.write([record(answered, 5)])
        assert store.lookup("cam-1", 5) is not None and store.count() == 1

    def test_frame_ids_beyond_sql_bigint_are_refused(self, answered):
        frame = pb.FeatureFrame(stream_id="s", frame_id=2**63)
        with pytest.raises(BadFrameError, match="too large to store"):
            frame_record(frame, receive_time_us=0, complete_time_us=0, frame_bytes=0)

    def test_retention_by_age_and_by_rows(self, store, answered):
        store.write([record(answered, i, receive_us=T0_US + i * SECOND_US) for i in range(10)])
        assert store.prune(now_us=T0_US + 10 * SECOND_US, max_age_s=5.5) == 5  # received at 0..4 s
        assert store.prune(now_us=T0_US + 10 * SECOND_US, max_frames=2) == 3
        assert [f.frame_id for f in Analytics(store).frames("cam-1", 10).items] == [9, 8]
        with store.engine.connect() as connection:  # scales and detections go with their frames
            frame_pks = connection.execute(sa.text("SELECT DISTINCT frame_pk FROM detections")).all()
        assert len(frame_pks) == 2


class TestAnalytics:
    @pytest.fixture
    def filled(self, store, answered) -> Analytics:
        records = [record(answered, i) for i in range(1, 8)]
        records += [record(answered, 8, error=("INVALID_ARGUMENT", "truncated"))]
        records += [record(answered, 1, stream_id="cam-2")]
        store.write(records)
        return Analytics(store)

    def test_streams_with_counts_and_pages(self, filled):
        first = filled.streams(limit=1)
        assert [(s.stream_id, s.frame_count, s.error_count) for s in first.items] == [("cam-1", 8, 1)]
        second = filled.streams(limit=1, cursor=first.next_cursor)
        assert [s.stream_id for s in second.items] == ["cam-2"] and second.next_cursor is None

    def test_frames_page_newest_first_without_gaps_or_repeats(self, filled):
        seen, cursor = [], None
        while True:
            page = filled.frames("cam-1", limit=3, cursor=cursor)
            seen += [f.frame_id for f in page.items]
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        assert seen == [8, 7, 6, 5, 4, 3, 2, 1]

    def test_time_window_and_category_filters(self, filled, answered):
        window = TimeWindow(T0_US + 2 * SECOND_US, T0_US + 5 * SECOND_US)
        assert [f.frame_id for f in filled.frames("cam-1", 10, window=window).items] == [4, 3, 2]
        category = answered[1].results[1].detections[0].category
        assert [f.frame_id for f in filled.frames("cam-1", 10, task="segment", category=category).items] == \
            [7, 6, 5, 4, 3, 2, 1]
        assert filled.frames("cam-1", 10, category="no-such-category").items == []

    def test_one_frame_in_full(self, filled, answered):
        detail = filled.frame("cam-1", 2)
        assert [s.name for s in detail.scales] == ["0", "1", "2", "3"]
        assert detail.scales[0].planned_bits == 4000
        assert detail.result.results == answered[1].results
        assert filled.frame("cam-1", 8).summary.error_code == "INVALID_ARGUMENT"

    def test_aggregates_count_every_stored_detection(self, filled, answered):
        [bucket] = filled.aggregates("cam-1", 60)
        per_frame: dict[str, int] = {}
        for task_result in answered[1].results:
            for det in task_result.detections:
                per_frame[det.category] = per_frame.get(det.category, 0) + 7
        assert bucket.frames == 8 and bucket.errors == 1 and bucket.detections == per_frame
        assert bucket.latency_ms_mean == pytest.approx(21.0) and bucket.latency_ms_p95 == pytest.approx(21.0)
        assert bucket.mean_frame_bytes == answered[0].ByteSize()

    def test_too_many_buckets_are_refused(self, filled, store, answered):
        store.write([record(answered, 1, stream_id="wide", capture_us=1), record(answered, 2, stream_id="wide")])
        with pytest.raises(InvalidArgumentError, match="buckets of 60 s in the window"):
            filled.aggregates("wide", 60)

    @pytest.mark.parametrize("call, error, message", [
        (lambda a: a.frames("nobody", 10), NotFoundError, "'nobody' has no stored frames"),
        (lambda a: a.frame("cam-1", 999), NotFoundError, "frame 999"),
        (lambda a: a.frames("cam-1", 10, cursor="garbage"), InvalidArgumentError, "is not a frames cursor"),
        (lambda a: a.frames("cam-1", 10, cursor=a.streams(1).next_cursor), InvalidArgumentError, "frames cursor"),
        (lambda a: a.aggregates("cam-1", 30), InvalidArgumentError, "bucket must be 60 s"),
        (lambda a: TimeWindow(5, 5), InvalidArgumentError, "empty time window"),
    ])
    def test_bad_queries_raise_clear_errors(self, filled, call, error, message):
        with pytest.raises(error, match=message):
            call(filled)


class TestWriter:
    def test_batches_commit_and_resolve_futures(self, store, answered):
        batches = []
        writer = StoreWriter(store, batch_size=4, on_stored=lambda records: batches.append(len(records)))
        futures = [writer.submit(record(answered, i)) for i in range(10)]  # queued before the thread starts
        writer.start()
        for future in futures:
            future.result(10)
        writer.stop()
        assert store.count() == 10 and batches == [4, 4, 2]

    def test_a_full_queue_refuses_and_counts(self, store, answered):
        full = []

        class Observer:
            def record_store_full(self) -> None:
                full.append(1)

        writer = StoreWriter(store, queue_size=2, observer=Observer())
        writer.submit(record(answered, 1))
        writer.submit(record(answered, 2))
        with pytest.raises(StoreFullError, match="write queue is full"):
            writer.submit(record(answered, 3))
        assert writer.offer(record(answered, 4)) is False and len(full) == 2
        writer.start()
        writer.stop()
        assert store.count() == 2

    def test_retention_runs_in_the_writer(self, store, answered):
        writer = StoreWriter(store, retention=Retention(max_frames=3), retention_interval_s=0.0)
        writer.start()
        for i in range(6):
            writer.submit(record(answered, i)).result(10)
        writer.stop()
        assert store.count() <= 4  # pruned after the batch that exceeded the cap

    def test_save_times_out_with_unavailable(self, store, answered):
        writer = StoreWriter(store)  # never started: nothing commits
        with pytest.raises(StoreUnavailableError, match="did not commit frame 1"):
            asyncio.run(writer.save(record(answered, 1), timeout_s=0.05))


class TestDatabaseDown:
    def test_postgres_down_then_back(self, postgres_server, answered):
        store = ResultStore(postgres_server.url, timeout_s=2)
        store.open()
        writer = StoreWriter(store)
        writer.start()
        try:
            writer.submit(record(answered, 1, stream_id="down")).result(10)
            postgres_server.stop()
            with pytest.raises(StoreUnavailableError, match="cannot write to the results database"):
                writer.submit(record(answered, 2, stream_id="down")).result(10)
            assert writer.available is False and "cannot" in writer.last_error
            with pytest.raises(StoreUnavailableError, match="cannot read"):
                store.lookup("down", 1)
        finally:
            postgres_server.start()
        writer.submit(record(answered, 3, stream_id="down")).result(10)
        assert writer.available is True and store.lookup("down", 1) is not None
        writer.stop()
        with store.engine.begin() as connection:
            connection.execute(sa.text("DELETE FROM frames WHERE stream_id = 'down'"))
        store.close()

    def test_unreachable_at_open(self):
        store = ResultStore("postgresql://nobody@127.0.0.1:1/none", timeout_s=1)
        with pytest.raises(StoreUnavailableError, match="cannot migrate the results database"):
            store.open()

