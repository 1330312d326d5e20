"""The store's writer: one thread that drains a bounded queue in batches, off the request path.

::

    handle_frame ──save(record)──> bounded queue ──> writer thread: up to batch_size records per transaction
         ▲                             │ full: StoreFullError (UNAVAILABLE), counted         │
         └──── future resolves once ───┴──────────── the batch is committed <──────────────────┘

A frame is answered OK only after its record is committed (no silent loss); a commit that fails resolves
its futures with :class:`StoreUnavailableError`. While idle the thread pings the database every
``ping_interval_s`` (so :attr:`StoreWriter.available` recovers when the database comes back) and prunes by the
retention settings every ``retention_interval_s``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from .errors import StoreFullError, StoreUnavailableError
from .records import FrameRecord
from .store import ResultStore

logger = logging.getLogger(__name__)

PING_INTERVAL_S = 1.0
RETENTION_INTERVAL_S = 10.0


class StoreObserver(Protocol):
    """Where the writer reports (``CloudMetrics`` implements it); a failing observer is logged, never raised."""

    def record_store_batch(self, frames: int, seconds: float) -> None: ...

    def record_store_full(self) -> None: ...

    def record_store_failure(self) -> None: ...

    def record_store_pruned(self, frames: int) -> None: ...


@dataclass(frozen=True)
class Retention:
    """How long frames are kept: at most ``max_age_s`` after receipt and/or the newest ``max_frames``."""

    max_age_s: float | None = None
    max_frames: int | None = None

    @property
    def enabled(self) -> bool:
        return self.max_age_s is not None or self.max_frames is not None


@dataclass(frozen=True)
class _Pending:
    record: FrameRecord
    done: concurrent.futures.Future[None] | None


_STOP = object()


class StoreWriter:
    """Batched, bounded, asynchronous writes into a :class:`ResultStore`.

    Args:
        store: where records go.
        queue_size: records waiting at most; beyond, :meth:`save` raises :class:`StoreFullError`.
        batch_size: records per transaction at most.
        retention: pruning rules; none by default.

    Attributes:
        available, last_error: whether the last transaction or ping succeeded, and why not.
        busy: a transaction is in progress.
        observer: metric hooks.
        on_stored: called in the writer thread with each committed batch (the live feed).
        on_availability: called with ``(available, last_error)`` each time :attr:`available` changes, in the
            thread that noticed (the writer's, or a lookup's); the service re-derives its readiness there.
        retention_interval_s: seconds between pruning passes.
    """

    def __init__(
        self,
        store: ResultStore,
        *,
        queue_size: int = 1024,
        batch_size: int = 64,
        retention: Retention = Retention(),
        observer: StoreObserver | None = None,
        on_stored: Callable[[Sequence[FrameRecord]], None] | None = None,
        on_availability: Callable[[bool, str | None], None] | None = None,
        retention_interval_s: float = RETENTION_INTERVAL_S,
    ) -> None:
        if queue_size < 1 or batch_size < 1:
            raise ValueError(f"queue_size and batch_size must be >= 1, got {queue_size} and {batch_size}")
        self.store = store
        self.batch_size = batch_size
        self.retention = retention
        self.retention_interval_s = retention_interval_s
        self.available = True
        self.last_error: str | None = None
        self.busy = False
        self._observer = observer
        self._on_stored = on_stored
        self.on_availability = on_availability
        self._queue: queue.Queue[_Pending | object] = queue.Queue(queue_size)
        self._thread: threading.Thread | None = None
        self._next_prune = 0.0

    @property
    def depth(self) -> int:
        """Records waiting to be written."""
        return self._queue.qsize()

    # ------------------------------------------------------------------------------------------ producers

    def submit(self, record: FrameRecord) -> concurrent.futures.Future[None]:
        """Queue ``record``; the future resolves once it is committed. :class:`StoreFullError` when full."""
        done: concurrent.futures.Future[None] = concurrent.futures.Future()
        try:
            self._queue.put_nowait(_Pending(record, done))
        except queue.Full:
            self._notify("record_store_full")
            raise StoreFullError(f"the results store's write queue is full ({self._queue.maxsize} frames "
                                 f"waiting): the database falls behind; retry the frame") from None
        return done

    async def save(self, record: FrameRecord, timeout_s: float) -> None:
        """Queue ``record`` and wait until it is committed (or raise :class:`StoreUnavailableError`)."""
        done = self.submit(record)
        try:
            await asyncio.wait_for(asyncio.wrap_future(done), timeout_s)
        except TimeoutError:
            raise StoreUnavailableError(f"the results store did not commit frame {record.frame_id} of stream "
                                        f"{record.stream_id!r} within {timeout_s:g} s; retry the frame") from None

    def offer(self, record: FrameRecord) -> bool:
        """Queue ``record`` without waiting for it (failed frames); False, counted, when the queue is full."""
        try:
            self._queue.put_nowait(_Pending(record, None))
        except queue.Full:
            self._notify("record_store_full")
            return False
        return True

    def mark_unavailable(self, error: str) -> None:
        """Another user of the store (a lookup) failed: not available until a ping or a commit succeeds."""
        self._set_available(False, error)

    # ------------------------------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="fpnlink-store-writer", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Write what is queued, then end the thread (waits at most ``timeout_s``)."""
        if self._thread is None:
            return
        try:
            self._queue.put(_STOP, timeout=timeout_s)
        except queue.Full:
            logger.error("store writer: queue still full after %.1f s at shutdown", timeout_s)
        self._thread.join(timeout_s)
        self._thread = None

    # ------------------------------------------------------------------------------------------ the thread

    def _run(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=PING_INTERVAL_S)
            except queue.Empty:
                self._check()
                self._maybe_prune()
                continue
            batch: list[_Pending] = []
            stopping = item is _STOP
            if not stopping:
                batch.append(item)
            while len(batch) < self.batch_size and not stopping:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stopping = True
                else:
                    batch.append(item)
            if batch:
                self._flush(batch)
            if stopping:
                return
            self._maybe_prune()

    def _flush(self, batch: list[_Pending]) -> None:
        records = [pending.record for pending in batch]
        start = time.perf_counter()
        self.busy = True
        try:
            self.store.write(records)
        except Exception as exc:  # every future learns the failure; the thread goes on
            error = exc if isinstance(exc, StoreUnavailableError) else StoreUnavailableError(
                f"cannot write to the results database: {type(exc).__name__}: {exc}")
            self._set_available(False, str(error))
            self._notify("record_store_failure")
            for pending in batch:
                if pending.done is not None:
                    pending.done.set_exception(error)
            return
        finally:
            self.busy = False
        self._set_available(True, None)
        self._notify("record_store_batch", len(records), time.perf_counter() - start)
        for pending in batch:
            if pending.done is not None:
                pending.done.set_result(None)
        if self._on_stored is not None:
            try:
                self._on_stored(records)
            except Exception:  # a feed subscriber must not stop the writer
                logger.exception("store writer: on_stored callback failed")

    def _check(self) -> None:
        try:
            self.store.ping()
        except StoreUnavailableError as exc:
            self._set_available(False, str(exc))
        else:
            self._set_available(True, None)

    def _maybe_prune(self) -> None:
        if not self.retention.enabled or time.monotonic() < self._next_prune:
            return
        self._next_prune = time.monotonic() + self.retention_interval_s
        try:
            deleted = self.store.prune(now_us=time.time_ns() // 1000, max_age_s=self.retention.max_age_s,
                                       max_frames=self.retention.max_frames)
        except StoreUnavailableError as exc:
            self._set_available(False, str(exc))
            return
        if deleted:
            self._notify("record_store_pruned", deleted)

    def _set_available(self, available: bool, error: str | None) -> None:
        changed = available != self.available
        if changed:
            (logger.info if available else logger.error)("results store %s%s", "available again" if available
                                                         else "UNAVAILABLE: ", error or "")
        self.available = available
        self.last_error = error
        if changed and self.on_availability is not None:
            try:
                self.on_availability(available, error)
            except Exception:  # a listener must not stop the writer
                logger.exception("store writer: on_availability callback failed")

    def _notify(self, method: str, *args: float) -> None:
        if self._observer is None:
            return
        try:
            getattr(self._observer, method)(*args)
        except Exception:  # an observer must not fail a write
            logger.exception("store observer %s failed", method)
