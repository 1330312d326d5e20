"""Every Prometheus object of the cloud service, on a dedicated registry, updated through record methods.

The transports call the ``record_*`` methods after each request; a failing metric update is logged and
swallowed, never failing the request. Each :class:`CloudMetrics` owns its own ``CollectorRegistry``, so
several servers can live in one process (tests, the in-process demo).

Names follow Prometheus conventions: base units in the name (``_seconds``, ``_bytes``), ``_total`` on
counters, a histogram for every size and latency.

==========================================  =========  ================  =========================================
metric                                      type       labels            what
==========================================  =========  ================  =========================================
``fpnlink_cloud_frames_total``              counter    transport, codec  frames answered with a computed result
``fpnlink_cloud_frame_bytes_total``         counter    transport, codec  serialized bytes of those frames
``fpnlink_cloud_frame_size_bytes``          histogram  transport         serialized frame size
``fpnlink_cloud_images_total``              counter    transport         images analyzed (REST ``/v1/analyze``)
``fpnlink_cloud_stage_seconds``             histogram  stage             decode, backbone, heads, total
``fpnlink_cloud_capture_to_result_seconds`` histogram  transport         result time minus ``capture_time_us``
                                                                         (edge clock; skewed clocks bias it)
``fpnlink_cloud_queue_wait_seconds``        histogram                    time a frame waits for an engine worker
``fpnlink_cloud_queue_depth``               gauge                        frames waiting for or on a worker
``fpnlink_cloud_batch_size``                histogram                    frames per engine batch (exact to 16)
``fpnlink_cloud_errors_total``              counter    transport, code   failed requests by gRPC status name
``fpnlink_cloud_auth_failures_total``       counter    transport, code   calls refused: UNAUTHENTICATED or
                                                                         PERMISSION_DENIED
``fpnlink_cloud_scale_phi``                 gauge      scale             rate parameter of the last frame
``fpnlink_cloud_scale_planned_bytes``       histogram  scale             edge's planned bytes (when planned)
``fpnlink_cloud_scale_payload_bytes``       histogram  scale             payload bytes per scale
``fpnlink_cloud_ready``                     gauge                        1 once the engine is warmed up
``fpnlink_cloud_stored_frames_total``       counter                      frames committed to the results store
``fpnlink_cloud_frames_from_store_total``   counter                      resent frames answered from the store
``fpnlink_cloud_store_queue_depth``         gauge                        frames waiting for their store commit
``fpnlink_cloud_store_queue_full_total``    counter                      frames refused: store queue full
``fpnlink_cloud_store_failures_total``      counter                      store transactions that failed
``fpnlink_cloud_store_write_seconds``       histogram                    store transaction time per batch
``fpnlink_cloud_store_batch_size``          histogram                    frames per store transaction
``fpnlink_cloud_store_pruned_frames_total`` counter                      frames deleted by retention
==========================================  =========  ================  =========================================
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from typing import ParamSpec

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from fpnlink.shared.model.split import SCALE_NAMES
from fpnlink.shared.wire import pb

logger = logging.getLogger(__name__)

P = ParamSpec("P")
NAMESPACE = "fpnlink_cloud"
BYTE_BUCKETS = tuple(float(4**k * 1024) for k in range(10))  # 1 KiB .. 256 MiB
SCALE_BYTE_BUCKETS = tuple(float(4**k * 64) for k in range(12))  # 64 B .. 256 MiB
SECOND_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = tuple(float(n) for n in (*range(1, 17), 24, 32, 48, 64, 128, 256))


def _never_raise(method: Callable[P, None]) -> Callable[P, None]:
    """A metric update that fails is logged, never propagated to the request."""

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> None:
        try:
            method(*args, **kwargs)
        except Exception:  # an observer must not fail the request
            logger.exception("metric update %s failed", method.__name__)

    return wrapper


class CloudMetrics:
    """The service's metric objects and the functions that record into them.

    Args:
        registry: where the metrics live; a fresh ``CollectorRegistry`` when omitted.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        kw = {"namespace": NAMESPACE, "registry": self.registry}
        self.frames = Counter("frames", "Frames answered with a result.", ["transport", "codec"], **kw)
        self.frame_bytes_total = Counter("frame_bytes", "Serialized frame bytes received (answered frames).",
                                         ["transport", "codec"], **kw)
        self.frame_size = Histogram("frame_size_bytes", "Serialized frame size.", ["transport"],
                                    buckets=BYTE_BUCKETS, **kw)
        self.images = Counter("images", "Images analyzed without coding.", ["transport"], **kw)
        self.stage_seconds = Histogram("stage_seconds", "Cloud stage latency.", ["stage"], buckets=SECOND_BUCKETS,
                                       **kw)
        self.capture_to_result = Histogram("capture_to_result_seconds",
                                           "Result time minus the frame's capture time (edge clock).",
                                           ["transport"], buckets=SECOND_BUCKETS, **kw)
        self.queue_wait = Histogram("queue_wait_seconds", "Time a frame waits for an engine worker.",
                                    buckets=SECOND_BUCKETS, **kw)
        self.queue_depth = Gauge("queue_depth", "Frames waiting for or on an engine worker.", **kw)
        self.batch_size = Histogram("batch_size", "Frames per engine batch.", buckets=BATCH_BUCKETS, **kw)
        self.errors = Counter("errors", "Failed requests by gRPC status code name.", ["transport", "code"], **kw)
        self.auth_failures = Counter("auth_failures", "Calls refused for missing or insufficient credentials.",
                                     ["transport", "code"], **kw)
        self.scale_phi = Gauge("scale_phi", "Rate parameter phi of the last frame, per FPN scale.", ["scale"], **kw)
        self.scale_planned = Histogram("scale_planned_bytes", "Bytes the edge planned per scale (when planned).",
                                       ["scale"], buckets=SCALE_BYTE_BUCKETS, **kw)
        self.scale_payload = Histogram("scale_payload_bytes", "Payload bytes per scale.", ["scale"],
                                       buckets=SCALE_BYTE_BUCKETS, **kw)
        self.ready = Gauge("ready", "1 once the engine is loaded and warmed up.", **kw)
        self.stored_frames = Counter("stored_frames", "Frames committed to the results store.", **kw)
        self.frames_from_store = Counter("frames_from_store", "Resent frames answered from the results store "
                                         "without running the heads.", **kw)
        self.store_queue_depth = Gauge("store_queue_depth", "Frames waiting for their store commit.", **kw)
        self.store_queue_full = Counter("store_queue_full", "Frames refused because the store queue was full.", **kw)
        self.store_failures = Counter("store_failures", "Store transactions that failed.", **kw)
        self.store_write_seconds = Histogram("store_write_seconds", "Store transaction time per batch.",
                                             buckets=SECOND_BUCKETS, **kw)
        self.store_batch_size = Histogram("store_batch_size", "Frames per store transaction.",
                                          buckets=BATCH_BUCKETS, **kw)
        self.store_pruned_frames = Counter("store_pruned_frames", "Frames deleted by the retention settings.", **kw)

    @_never_raise
    def record_frame(self, transport: str, frame: pb.FeatureFrame, result: pb.Result,
                     now_us: int | None = None) -> None:
        """An answered frame: counts, bytes, stage latencies, capture-to-result latency and per-scale rate.

        Args:
            now_us: the result's wall-clock time in microseconds (now when None); a frame without a capture
                time, or captured "after" it (clock skew), adds no capture-to-result sample.
        """
        self.frames.labels(transport, frame.codec).inc()
        self.frame_bytes_total.labels(transport, frame.codec).inc(result.frame_bytes)
        self.frame_size.labels(transport).observe(result.frame_bytes)
        self._record_stages(result)
        now_us = time.time_ns() // 1000 if now_us is None else now_us
        if 0 < frame.capture_time_us <= now_us:
            self.capture_to_result.labels(transport).observe((now_us - frame.capture_time_us) / 1e6)
        for scale in frame.scales:
            label = SCALE_NAMES.get(scale.name, scale.name)
            self.scale_phi.labels(label).set(scale.phi)
            self.scale_payload.labels(label).observe(len(scale.payload))
            if scale.planned_bits:
                self.scale_planned.labels(label).observe(scale.planned_bits / 8)

    @_never_raise
    def record_image(self, transport: str, result: pb.Result) -> None:
        """An image analyzed without coding."""
        self.images.labels(transport).inc()
        self._record_stages(result)

    @_never_raise
    def record_error(self, transport: str, code: str) -> None:
        """A failed request, by gRPC status code name (e.g. ``INVALID_ARGUMENT``)."""
        self.errors.labels(transport, code).inc()

    @_never_raise
    def record_auth_failure(self, transport: str, code: str) -> None:
        """A call refused by authentication (``UNAUTHENTICATED``) or authorization (``PERMISSION_DENIED``)."""
        self.auth_failures.labels(transport, code).inc()

    @_never_raise
    def record_queue_wait(self, seconds: float) -> None:
        """How long a frame waited before a worker took it."""
        self.queue_wait.observe(seconds)

    @_never_raise
    def record_batch(self, size: int, waits_s: list[float]) -> None:
        """A batch handed to the engine: its size, and how long each of its frames waited in the queue."""
        self.batch_size.observe(size)
        for seconds in waits_s:
            self.queue_wait.observe(seconds)

    @_never_raise
    def set_queue_depth(self, depth: int) -> None:
        self.queue_depth.set(depth)

    @_never_raise
    def set_ready(self, ready: bool) -> None:
        self.ready.set(1.0 if ready else 0.0)

    def watch_store_queue(self, depth: Callable[[], int]) -> None:
        """Read the store queue's depth from ``depth`` at every scrape."""
        self.store_queue_depth.set_function(depth)

    @_never_raise
    def record_store_batch(self, frames: int, seconds: float) -> None:
        """A committed store transaction of ``frames`` frames."""
        self.stored_frames.inc(frames)
        self.store_batch_size.observe(frames)
        self.store_write_seconds.observe(seconds)

    @_never_raise
    def record_store_full(self) -> None:
        self.store_queue_full.inc()

    @_never_raise
    def record_store_failure(self) -> None:
        self.store_failures.inc()

    @_never_raise
    def record_store_pruned(self, frames: int) -> None:
        self.store_pruned_frames.inc(frames)

    @_never_raise
    def record_frame_from_store(self) -> None:
        """A resent frame answered from the store (the heads did not run)."""
        self.frames_from_store.inc()

    def render(self) -> tuple[bytes, str]:
        """The registry in Prometheus text format, and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def _record_stages(self, result: pb.Result) -> None:
        for stage, ms in result.stage_ms.items():
            self.stage_seconds.labels(stage).observe(ms / 1e3)
