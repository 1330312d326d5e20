"""Live results: committed frames fanned out to subscribers on the event loop (for server-sent events).

The writer thread calls :meth:`ResultFeed.publish` after each commit; each subscriber owns a bounded asyncio
queue on the service's loop. A subscriber that falls behind loses its oldest events (counted in
:attr:`Subscription.dropped`), never blocking the writer.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

from .records import FrameRecord

SUBSCRIBER_QUEUE = 256


class Subscription:
    """One subscriber's queue of records of one stream."""

    def __init__(self, stream_id: str, loop: asyncio.AbstractEventLoop) -> None:
        self.stream_id = stream_id
        self.loop = loop
        self.queue: asyncio.Queue[FrameRecord] = asyncio.Queue(SUBSCRIBER_QUEUE)
        self.dropped = 0

    def _put(self, record: FrameRecord) -> None:
        if self.queue.full():
            self.queue.get_nowait()
            self.dropped += 1
        self.queue.put_nowait(record)


class ResultFeed:
    """Thread-safe fan-out of committed records to per-stream subscribers."""

    def __init__(self) -> None:
        self._subscriptions: set[Subscription] = set()
        self._lock = threading.Lock()

    def subscribe(self, stream_id: str) -> Subscription:
        """A subscription on the running loop; :meth:`unsubscribe` it when done."""
        subscription = Subscription(stream_id, asyncio.get_running_loop())
        with self._lock:
            self._subscriptions.add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        with self._lock:
            self._subscriptions.discard(subscription)

    @property
    def subscribers(self) -> int:
        with self._lock:
            return len(self._subscriptions)

    def publish(self, records: Sequence[FrameRecord]) -> None:
        """Hand ``records`` to the subscribers of their streams (from any thread)."""
        with self._lock:
            subscriptions = list(self._subscriptions)
        for subscription in subscriptions:
            mine = [r for r in records if r.stream_id == subscription.stream_id]
            if mine and not subscription.loop.is_closed():
                for record in mine:
                    subscription.loop.call_soon_threadsafe(subscription._put, record)
