"""A pipelined map over an async stream: read ahead a bounded number of items, yield results as they finish.

::

    requests ──> reader: at most `limit` items in flight ──> handle(item) tasks ──> results in completion order

A slot frees when its result has been taken by the consumer (for a gRPC stream: written to the call), so at
most ``limit`` items and results are held per stream, however fast the client sends. One slow item delays
only itself. When the consumer stops (the call ends or is cancelled), the reader and every task still in
flight are cancelled.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


async def as_completed_map(items: AsyncIterable[T], handle: Callable[[T], Awaitable[R]], limit: int,
                           ) -> AsyncIterator[R]:
    """Yield ``await handle(item)`` for every item, in completion order, with at most ``limit`` in flight.

    Raises:
        ValueError: ``limit`` < 1.
        Exception: what reading ``items`` raised, once every item read before it has been answered; an
            exception of ``handle`` propagates as soon as its task finishes (``handle`` should not raise).
    """
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    slots = asyncio.Semaphore(limit)
    finished: asyncio.Queue[asyncio.Task[R] | None] = asyncio.Queue()
    running: set[asyncio.Task[R]] = set()

    async def read() -> None:
        iterator = aiter(items)
        try:
            while True:
                await slots.acquire()  # before reading: at most `limit` items are ever held
                try:
                    item = await anext(iterator)
                except StopAsyncIteration:
                    return
                task = asyncio.ensure_future(handle(item))
                running.add(task)
                task.add_done_callback(finished.put_nowait)
        finally:
            finished.put_nowait(None)  # no more items

    reader = asyncio.create_task(read())
    try:
        reading = True
        while reading or running:
            task = await finished.get()
            if task is None:
                reading = False
                continue
            running.discard(task)
            result = task.result()
            yield result
            slots.release()
        reader.result()  # a failed read (the client's stream broke) surfaces here
    finally:
        reader.cancel()
        for task in running:
            task.cancel()
