"""A loopback TCP proxy that throttles, or cuts, the link between an edge and a cloud (asyncio streams).

``LinkProxy(upstream)`` listens on an ephemeral loopback port and relays bytes both ways. ``rate_bytes_s``
caps each direction's throughput (a token bucket refilled every ``TICK_S``); ``down()`` resets every
connection and refuses new ones (they are accepted and closed at once) until ``up()``. It counts the
bytes it relayed towards the upstream, so a test can check the throttle really held.
"""

from __future__ import annotations

import asyncio
import threading
import time

TICK_S = 0.01
CHUNK = 16 * 1024


class LinkProxy:
    def __init__(self, upstream: str, rate_bytes_s: float | None = None) -> None:
        host, port = upstream.rsplit(":", 1)
        self.upstream = (host, int(port))
        self.rate_bytes_s = rate_bytes_s
        self.forwarded = 0
        self._up = True
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(ready,), daemon=True)
        self._thread.start()
        ready.wait(10)
        self.target = f"127.0.0.1:{self.port}"

    def _serve(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(asyncio.start_server(self._accept, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]
        ready.set()
        self._loop.run_forever()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self._up:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))
        await asyncio.gather(self._pipe(reader, up_writer, count=True), self._pipe(up_reader, writer, count=False),
                             return_exceptions=True)
        for w in (writer, up_writer):
            self._writers.discard(w)
            w.transport.abort()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, count: bool) -> None:
        budget, last = 0.0, time.monotonic()
        while True:
            data = await reader.read(CHUNK)
            if not data:
                writer.transport.abort()
                return
            if self.rate_bytes_s is not None:
                offset = 0
                while offset < len(data):
                    now = time.monotonic()
                    budget = min(budget + (now - last) * self.rate_bytes_s, self.rate_bytes_s * 0.05 + CHUNK)
                    last = now
                    step = min(int(budget), len(data) - offset)
                    if step <= 0:
                        await asyncio.sleep(TICK_S)
                        continue
                    writer.write(data[offset:offset + step])
                    budget -= step
                    offset += step
                    if count:
                        self.forwarded += step
                    await writer.drain()
            else:
                writer.write(data)
                if count:
                    self.forwarded += len(data)
                await writer.drain()

    def down(self) -> None:
        """Reset every open connection and refuse new ones."""
        def cut() -> None:
            self._up = False
            for writer in list(self._writers):
                writer.transport.abort()
        self._loop.call_soon_threadsafe(cut)

    def up(self) -> None:
        self._loop.call_soon_threadsafe(lambda: setattr(self, "_up", True))

    def close(self) -> None:
        self.down()
        self._loop.call_soon_threadsafe(self._server.close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
