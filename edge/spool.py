"""The store-and-forward spool: coded frames on disk between the agent and the link (SQLite in WAL mode).

::

    agent ──put──> [ frames (id, created, bytes, frame, record) | meta (stream id, next id, cursors) ] ──take──> link
                                                                                            <──ack (result written)──

* **Bounded.** ``quota_bytes`` caps the stored frame bytes; ``ttl_s`` expires frames never answered in time.
  When a new frame does not fit, the ``full_policy`` decides: ``drop-oldest`` evicts the oldest frames,
  ``refuse-new`` drops the new one. Every frame dropped is returned to the caller, so it is counted and gets
  its own results line.
* **Idempotent ids.** Frame ids come from the spool (``next_frame_id``) and are committed with the frame, so
  a frame resent after a reconnect or a restart carries the id it was first sent with.
* **Resumable.** The stream id and, per replayable source, the index of the next source frame (the *cursor*)
  are committed in the same transaction as each frame: a restarted edge continues where the spool stops.
* **Live first.** :meth:`Spool.take` hands out frames spooled within the last ``live_window_s`` seconds before
  older ones (oldest first within each group), so after an outage the cloud sees the present at once and
  the backlog drains behind it.

Power loss: the database runs in WAL mode with ``synchronous=FULL``: a frame is durable once :meth:`put`
returns, and an acknowledgement once :meth:`ack` returns. A power cut loses at most the frame being encoded
(it is re-read from a replayable source, whose cursor was not advanced) and can leave a frame answered but
not acknowledged; its results line was fsynced first, and :class:`~fpnlink.edge.results.ResultLog`'s
reconciliation at the next start acknowledges it without resending. SQLite's own recovery rolls back a
half-written transaction; a file that is not a database fails to open with :class:`SpoolError`.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..shared.errors import FpnlinkError

FullPolicy = Literal["drop-oldest", "refuse-new"]
FULL_POLICIES: tuple[str, ...] = ("drop-oldest", "refuse-new")
DEFAULT_QUOTA_BYTES = 1 << 30
DEFAULT_TTL_S = 24 * 3600.0
DEFAULT_LIVE_WINDOW_S = 2.0
SCHEMA_VERSION = "1"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS frames (
    frame_id INTEGER PRIMARY KEY,
    stream_id TEXT NOT NULL,
    created_us INTEGER NOT NULL,
    size INTEGER NOT NULL,
    frame BLOB NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS frames_created ON frames (created_us);
"""


class SpoolError(FpnlinkError):
    """The spool cannot be opened or written: corrupt file, in use by another edge, disk full, bad settings."""


@dataclass(frozen=True)
class Spooled:
    """A frame as stored.

    Attributes:
        frame_id: its id on the wire.
        stream_id: its stream.
        created_us: when it was spooled (wall clock, microseconds since the epoch).
        frame: the serialized ``FeatureFrame``.
        record: what the edge knew when it spooled it (the results line's first fields).
    """

    frame_id: int
    stream_id: str
    created_us: int
    frame: bytes
    record: dict[str, Any]


def default_spool_path() -> Path:
    """``$XDG_STATE_HOME/fpnlink/edge-spool.sqlite`` (``~/.local/state/...`` without it): one spool per edge box."""
    state = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    return state / "fpnlink" / "edge-spool.sqlite"


class Spool:
    """A bounded, durable queue of coded frames (see the module docstring).

    Args:
        path: the SQLite file (created with its folder); ``PATH.lock`` keeps a second edge out.
        quota_bytes: most frame bytes stored at once.
        ttl_s: frames older than this are dropped by :meth:`expire`.
        full_policy: ``drop-oldest`` or ``refuse-new``.
        live_window_s: frames spooled this recently go out before older ones.

    Raises:
        SpoolError: the file is not a spool (corrupt, another program's), is locked by another edge, or a
            setting is out of range.
    """

    def __init__(self, path: str | Path, quota_bytes: int = DEFAULT_QUOTA_BYTES, ttl_s: float = DEFAULT_TTL_S,
                 full_policy: FullPolicy = "drop-oldest", live_window_s: float = DEFAULT_LIVE_WINDOW_S) -> None:
        if quota_bytes < 1 or not ttl_s > 0 or live_window_s < 0:
            raise SpoolError(f"spool quota, ttl and live window must be positive, got {quota_bytes}, {ttl_s}, "
                             f"{live_window_s}")
        if full_policy not in FULL_POLICIES:
            raise SpoolError(f"full_policy must be one of {FULL_POLICIES}, got {full_policy!r}")
        self.path = Path(path)
        self.quota_bytes, self.ttl_s, self.full_policy = quota_bytes, ttl_s, full_policy
        self.live_window_s = live_window_s
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._lockfile = open(self.path.with_name(self.path.name + ".lock"), "a+")  # noqa: SIM115
        except OSError as exc:
            raise SpoolError(f"cannot create the spool {self.path}: {exc}") from exc
        try:
            fcntl.flock(self._lockfile, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lockfile.close()
            raise SpoolError(f"the spool {self.path} is in use by another fpnlink-edge; give this one its own "
                             f"(--spool PATH)") from None
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            version = self._meta("schema")
            if version is None:
                self._set_meta("schema", SCHEMA_VERSION)
            elif version != SCHEMA_VERSION:
                raise SpoolError(f"{self.path} is a spool of schema {version}, this edge reads {SCHEMA_VERSION}")
            self._db.execute("SELECT count(*) FROM frames").fetchone()
        except sqlite3.DatabaseError as exc:
            self.close()
            raise SpoolError(f"{self.path} is not a readable spool ({exc}); move it aside or delete it to start "
                             f"an empty one (unanswered frames in it are lost)") from exc

    def close(self) -> None:
        if getattr(self, "_db", None) is not None:
            self._db.close()
            self._db = None
        self._lockfile.close()

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- metadata ------------------------------------------------------------------------------------

    def _meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def _set_meta(self, key: str, value: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def stream_id(self, make: Any) -> str:
        """The spool's stream id; ``make()`` creates and stores one the first time."""
        with self._lock:
            value = self._meta("stream_id")
            if value is None:
                value = str(make())
                self._write(lambda: self._set_meta("stream_id", value))
            return value

    def set_stream_id(self, value: str) -> None:
        """Use ``value`` from now on (an explicit ``--stream-id``)."""
        with self._lock:
            self._write(lambda: self._set_meta("stream_id", value))

    def next_frame_id(self) -> int:
        """The id the next :meth:`put` must carry (1 in a new spool)."""
        with self._lock:
            return int(self._meta("next_frame_id") or 1)

    def cursor(self, source: str) -> int:
        """Index of the next frame to read from replayable ``source`` (0 when none was spooled)."""
        with self._lock:
            return int(self._meta(f"cursor:{source}") or 0)

    def clear_cursor(self, source: str) -> None:
        """Forget ``source``'s position (it was read to its end)."""
        with self._lock:
            self._write(lambda: self._db.execute("DELETE FROM meta WHERE key = ?", (f"cursor:{source}",)))

    # -- frames --------------------------------------------------------------------------------------

    def put(self, frame_id: int, stream_id: str, frame: bytes, record: dict[str, Any],
            cursor: tuple[str, int] | None = None) -> list[Spooled]:
        """Store one frame (and advance the id counter and ``cursor`` with it, atomically).

        Args:
            frame_id: must be :meth:`next_frame_id`.
            stream_id: the frame's stream.
            frame: the serialized ``FeatureFrame``.
            record: JSON-serializable facts about it, returned with it.
            cursor: ``(source identity, next index)`` of a replayable source.

        Returns:
            The frames dropped to make room (``drop-oldest``), or ``[this frame]`` (``refuse-new``, or a frame
            larger than the whole quota); empty when nothing was dropped.
        """
        size = len(frame)
        now = time.time_ns() // 1000
        new = Spooled(frame_id, stream_id, now, frame, record)

        def transaction() -> list[Spooled]:
            expected = int(self._meta("next_frame_id") or 1)
            if frame_id != expected:
                raise SpoolError(f"frame id {frame_id} is not the spool's next id {expected}")
            self._set_meta("next_frame_id", str(frame_id + 1))
            if cursor is not None:
                self._set_meta(f"cursor:{cursor[0]}", str(cursor[1]))
            used = self._db.execute("SELECT coalesce(sum(size), 0) FROM frames").fetchone()[0]
            if used + size <= self.quota_bytes:
                self._insert(new)
                return []
            if self.full_policy == "refuse-new" or size > self.quota_bytes:
                return [new]
            dropped = []
            for row in self._db.execute("SELECT * FROM frames ORDER BY frame_id").fetchall():
                if used + size <= self.quota_bytes:
                    break
                dropped.append(_spooled(row))
                used -= row[3]
            self._db.executemany("DELETE FROM frames WHERE frame_id = ?", [(d.frame_id,) for d in dropped])
            self._insert(new)
            return dropped

        with self._lock:
            return self._write(transaction)

    def _insert(self, item: Spooled) -> None:
        self._db.execute("INSERT INTO frames VALUES (?, ?, ?, ?, ?, ?)",
                         (item.frame_id, item.stream_id, item.created_us, len(item.frame), item.frame,
                          json.dumps(item.record)))

    def take(self, exclude: set[int] | frozenset[int] = frozenset()) -> Spooled | None:
        """The frame to send next: the oldest of the last ``live_window_s`` seconds, else the oldest of all."""
        cutoff = time.time_ns() // 1000 - int(self.live_window_s * 1e6)
        skip = ",".join(str(int(i)) for i in exclude) or "-1"
        with self._lock:
            row = self._db.execute(
                f"SELECT * FROM frames WHERE frame_id NOT IN ({skip}) "  # noqa: S608 (integers only)
                f"ORDER BY created_us >= ? DESC, frame_id LIMIT 1", (cutoff,)).fetchone()
        return None if row is None else _spooled(row)

    def ack(self, frame_ids: list[int]) -> None:
        """Forget answered frames (their results line is written)."""
        with self._lock:
            self._write(lambda: self._db.executemany("DELETE FROM frames WHERE frame_id = ?",
                                                      [(int(i),) for i in frame_ids]))

    def expire(self) -> list[Spooled]:
        """Drop and return the frames spooled more than ``ttl_s`` seconds ago."""
        cutoff = time.time_ns() // 1000 - int(self.ttl_s * 1e6)

        def transaction() -> list[Spooled]:
            rows = self._db.execute("SELECT * FROM frames WHERE created_us < ? ORDER BY frame_id",
                                    (cutoff,)).fetchall()
            self._db.execute("DELETE FROM frames WHERE created_us < ?", (cutoff,))
            return [_spooled(row) for row in rows]

        with self._lock:
            return self._write(transaction)

    def keys(self) -> list[tuple[str, int]]:
        """``(stream_id, frame_id)`` of every stored frame, oldest first."""
        with self._lock:
            rows = self._db.execute("SELECT stream_id, frame_id FROM frames ORDER BY frame_id").fetchall()
        return [(str(stream), int(frame_id)) for stream, frame_id in rows]

    def depth(self) -> tuple[int, int]:
        """``(frames, bytes)`` stored."""
        with self._lock:
            count, size = self._db.execute("SELECT count(*), coalesce(sum(size), 0) FROM frames").fetchone()
        return int(count), int(size)

    def _write(self, transaction: Any) -> Any:
        """Run ``transaction`` in one immediate transaction; disk errors become :class:`SpoolError`."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                result = transaction()
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            return result
        except sqlite3.OperationalError as exc:
            raise SpoolError(f"cannot write the spool {self.path}: {exc}") from exc


def _spooled(row: tuple[Any, ...]) -> Spooled:
    frame_id, stream_id, created_us, _, frame, record = row
    return Spooled(int(frame_id), stream_id, int(created_us), bytes(frame), json.loads(record))
