"""Dynamic batching: one bounded queue for the frames of every stream, run in batches of equal keys.

::

    submit(key, item) ──> queue (at most max_queue items; full: OverloadedError with a retry hint)
                            │  grouped by key (the engine's batch_key: task set + network-input size)
                            ▼
    a group runs when it holds max_batch_size items, or when its oldest item has waited max_delay_s,
    and a worker is free (at most ``workers`` batches at once) ──> run_batch(items) in the executor
                            │
    an item still queued deadline_s after it arrived gets QueueTimeoutError (DEADLINE_EXCEEDED)

The batcher lives on one asyncio loop (the service's); only ``run_batch`` runs in worker threads. A caller
that goes away (its task cancelled) takes its item out of the queue.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from fpnlink.shared.errors import NotReadyError, OverloadedError, QueueTimeoutError

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")
BatchObserver = Callable[[int, list[float]], None]
"""Called with each batch's size and the seconds each of its items waited (metrics); must not raise."""
MIN_RETRY_S = 0.05


@dataclass(eq=False)
class _Pending(Generic[T, R]):
    item: T
    future: asyncio.Future[R]
    arrived: float
    key: Hashable


class Batcher(Generic[T, R]):
    """Groups submitted items by key and runs them in batches on a thread pool.

    Args:
        run_batch: runs items of one key in a worker thread; returns one result or exception per item.
        executor: the worker threads.
        workers: batches run at once (the executor should have as many threads).
        max_batch_size: most items per batch.
        max_delay_s: longest an item waits for more items of its key once a worker is free.
        max_queue: most items queued (not yet running) over all keys.
        deadline_s: longest an item may stay queued.
        on_batch: observer of every batch (see :data:`BatchObserver`).
    """

    def __init__(
        self,
        run_batch: Callable[[list[T]], Sequence[R | Exception]],
        executor: concurrent.futures.Executor,
        *,
        workers: int,
        max_batch_size: int,
        max_delay_s: float,
        max_queue: int,
        deadline_s: float,
        on_batch: BatchObserver | None = None,
    ) -> None:
        for name, value in (("workers", workers), ("max_batch_size", max_batch_size), ("max_queue", max_queue)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if max_delay_s < 0 or deadline_s <= 0:
            raise ValueError(f"max_delay_s must be >= 0 and deadline_s > 0, got {max_delay_s} and {deadline_s}")
        self._run_batch = run_batch
        self._executor = executor
        self._workers = workers
        self._max_batch = max_batch_size
        self._max_delay = max_delay_s
        self._max_queue = max_queue
        self._deadline = deadline_s
        self._on_batch = on_batch
        self._groups: dict[Hashable, deque[_Pending[T, R]]] = {}
        self._queued = 0
        self._busy = 0
        self._batch_s = max_delay_s  # running mean of a batch's duration, for the retry hint
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task | None = None

    @property
    def depth(self) -> int:
        """Items queued, not yet running."""
        return self._queued

    def start(self) -> None:
        """Start dispatching (on the running loop)."""
        if self._task is None:
            self._task = asyncio.create_task(self._dispatch(), name="fpnlink-batcher")

    async def close(self) -> None:
        """Stop dispatching; queued items fail with NotReadyError, running batches finish on their own."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for group in self._groups.values():
            for pending in group:
                if not pending.future.done():
                    pending.future.set_exception(NotReadyError("the service is shutting down; retry elsewhere"))
        self._groups.clear()
        self._queued = 0

    def check_capacity(self) -> None:
        """Raise OverloadedError when the queue is full (before a caller spends work on a new item)."""
        if self._queued >= self._max_queue:
            retry = self.retry_after_s()
            raise OverloadedError(f"the frame queue is full ({self._queued} frames waiting, limit {self._max_queue}); "
                                  f"retry in {round(1e3 * retry)} ms", retry)

    def retry_after_s(self) -> float:
        """The time the queue takes to drain at the recent batch rate (at least :data:`MIN_RETRY_S`)."""
        batches = self._queued / (self._max_batch * self._workers)
        return max(MIN_RETRY_S, (batches + 1) * self._batch_s)

    async def submit(self, key: Hashable, item: T) -> R:
        """Queue ``item`` under ``key`` and wait for its result.

        Raises:
            OverloadedError: the queue is full.
            QueueTimeoutError: the item stayed queued longer than ``deadline_s``.
            NotReadyError: the batcher closed before the item ran.
            Exception: what ``run_batch`` returned for this item.
        """
        if self._task is None:
            raise NotReadyError("the batcher is not started")
        self.check_capacity()
        loop = asyncio.get_running_loop()
        pending: _Pending[T, R] = _Pending(item, loop.create_future(), loop.time(), key)
        self._groups.setdefault(key, deque()).append(pending)
        self._queued += 1
        self._wakeup.set()
        try:
            return await pending.future
        except asyncio.CancelledError:
            self._discard(pending)
            raise

    # ------------------------------------------------------------------------------------------ dispatch

    def _discard(self, pending: _Pending[T, R]) -> None:
        group = self._groups.get(pending.key)
        if group is not None and pending in group:
            group.remove(pending)
            self._queued -= 1
            if not group:
                del self._groups[pending.key]

    async def _dispatch(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            self._expire(now)
            while self._busy < self._workers:
                batch = self._take(now)
                if batch is None:
                    break
                self._launch(batch, now)
            self._wakeup.clear()
            timeout = self._next_event(now)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout)

    def _expire(self, now: float) -> None:
        for key in list(self._groups):
            group = self._groups[key]
            while group and now - group[0].arrived >= self._deadline:
                pending = group.popleft()
                self._queued -= 1
                if not pending.future.done():
                    pending.future.set_exception(QueueTimeoutError(
                        f"the frame waited {now - pending.arrived:.2f} s in the queue, over the "
                        f"{self._deadline:g} s queue deadline: the server is overloaded"))
            if not group:
                del self._groups[key]

    def _take(self, now: float) -> list[_Pending[T, R]] | None:
        """The batch to run next: of the groups that are full or whose oldest item waited max_delay_s, the
        one with the oldest item."""
        ready = [group for group in self._groups.values()
                 if len(group) >= self._max_batch or now - group[0].arrived >= self._max_delay]
        if not ready:
            return None
        group = min(ready, key=lambda g: g[0].arrived)
        batch = [group.popleft() for _ in range(min(self._max_batch, len(group)))]
        self._queued -= len(batch)
        if not group:
            del self._groups[batch[0].key]
        return batch

    def _next_event(self, now: float) -> float | None:
        """Seconds until an item expires or (with a free worker) a group's delay ends; None: nothing queued."""
        times = [group[0].arrived + self._deadline for group in self._groups.values()]
        if self._busy < self._workers:
            times += [group[0].arrived + self._max_delay for group in self._groups.values()]
        return max(0.0, min(times) - now) if times else None

    def _launch(self, batch: list[_Pending[T, R]], now: float) -> None:
        self._busy += 1
        if self._on_batch is not None:
            self._on_batch(len(batch), [now - p.arrived for p in batch])
        loop = asyncio.get_running_loop()
        running = loop.run_in_executor(self._executor, self._run_batch, [p.item for p in batch])
        running.add_done_callback(functools.partial(self._finish, batch, loop.time()))

    def _finish(self, batch: list[_Pending[T, R]], started: float, running: asyncio.Future) -> None:
        self._busy -= 1
        self._batch_s = 0.8 * self._batch_s + 0.2 * (asyncio.get_running_loop().time() - started)
        self._wakeup.set()
        if running.cancelled():
            outcomes: Sequence[R | Exception] = [NotReadyError("the service is shutting down")] * len(batch)
        elif running.exception() is not None:
            outcomes = [running.exception()] * len(batch)
        else:
            outcomes = running.result()
        for pending, outcome in zip(batch, outcomes):
            if pending.future.done():  # its caller went away
                continue
            if isinstance(outcome, Exception):
                pending.future.set_exception(outcome)
            else:
                pending.future.set_result(outcome)
