"""REST analytics for integrators under ``/v1``: what the results store holds, paged, filtered, aggregated, live.

=============================================================  ================================================
route                                                          what
=============================================================  ================================================
``GET /v1/streams``                                            streams: first/last seen, frame and error counts
``GET /v1/streams/{stream_id}``                                one stream
``GET /v1/streams/{stream_id}/frames``                         its frames newest first (capture time), in a
                                                               window, by task and category, paged
``GET /v1/streams/{stream_id}/frames/{frame_id}``              one frame's full result, scales, fingerprints
``GET /v1/streams/{stream_id}/aggregates``                     per bucket (1m..1d): detections per category,
                                                               latency mean/p95, kbps, mean bytes per frame
``GET /v1/streams/{stream_id}/events``                         live results (server-sent events)
=============================================================  ================================================

Listings return ``{"items": [...], "next_cursor": ...}``; pass ``next_cursor`` back as ``cursor`` for the next
page (null on the last). Times are ISO 8601 (UTC when no offset is given); windows are ``[since, until)`` on
capture time. Database work runs in worker threads, never on the event loop.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, TypeVar

from fastapi import APIRouter, Path, Query
from fastapi.params import Depends
from fastapi.routing import APIRoute
from fastapi.sse import EventSourceResponse, ServerSentEvent
from pydantic import BaseModel, Field

from fpnlink.shared.errors import InvalidArgumentError, UnsupportedError
from fpnlink.shared.model.split import SCALE_NAMES

from .recorder import FrameRecorder
from .schemas import ErrorBody, ErrorResponse, ResultModel
from .store import Analytics, Bucket, FrameDetail, FrameRecord, FrameSummary, StreamSummary, TimeWindow
from .store.records import MAX_STORED_FRAME_ID, answered_result

T = TypeVar("T")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
KEEPALIVE_S = 15.0
BUCKET_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400}
ANALYTICS_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse} for status in (400, 401, 403, 404, 422, 500, 503)
}
DATE_TIME = {"format": "date-time"}
NO_STORE = "this cloud runs without a results store (store=false): /v1 analytics are off"
Task = Literal["detect", "segment", "keypoints"]
StreamId = Path(..., min_length=1, max_length=256, description="the edge's stream id", examples=["cam-1"])


# --------------------------------------------------------------------------------------------- models


class StreamModel(BaseModel):
    """A stream the store holds frames of (first and last seen: receive times)."""

    stream_id: str = Field(examples=["cam-1"])
    first_seen: datetime
    last_seen: datetime
    frame_count: int = Field(description="frames stored, failed ones included", examples=[1200])
    error_count: int = Field(description="stored frames that failed", examples=[3])

    @classmethod
    def of(cls, stream: StreamSummary) -> StreamModel:
        return cls(stream_id=stream.stream_id, first_seen=_datetime(stream.first_seen_us),
                   last_seen=_datetime(stream.last_seen_us), frame_count=stream.frame_count,
                   error_count=stream.error_count)


class StreamPage(BaseModel):
    items: list[StreamModel]
    next_cursor: str | None = Field(description="cursor of the next page; null on the last")


class FrameModel(BaseModel):
    """One stored frame without its detections."""

    stream_id: str
    frame_id: int = Field(examples=[42])
    device_id: str | None = Field(None, description="the sending device's identity, when known")
    capture_time: datetime | None = Field(description="edge capture time; null when the edge sent none")
    receive_time: datetime
    complete_time: datetime
    latency_ms: float | None = Field(description="capture to result, milliseconds (edge and cloud clocks)")
    frame_bytes: int
    codec: str
    tasks: list[str] = Field(examples=[["detect", "segment"]])
    detection_count: int
    error: ErrorBody | None = None

    @classmethod
    def of(cls, frame: FrameSummary) -> FrameModel:
        captured = frame.capture_time_us > 0
        return cls(
            stream_id=frame.stream_id, frame_id=frame.frame_id, device_id=frame.device_id,
            capture_time=_datetime(frame.capture_time_us) if captured else None,
            receive_time=_datetime(frame.receive_time_us), complete_time=_datetime(frame.complete_time_us),
            latency_ms=(frame.complete_time_us - frame.capture_time_us) / 1e3 if captured else None,
            frame_bytes=frame.frame_bytes, codec=frame.codec, tasks=frame.tasks, detection_count=frame.detection_count,
            error=ErrorBody(code=frame.error_code, message=frame.error_message or "") if frame.error_code else None,
        )


class FramePage(BaseModel):
    items: list[FrameModel]
    next_cursor: str | None = Field(description="cursor of the next page; null on the last")


class ScaleModel(BaseModel):
    """One transmitted FPN scale of a frame."""

    scale: str = Field(examples=["P2"])
    phi: float
    planned_bits: int = Field(description="the edge's bit budget for the scale; 0 without a plan")
    payload_bytes: int


class FrameDetailModel(FrameModel):
    """One stored frame in full: what was received and the result it was answered with."""

    codec_fingerprint: str
    model_fingerprint: str
    scales: list[ScaleModel]
    result: ResultModel

    @classmethod
    def of_detail(cls, detail: FrameDetail) -> FrameDetailModel:
        return cls(**FrameModel.of(detail.summary).model_dump(), codec_fingerprint=detail.codec_fingerprint,
                   model_fingerprint=detail.model_fingerprint,
                   scales=[ScaleModel(scale=SCALE_NAMES.get(s.name, s.name), phi=s.phi, planned_bits=s.planned_bits,
                                      payload_bytes=s.payload_bytes) for s in detail.scales],
                   result=ResultModel.from_pb(detail.result))


class BucketModel(BaseModel):
    """Aggregates of the frames captured in ``[start, start + bucket)``."""

    start: datetime
    frames: int
    errors: int
    detections: dict[str, int] = Field(description="detections per category", examples=[{"person": 12, "car": 3}])
    latency_ms_mean: float | None = Field(description="capture-to-result latency of answered frames")
    latency_ms_p95: float | None
    kbps: float = Field(description="received frame kilobits per second of the bucket")
    mean_frame_bytes: float

    @classmethod
    def of(cls, bucket: Bucket) -> BucketModel:
        return cls(start=_datetime(bucket.start_us), frames=bucket.frames, errors=bucket.errors,
                   detections=bucket.detections, latency_ms_mean=bucket.latency_ms_mean,
                   latency_ms_p95=bucket.latency_ms_p95, kbps=bucket.kbps, mean_frame_bytes=bucket.mean_frame_bytes)


class AggregatesModel(BaseModel):
    stream_id: str
    bucket_s: int = Field(examples=[60])
    buckets: list[BucketModel] = Field(description="buckets that hold frames, oldest first")


# ---------------------------------------------------------------------------------------------- helpers


def _datetime(us: int) -> datetime:
    """UTC datetime of microseconds since the epoch (clamped to what ``datetime`` holds)."""
    try:
        return EPOCH + timedelta(microseconds=us)
    except OverflowError:
        return datetime.max.replace(tzinfo=UTC) if us > 0 else datetime.min.replace(tzinfo=UTC)


def _microseconds(text: str | None, name: str) -> int | None:
    """Microseconds since the epoch of an ISO 8601 time (UTC without an offset); 400 for anything else."""
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidArgumentError(f"{name} {text[:64]!r} is not an ISO 8601 time, e.g. 2026-12-01T13:00:00Z") \
            from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - EPOCH) // timedelta(microseconds=1)


def parse_bucket(text: str) -> int:
    """``"5m"`` -> 300: an integer and a unit (s, m, h, d); :class:`InvalidArgumentError` otherwise."""
    match = re.fullmatch(r"(\d{1,6})([smhd])", text.strip())
    if match is None:
        raise InvalidArgumentError(f"bucket {text!r} must be a number and a unit s/m/h/d, e.g. 1m, 15m, 1h, 1d")
    return int(match.group(1)) * BUCKET_UNITS[match.group(2)]


def _window(since: str | None, until: str | None) -> TimeWindow:
    return TimeWindow(_microseconds(since, "since"), _microseconds(until, "until"))


def _record_model(record: FrameRecord) -> FrameDetailModel:
    """A committed record as the live feed sends it (the same shape as ``GET .../frames/{frame_id}``)."""
    summary = FrameSummary(
        stream_id=record.stream_id, frame_id=record.frame_id, device_id=record.device_id,
        capture_time_us=record.capture_time_us, receive_time_us=record.receive_time_us,
        complete_time_us=record.complete_time_us, frame_bytes=record.frame_bytes, codec=record.codec,
        tasks=list(record.tasks), detection_count=sum(len(r.detections) for r in record.result.results)
        if record.result is not None else 0, error_code=record.error_code, error_message=record.error_message)
    return FrameDetailModel.of_detail(FrameDetail(summary, record.codec_fingerprint, record.model_fingerprint,
                                                  list(record.scales), answered_result(record)))


# ----------------------------------------------------------------------------------------------- router


def create_analytics_router(recorder: FrameRecorder | None, *, route_class: type[APIRoute] = APIRoute,
                            dependencies: Sequence[Depends] = ()) -> APIRouter:
    """The ``/v1`` analytics routes over ``recorder``'s store; with no store (``store=false``) every route
    answers 422 saying so.

    Args:
        recorder: the service's store link, None when the store is off.
        route_class: the app's route class (its one error mapper).
        dependencies: dependencies of every route (authentication).
    """
    router = APIRouter(prefix="/v1", route_class=route_class, dependencies=list(dependencies), tags=["analytics"])
    analytics = Analytics(recorder.store) if recorder is not None else None

    async def query(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        if analytics is None:
            raise UnsupportedError(NO_STORE)
        return await asyncio.to_thread(fn, analytics, *args, **kwargs)

    @router.get("/streams", response_model=StreamPage, responses=ANALYTICS_ERRORS)
    async def streams(
        limit: int = Query(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT, description="streams per page"),
        cursor: str | None = Query(None, max_length=1024, description="next_cursor of the previous page"),
    ) -> StreamPage:
        """Every stream with stored frames, by stream id."""
        page = await query(Analytics.streams, limit, cursor)
        return StreamPage(items=[StreamModel.of(s) for s in page.items], next_cursor=page.next_cursor)

    @router.get("/streams/{stream_id}", response_model=StreamModel, responses=ANALYTICS_ERRORS)
    async def stream(stream_id: str = StreamId) -> StreamModel:
        """One stream's summary; 404 when it has no stored frames."""
        return StreamModel.of(await query(Analytics.stream, stream_id))

    @router.get("/streams/{stream_id}/frames", response_model=FramePage, responses=ANALYTICS_ERRORS)
    async def frames(
        stream_id: str = StreamId,
        limit: int = Query(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT, description="frames per page"),
        cursor: str | None = Query(None, max_length=1024, description="next_cursor of the previous page"),
        since: str | None = Query(None, max_length=64, description="capture time from (inclusive), ISO 8601",
                                  examples=["2026-12-01T13:00:00Z"], json_schema_extra=DATE_TIME),
        until: str | None = Query(None, max_length=64, description="capture time until (exclusive), ISO 8601",
                                  json_schema_extra=DATE_TIME),
        task: Task | None = Query(None, description="only frames with a detection of this task"),
        category: str | None = Query(None, max_length=128, description="only frames with a detection of this "
                                     "category", examples=["person"]),
    ) -> FramePage:
        """A stream's frames, newest capture first; filters combine (a detection of ``task`` *and* ``category``)."""
        page = await query(Analytics.frames, stream_id, limit, cursor, _window(since, until), task, category)
        return FramePage(items=[FrameModel.of(f) for f in page.items], next_cursor=page.next_cursor)

    @router.get("/streams/{stream_id}/frames/{frame_id}", response_model=FrameDetailModel,
                response_model_exclude_none=True, responses=ANALYTICS_ERRORS)
    async def frame(stream_id: str = StreamId,
                    frame_id: int = Path(..., ge=0, le=MAX_STORED_FRAME_ID, examples=[42])) -> FrameDetailModel:
        """One frame in full: every task's detections (masks as COCO RLE), scales and fingerprints."""
        return FrameDetailModel.of_detail(await query(Analytics.frame, stream_id, frame_id))

    @router.get("/streams/{stream_id}/aggregates", response_model=AggregatesModel, responses=ANALYTICS_ERRORS)
    async def aggregates(
        stream_id: str = StreamId,
        bucket: str = Query("1m", max_length=16, description="bucket width, 1m .. 1d (s, m, h, d)",
                            examples=["15m"]),
        since: str | None = Query(None, max_length=64, description="capture time from (inclusive), ISO 8601",
                                  json_schema_extra=DATE_TIME),
        until: str | None = Query(None, max_length=64, description="capture time until (exclusive), ISO 8601",
                                  json_schema_extra=DATE_TIME),
        task: Task | None = Query(None, description="count only this task's detections"),
    ) -> AggregatesModel:
        """Per time bucket: frames, errors, detections per category, latency mean and p95, kbps, bytes."""
        bucket_s = parse_bucket(bucket)
        buckets = await query(Analytics.aggregates, stream_id, bucket_s, _window(since, until), task)
        return AggregatesModel(stream_id=stream_id, bucket_s=bucket_s, buckets=[BucketModel.of(b) for b in buckets])

    @router.get("/streams/{stream_id}/events", response_class=EventSourceResponse, responses=ANALYTICS_ERRORS)
    async def events(stream_id: str = StreamId) -> AsyncIterator[ServerSentEvent]:
        """Server-sent events: one ``frame`` event per frame of the stream as it is stored (the shape of
        ``GET .../frames/{frame_id}``, id = frame id); a comment every 15 s keeps idle connections open.
        Without a store, one ``error`` event says so and the stream ends."""
        if recorder is None:
            yield ServerSentEvent(event="error", data=ErrorBody(code="UNIMPLEMENTED", message=NO_STORE).model_dump())
            return
        subscription = recorder.feed.subscribe(stream_id)
        try:
            while True:
                try:
                    record = await asyncio.wait_for(subscription.queue.get(), KEEPALIVE_S)
                except TimeoutError:
                    yield ServerSentEvent(comment="keep-alive")
                    continue
                yield ServerSentEvent(data=_record_model(record).model_dump(mode="json", exclude_none=True),
                                      event="frame", id=str(record.frame_id))
        finally:
            recorder.feed.unsubscribe(subscription)

    return router
