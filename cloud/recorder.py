"""The service's link to the results store: a stored-result lookup before the engine, a commit after it.

::

    frame ─> lookup (stored? answer it, count it: no heads) ─> engine ─> save (wait for the commit) ─> OK
                                                                  └─ failure ─> offered to the writer (not awaited)

A frame answered OK has been committed: when the store cannot take it (unreachable, queue full, commit
timeout) the frame is answered UNAVAILABLE instead, so the edge resends it. Failures are stored when the frame
parsed and its ids can key it, except UNAVAILABLE ones, which say nothing about the frame.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import grpc

from fpnlink.shared.errors import NotReadyError
from fpnlink.shared.wire import pb

from .errors import status_for
from .store import ResultFeed, ResultStore, Retention, StoreUnavailableError, StoreWriter, frame_record
from .store.database import sqlite_url
from .store.records import check_storable, storage_problem

if TYPE_CHECKING:
    from .metrics import CloudMetrics
    from .backend import FrameOutcome
    from .settings import CloudSettings

logger = logging.getLogger(__name__)

MAX_STORED_MESSAGE = 2000


def now_us() -> int:
    """Wall-clock time in microseconds since the Unix epoch."""
    return time.time_ns() // 1000


class FrameRecorder:
    """Results store, its writer and the live feed, as the service uses them.

    Args:
        store: the database.
        writer: the batching writer over ``store`` (started by :meth:`open`).
        feed: where committed frames go live.
        metrics: the service's metrics (frames served from the store).
        commit_timeout_s: how long a frame waits for its commit before it is answered UNAVAILABLE.
    """

    def __init__(self, store: ResultStore, writer: StoreWriter, feed: ResultFeed, metrics: CloudMetrics,
                 commit_timeout_s: float) -> None:
        self.store = store
        self.writer = writer
        self.feed = feed
        self.metrics = metrics
        self.commit_timeout_s = commit_timeout_s
        self.opened = False

    @classmethod
    def from_settings(cls, settings: CloudSettings, metrics: CloudMetrics) -> FrameRecorder:
        """The recorder the settings describe (nothing is connected until :meth:`open`)."""
        store = ResultStore(settings.database_url or sqlite_url(settings.database_path), settings.store_timeout_s)
        feed = ResultFeed()
        writer = StoreWriter(store, queue_size=settings.store_queue_size, batch_size=settings.store_batch_size,
                             retention=Retention(settings.retention_max_age_s, settings.retention_max_frames),
                             observer=metrics, on_stored=feed.publish)
        metrics.watch_store_queue(lambda: writer.depth)
        return cls(store, writer, feed, metrics, settings.store_timeout_s)

    def open(self) -> None:
        """Migrate the schema and start the writer (blocking; :class:`StoreUnavailableError` when unreachable)."""
        self.store.open()
        self.writer.start()
        self.opened = True
        logger.info("results store: %s (%s)", self.store.engine.url.render_as_string(hide_password=True),
                    self.store.backend)

    def close(self) -> None:
        """Write what is queued, stop the writer, close the connections."""
        self.writer.stop()
        self.store.close()

    def watch_readiness(self, changed: Callable[[], None]) -> None:
        """Call ``changed()`` whenever :meth:`readiness` flips (from the thread that noticed: the writer's
        ping or commit, or a failed lookup); the caller re-reads readiness itself."""
        self.writer.on_availability = lambda available, error: changed()

    def readiness(self) -> tuple[bool, str]:
        if not self.writer.available:
            return False, f"results store unavailable: {self.writer.last_error}"
        return True, f"results store {self.store.backend} reachable"

    def lookup(self, frame: pb.FeatureFrame) -> pb.Result | None:
        """The stored Result of a frame answered before (counted as served from the store), else None.

        Raises:
            BadFrameError: a frame id the store cannot hold.
            NotReadyError: the store is not open yet (the service is setting up).
            StoreUnavailableError: the database does not answer.
        """
        if not self.opened:
            raise NotReadyError("the results store is still opening; retry shortly")
        check_storable(frame)
        try:
            result = self.store.lookup(frame.stream_id, frame.frame_id)
        except StoreUnavailableError as exc:
            self.writer.mark_unavailable(str(exc))
            raise
        if result is not None:
            self.metrics.record_frame_from_store()
        return result

    async def record(self, outcome: FrameOutcome, receive_time_us: int) -> FrameOutcome:
        """Store ``outcome``: a result is committed before it is returned (else UNAVAILABLE), a failure is
        queued. Returns the outcome to answer."""
        frame = outcome.frame
        if frame is None or outcome.from_store:
            return outcome
        complete_time_us = now_us()
        if outcome.error is None:
            record = frame_record(frame, receive_time_us=receive_time_us, complete_time_us=complete_time_us,
                                  frame_bytes=outcome.frame_bytes, result=outcome.result, device_id=outcome.device_id)
            try:
                await self.writer.save(record, self.commit_timeout_s)
            except StoreUnavailableError as exc:
                return dataclasses.replace(outcome, result=None, error=exc)
            return outcome
        code = status_for(outcome.error)[0]
        if code != grpc.StatusCode.UNAVAILABLE and storage_problem(frame) is None:
            message = str(outcome.error)[:MAX_STORED_MESSAGE] or type(outcome.error).__name__
            self.writer.offer(frame_record(frame, receive_time_us=receive_time_us, complete_time_us=complete_time_us,
                                           frame_bytes=outcome.frame_bytes, error=(code.name, message),
                                           device_id=outcome.device_id))
        return outcome
