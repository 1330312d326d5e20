"""The spool (real SQLite files) and the results log: bounds, policies, persistence, live-first order, bad files."""

from __future__ import annotations

import json
import sqlite3
import time

import pytest

from fpnlink.edge.results import ResultLog
from fpnlink.edge.spool import Spool, SpoolError


def put(spool: Spool, size: int = 100, stream: str = "s", **record) -> list:
    frame_id = spool.next_frame_id()
    return spool.put(frame_id, stream, bytes([frame_id % 256]) * size, {"frame_id": frame_id, **record})


class TestSpool:
    def test_put_take_ack_and_ids(self, tmp_path):
        with Spool(tmp_path / "s.sqlite") as spool:
            assert spool.next_frame_id() == 1 and spool.take() is None
            assert put(spool) == [] and put(spool) == []
            assert spool.depth() == (2, 200) and spool.keys() == [("s", 1), ("s", 2)]
            first = spool.take()
            assert first.frame_id == 1 and first.frame == b"\x01" * 100 and first.record == {"frame_id": 1}
            assert spool.take(exclude={1}).frame_id == 2
            spool.ack([1])
            assert spool.keys() == [("s", 2)] and spool.next_frame_id() == 3

    def test_frame_id_must_be_the_next(self, tmp_path):
        with Spool(tmp_path / "s.sqlite") as spool, pytest.raises(SpoolError, match="not the spool's next id 1"):
            spool.put(5, "s", b"x", {})

    def test_everything_persists_across_reopen(self, tmp_path):
        path = tmp_path / "s.sqlite"
        with Spool(path) as spool:
            assert spool.stream_id(lambda: "cam-1") == "cam-1"
            spool.put(1, "cam-1", b"abc", {"image": "a.png"}, cursor=("/data", 1))
        with Spool(path) as spool:
            assert spool.stream_id(lambda: "other") == "cam-1"
            assert spool.cursor("/data") == 1 and spool.cursor("/elsewhere") == 0
            assert spool.next_frame_id() == 2 and spool.take().record == {"image": "a.png"}
            spool.clear_cursor("/data")
            assert spool.cursor("/data") == 0

    def test_drop_oldest_when_full(self, tmp_path):
        with Spool(tmp_path / "s.sqlite", quota_bytes=250) as spool:
            put(spool), put(spool)
            dropped = put(spool)
            assert [d.frame_id for d in dropped] == [1] and [k[1] for k in spool.keys()] == [2, 3]

    def test_refuse_new_when_full(self, tmp_path):
        with Spool(tmp_path / "s.sqlite", quota_bytes=250, full_policy="refuse-new") as spool:
            put(spool), put(spool)
            dropped = put(spool)
            assert [d.frame_id for d in dropped] == [3] and [k[1] for k in spool.keys()] == [1, 2]
            assert spool.next_frame_id() == 4  # the refused frame's id is used up, never reissued

    def test_frame_over_the_whole_quota_is_refused(self, tmp_path):
        with Spool(tmp_path / "s.sqlite", quota_bytes=50) as spool:
            assert [d.frame_id for d in put(spool, size=100)] == [1] and spool.depth() == (0, 0)

    def test_ttl(self, tmp_path):
        with Spool(tmp_path / "s.sqlite", ttl_s=0.2) as spool:
            put(spool)
            assert spool.expire() == []
            time.sleep(0.3)
            put(spool)
            assert [d.frame_id for d in spool.expire()] == [1] and [k[1] for k in spool.keys()] == [2]

    def test_live_frames_go_before_the_backlog(self, tmp_path):
        with Spool(tmp_path / "s.sqlite", live_window_s=0.3) as spool:
            for _ in range(3):
                put(spool)  # the backlog
            time.sleep(0.4)
            put(spool), put(spool)  # live
            order = []
            for _ in range(5):
                item = spool.take(exclude=set(order))
                order.append(item.frame_id)
            assert order == [4, 5, 1, 2, 3]  # live oldest-first, then the backlog oldest-first

    def test_corrupt_file(self, tmp_path):
        path = tmp_path / "s.sqlite"
        path.write_bytes(b"this is not a database" * 100)
        with pytest.raises(SpoolError, match="is not a readable spool .* move it aside or delete it"):
            Spool(path)

    def test_foreign_database(self, tmp_path):
        path = tmp_path / "s.sqlite"
        with sqlite3.connect(path) as db:
            db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            db.execute("INSERT INTO meta VALUES ('schema', '99')")
        with pytest.raises(SpoolError, match="schema 99"):
            Spool(path)

    def test_second_edge_on_the_same_spool(self, tmp_path):
        with Spool(tmp_path / "s.sqlite"), pytest.raises(SpoolError, match="in use by another fpnlink-edge"):
            Spool(tmp_path / "s.sqlite")
        Spool(tmp_path / "s.sqlite").close()  # free again once closed

    @pytest.mark.parametrize("kwargs", [{"quota_bytes": 0}, {"ttl_s": 0}, {"full_policy": "block"}])
    def test_bad_settings(self, tmp_path, kwargs):
        with pytest.raises(SpoolError):
            Spool(tmp_path / "s.sqlite", **kwargs)

    def test_unwritable_location(self, tmp_path):
        (tmp_path / "file").write_text("")
        with pytest.raises(SpoolError, match="cannot create the spool"):
            Spool(tmp_path / "file" / "s.sqlite")


class TestResultLog:
    def test_one_line_per_frame(self, tmp_path):
        log = ResultLog(tmp_path / "r.jsonl", resume=False)
        assert log.write({"stream_id": "s", "frame_id": 1, "image": "a"})
        assert not log.write({"stream_id": "s", "frame_id": 1, "image": "a again"})
        assert log.write({"stream_id": "t", "frame_id": 1, "image": "b"})
        log.close()
        assert [json.loads(x)["image"] for x in (tmp_path / "r.jsonl").read_text().splitlines()] == ["a", "b"]

    def test_resume_cuts_a_half_line_and_knows_the_answered(self, tmp_path):
        path = tmp_path / "r.jsonl"
        path.write_text(json.dumps({"stream_id": "s", "frame_id": 1}) + "\n" + '{"stream_id": "s", "fra')
        log = ResultLog(path, resume=True)
        assert log.written == {("s", 1)}
        assert not log.write({"stream_id": "s", "frame_id": 1}) and log.write({"stream_id": "s", "frame_id": 2})
        log.close()
        assert [json.loads(x)["frame_id"] for x in path.read_text().splitlines()] == [1, 2]

    def test_a_fresh_run_starts_the_file_empty(self, tmp_path):
        path = tmp_path / "r.jsonl"
        path.write_text("old\n")
        ResultLog(path, resume=False).close()
        assert path.read_text() == ""
