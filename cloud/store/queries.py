"""The store's read side for integrators: streams, a stream's frames, one frame, aggregates per time bucket.

Listings page by keyset (opaque cursors, :mod:`.cursor`): streams by ``stream_id``, a stream's frames newest
first by ``(capture_time_us, id)``, so a page never repeats or skips a frame while frames are added.
Time windows are on capture time, ``since`` inclusive and ``until`` exclusive, in microseconds.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import numpy as np
import sqlalchemy as sa

from fpnlink.shared.errors import InvalidArgumentError, NotFoundError
from fpnlink.shared.wire import pb

from .cursor import decode_cursor, encode_cursor
from .records import ScaleRow, result_from_rows
from .schema import detections, frames, scales
from .store import ResultStore, store_errors

T = TypeVar("T")
MIN_BUCKET_S = 60
MAX_BUCKET_S = 86_400
MAX_BUCKETS = 10_000
LATENCY_PERCENTILE = 95.0


@dataclass(frozen=True)
class TimeWindow:
    """Capture-time window ``[since_us, until_us)``; an open side is None."""

    since_us: int | None = None
    until_us: int | None = None

    def __post_init__(self) -> None:
        if self.since_us is not None and self.until_us is not None and self.since_us >= self.until_us:
            raise InvalidArgumentError(f"empty time window: since ({self.since_us} us) must be before until "
                                       f"({self.until_us} us)")

    def clauses(self) -> list[sa.ColumnElement[bool]]:
        out = []
        if self.since_us is not None:
            out.append(frames.c.capture_time_us >= self.since_us)
        if self.until_us is not None:
            out.append(frames.c.capture_time_us < self.until_us)
        return out


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a listing; ``next_cursor`` is None on the last page."""

    items: list[T]
    next_cursor: str | None


@dataclass(frozen=True)
class StreamSummary:
    """A stream: first and last receive time (us), frames stored and how many of them failed."""

    stream_id: str
    first_seen_us: int
    last_seen_us: int
    frame_count: int
    error_count: int


@dataclass(frozen=True)
class FrameSummary:
    """One stored frame without its detections."""

    stream_id: str
    frame_id: int
    device_id: str | None
    capture_time_us: int
    receive_time_us: int
    complete_time_us: int
    frame_bytes: int
    codec: str
    tasks: list[str]
    detection_count: int
    error_code: str | None
    error_message: str | None


@dataclass(frozen=True)
class FrameDetail:
    """One stored frame in full: its summary, fingerprints, scales and the Result it was answered with."""

    summary: FrameSummary
    codec_fingerprint: str
    model_fingerprint: str
    scales: list[ScaleRow]
    result: pb.Result


@dataclass(frozen=True)
class Bucket:
    """Aggregates of the frames captured in ``[start_us, start_us + bucket)``.

    Attributes:
        detections: detection count per category (of the task asked for, or of every task).
        latency_ms_mean, latency_ms_p95: capture-to-result latency of answered frames with a capture time
            (None when there are none).
        kbps: frame bytes received per second of the bucket, in kilobits.
    """

    start_us: int
    frames: int
    errors: int
    detections: dict[str, int] = field(default_factory=dict)
    latency_ms_mean: float | None = None
    latency_ms_p95: float | None = None
    kbps: float = 0.0
    mean_frame_bytes: float = 0.0


class Analytics:
    """Read-only queries over a :class:`ResultStore` (synchronous; run them in a worker thread)."""

    def __init__(self, store: ResultStore) -> None:
        self.engine = store.engine

    # ----------------------------------------------------------------------------------------- streams

    def streams(self, limit: int, cursor: str | None = None) -> Page[StreamSummary]:
        query = _stream_summaries().order_by(frames.c.stream_id).limit(limit + 1)
        if cursor is not None:
            (after,) = decode_cursor(cursor, "streams", (str,))
            query = query.where(frames.c.stream_id > after)
        with store_errors("read the results database"), self.engine.connect() as connection:
            rows = connection.execute(query).all()
        items = [StreamSummary(*row) for row in rows[:limit]]
        more = len(rows) > limit
        return Page(items, encode_cursor("streams", items[-1].stream_id) if more else None)

    def stream(self, stream_id: str) -> StreamSummary:
        """:class:`NotFoundError` for a stream with no stored frame."""
        with store_errors("read the results database"), self.engine.connect() as connection:
            row = connection.execute(_stream_summaries().where(frames.c.stream_id == stream_id)).first()
        if row is None:
            raise NotFoundError(f"stream {stream_id!r} has no stored frames; GET /v1/streams lists the streams")
        return StreamSummary(*row)

    # ------------------------------------------------------------------------------------------ frames

    def frames(self, stream_id: str, limit: int, cursor: str | None = None, window: TimeWindow = TimeWindow(),
               task: str | None = None, category: str | None = None) -> Page[FrameSummary]:
        """A stream's frames newest first (capture time), optionally only those with a detection of
        ``task`` and/or ``category``."""
        self.stream(stream_id)
        query = sa.select(frames).where(frames.c.stream_id == stream_id, *window.clauses())
        if task is not None or category is not None:
            match = sa.select(detections.c.id).where(detections.c.frame_pk == frames.c.id)
            if task is not None:
                match = match.where(detections.c.task == task)
            if category is not None:
                match = match.where(detections.c.category == category)
            query = query.where(match.exists())
        if cursor is not None:
            capture_us, pk = decode_cursor(cursor, "frames", (int, int))
            query = query.where(sa.or_(frames.c.capture_time_us < capture_us,
                                       sa.and_(frames.c.capture_time_us == capture_us, frames.c.id < pk)))
        query = query.order_by(frames.c.capture_time_us.desc(), frames.c.id.desc()).limit(limit + 1)
        with store_errors("read the results database"), self.engine.connect() as connection:
            rows = connection.execute(query).mappings().all()
        page = rows[:limit]
        next_cursor = encode_cursor("frames", page[-1]["capture_time_us"], page[-1]["id"]) \
            if len(rows) > limit else None
        return Page([_summary(row) for row in page], next_cursor)

    def frame(self, stream_id: str, frame_id: int) -> FrameDetail:
        """:class:`NotFoundError` when the frame is not stored."""
        with store_errors("read the results database"), self.engine.connect() as connection:
            row = connection.execute(sa.select(frames).where(frames.c.stream_id == stream_id,
                                                             frames.c.frame_id == frame_id)).mappings().first()
            if row is None:
                self.stream(stream_id)
                raise NotFoundError(f"frame {frame_id} of stream {stream_id!r} is not stored")
            scale_rows = connection.execute(sa.select(scales).where(scales.c.frame_pk == row["id"])
                                            .order_by(scales.c.name)).mappings().all()
            detection_rows = connection.execute(
                sa.select(detections).where(detections.c.frame_pk == row["id"])).mappings().all()
        return FrameDetail(
            summary=_summary(row), codec_fingerprint=row["codec_fingerprint"],
            model_fingerprint=row["model_fingerprint"],
            scales=[ScaleRow(s["name"], s["phi"], s["planned_bits"], s["payload_bytes"]) for s in scale_rows],
            result=result_from_rows(row, detection_rows),
        )

    # -------------------------------------------------------------------------------------- aggregates

    def aggregates(self, stream_id: str, bucket_s: int, window: TimeWindow = TimeWindow(),
                   task: str | None = None) -> list[Bucket]:
        """Per-bucket counts, latency and rate of a stream's frames in ``window`` (buckets with frames only).

        Raises:
            InvalidArgumentError: ``bucket_s`` outside 60..86400 s, or more than 10,000 buckets in the window.
            NotFoundError: an unknown stream.
        """
        if not MIN_BUCKET_S <= bucket_s <= MAX_BUCKET_S:
            raise InvalidArgumentError(f"bucket must be {MIN_BUCKET_S} s .. {MAX_BUCKET_S} s (1m .. 1d), "
                                       f"got {bucket_s} s")
        self.stream(stream_id)
        bucket_us = bucket_s * 1_000_000
        where = [frames.c.stream_id == stream_id, *window.clauses()]
        with store_errors("read the results database"), self.engine.connect() as connection:
            span = connection.execute(sa.select(sa.func.min(frames.c.capture_time_us),
                                                sa.func.max(frames.c.capture_time_us)).where(*where)).first()
            if span[0] is None:
                return []
            count = (span[1] // bucket_us) - (span[0] // bucket_us) + 1
            if count > MAX_BUCKETS:
                raise InvalidArgumentError(f"{count} buckets of {bucket_s} s in the window (at most {MAX_BUCKETS}); "
                                           f"use a larger bucket or a narrower since/until")
            frame_rows = connection.execute(sa.select(
                frames.c.capture_time_us, frames.c.complete_time_us, frames.c.frame_bytes, frames.c.error_code,
            ).where(*where)).all()
            per_category = sa.select(frames.c.capture_time_us, detections.c.category, sa.func.count()) \
                .join(detections, detections.c.frame_pk == frames.c.id).where(*where)
            if task is not None:
                per_category = per_category.where(detections.c.task == task)
            category_rows = connection.execute(
                per_category.group_by(frames.c.capture_time_us, detections.c.category)).all()
        return _buckets(frame_rows, category_rows, bucket_us)


def _stream_summaries() -> sa.Select:
    failed = sa.case((frames.c.error_code.is_not(None), 1), else_=0)
    return sa.select(frames.c.stream_id, sa.func.min(frames.c.receive_time_us), sa.func.max(frames.c.receive_time_us),
                     sa.func.count(), sa.func.coalesce(sa.func.sum(failed), 0)).group_by(frames.c.stream_id)


def _summary(row: Mapping[str, Any]) -> FrameSummary:
    return FrameSummary(
        stream_id=row["stream_id"], frame_id=row["frame_id"], device_id=row["device_id"],
        capture_time_us=row["capture_time_us"], receive_time_us=row["receive_time_us"],
        complete_time_us=row["complete_time_us"], frame_bytes=row["frame_bytes"], codec=row["codec"],
        tasks=[t for t in row["tasks"].split(",") if t], detection_count=row["detection_count"],
        error_code=row["error_code"], error_message=row["error_message"],
    )


def _buckets(frame_rows: list[sa.Row], category_rows: list[sa.Row], bucket_us: int) -> list[Bucket]:
    grouped: dict[int, list[sa.Row]] = defaultdict(list)
    for row in frame_rows:
        grouped[row.capture_time_us // bucket_us * bucket_us].append(row)
    categories: dict[int, Counter[str]] = defaultdict(Counter)
    for capture_us, category, n in category_rows:
        categories[capture_us // bucket_us * bucket_us][category] += int(n)
    out = []
    for start in sorted(grouped):
        rows = grouped[start]
        latencies = [(r.complete_time_us - r.capture_time_us) / 1e3 for r in rows
                     if r.error_code is None and r.capture_time_us > 0]
        total_bytes = sum(r.frame_bytes for r in rows)
        out.append(Bucket(
            start_us=start, frames=len(rows), errors=sum(r.error_code is not None for r in rows),
            detections=dict(sorted(categories[start].items())),
            latency_ms_mean=float(np.mean(latencies)) if latencies else None,
            latency_ms_p95=float(np.percentile(latencies, LATENCY_PERCENTILE)) if latencies else None,
            kbps=8 * total_bytes / (bucket_us / 1e6) / 1e3,
            mean_frame_bytes=total_bytes / len(rows),
        ))
    return out

