"""as_completed_map: bounded read-ahead, completion order, one slow item delays only itself."""

from __future__ import annotations

import asyncio

import pytest

from fpnlink.cloud.pipeline import as_completed_map

SETTLE = 50
"""Event-loop turns after which every runnable task has run (no I/O, no timers involved)."""


async def settle() -> None:
    for _ in range(SETTLE):
        await asyncio.sleep(0)


def test_reads_at_most_limit_items_and_answers_in_completion_order():
    async def scenario() -> tuple[list[int], list[int], list[int]]:
        pulled: list[int] = []
        slow = asyncio.Event()

        async def items():
            for i in range(5):
                pulled.append(i)
                yield i

        async def handle(i: int) -> int:
            if i == 0:
                await slow.wait()  # the first item is slow until released
            return i

        results = as_completed_map(items(), handle, 2)
        first = [await anext(results)]  # item 1 finishes first
        await settle()
        held = list(pulled)  # item 0 is running, item 1's result is not consumed yet: no third read
        slow.set()
        rest = [r async for r in results]
        return first, held, first + rest

    first, held, everything = asyncio.run(scenario())
    assert first == [1]
    assert held == [0, 1]
    assert sorted(everything) == [0, 1, 2, 3, 4]


def test_limit_must_be_positive():
    async def scenario() -> None:
        async def items():
            yield 1

        async def handle(i: int) -> int:
            return i

        [r async for r in as_completed_map(items(), handle, 0)]

    with pytest.raises(ValueError, match="limit"):
        asyncio.run(scenario())
