"""The link side of store-and-forward: spooled frames out over a gRPC Stream, results back, reconnecting.

::

    Spool ──take (live first)──> window of in-flight frames ──Stream──> cloud
      ^                                                                   │
      └──────────── ack <── on_result (results line written) <── Result ──┘

One thread owns the link. A dropped connection, a frame unanswered within ``frame_timeout_s`` (the call is
cancelled) or a server that is not SERVING ends the current call; the frames in flight stay in the spool
and go out again, with their ids, on the next call, opened after an exponential backoff with full jitter.
Results answered with a retryable status (``UNAVAILABLE``, ``DEADLINE_EXCEEDED``: the cloud is starting or
its queue timed out) are sent again too; any other result, errors included, is final.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from ..shared.wire import pb
from .client import Client, LinkError
from .spool import Spool

RETRYABLE_RESULT_CODES = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED"})
TICK_S = 0.1

log = logging.getLogger(__name__)

OnResult = Callable[[dict[str, Any], pb.Result, float], None]
"""Called with each final result: the frame's spooled record, the result and its round trip in ms; must make
the frame's results line durable before it returns."""


class Forwarder:
    """Drains a :class:`Spool` into a cloud (see the module docstring).

    Args:
        client: the connection.
        spool: where frames wait.
        on_result: records a final result; the frame is acknowledged in the spool after it returns.
        window: frames in flight at once on a call.
        frame_timeout_s: per-frame deadline: a frame unanswered this long ends the call.
        backoff_s, max_backoff_s: reconnect delay bounds; the n-th consecutive failure waits a uniform draw
            from ``[0, min(max_backoff_s, backoff_s * 2**n)]``.
        seed: for the jitter (None: random).

    Attributes:
        link_kbps: throughput of answered frames, an exponentially weighted mean over about 2 s.
        reconnects: calls opened after a failure.
        sent: frames handed to gRPC (resends included).
    """

    def __init__(self, client: Client, spool: Spool, on_result: OnResult, *, window: int = 4,
                 frame_timeout_s: float = 60.0, backoff_s: float = 0.2, max_backoff_s: float = 5.0,
                 seed: int | None = None) -> None:
        if window < 1 or not frame_timeout_s > 0 or backoff_s < 0 or max_backoff_s < backoff_s:
            raise ValueError(f"bad forwarder settings: window {window}, frame_timeout_s {frame_timeout_s}, "
                             f"backoff {backoff_s}..{max_backoff_s}")
        self.client, self.spool, self.on_result = client, spool, on_result
        self.window, self.frame_timeout_s = window, frame_timeout_s
        self.backoff_s, self.max_backoff_s = backoff_s, max_backoff_s
        self._rng = random.Random(seed)
        self._cond = threading.Condition()
        self._in_flight: dict[int, tuple[float, int, dict[str, Any]]] = {}  # frame id -> (sent at, bytes, record)
        self._hold_until: dict[int, float] = {}  # frame id -> not before (a retryable result)
        self._finishing = False  # send what is spooled, then close the call
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._call: grpc.Future | None = None
        self.link_kbps = 0.0
        self._rate_at = time.monotonic()
        self.reconnects = 0
        self.sent = 0
        self.last_error: str | None = None

    # -- control -------------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="fpnlink-forwarder", daemon=True)
        self._thread.start()

    def notify(self) -> None:
        """A frame was spooled."""
        with self._cond:
            self._cond.notify_all()

    def finish(self) -> None:
        """Send everything spooled, then end the link thread (see :meth:`join`)."""
        with self._cond:
            self._finishing = True
            self._cond.notify_all()

    def join(self, timeout_s: float | None = None) -> bool:
        """Wait for the link thread; True once it has ended."""
        assert self._thread is not None
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def stop(self) -> None:
        """Stop now; frames in flight stay spooled."""
        self._stopped.set()
        with self._cond:
            self._cond.notify_all()
            call = self._call
        if call is not None:
            call.cancel()
        if self._thread is not None:
            self._thread.join(5.0)

    @property
    def in_flight(self) -> int:
        with self._cond:
            return len(self._in_flight)

    # -- the link thread -----------------------------------------------------------------------------

    def _run(self) -> None:
        failures = 0
        while not self._stopped.is_set():
            if self._drained():
                return
            try:
                answered = self._call_once()
                failures = 0 if answered else failures + 1
                if self._drained():
                    return
            except (grpc.RpcError, LinkError) as exc:
                failures += 1
                message = exc.details() if isinstance(exc, grpc.RpcError) else str(exc)
                code = exc.code() if isinstance(exc, grpc.RpcError) else exc.code
                self.last_error = f"{getattr(code, 'name', code)}: {message}"
                if not self._stopped.is_set():  # once per outage; the retries log at debug level
                    log.log(logging.WARNING if failures == 1 else logging.DEBUG,
                            "link to %s down (%s); %d frame(s) stay spooled, reconnecting", self.client.target,
                            self.last_error, self.spool.depth()[0])
            with self._cond:
                self._in_flight.clear()
                self._call = None
            delay = self._rng.uniform(0, min(self.max_backoff_s, self.backoff_s * 2 ** min(failures, 30)))
            self._stopped.wait(delay)
            self.reconnects += 1

    def _drained(self) -> bool:
        with self._cond:
            return self._finishing and not self._in_flight and self.spool.depth()[0] == 0

    def _call_once(self) -> bool:
        """One Stream call until it ends; True when at least one result arrived."""
        self.client.wait_ready(min(self.max_backoff_s, 5.0))
        call = self.client.open_stream(self._requests())
        with self._cond:
            self._call = call
        answered = False
        for result in call:
            answered = True
            self._handle(result)
        return answered

    def _requests(self) -> Iterator[pb.FeatureFrame]:
        """Frames for the current call (runs in gRPC's sending thread)."""
        while True:
            with self._cond:
                while True:
                    if self._stopped.is_set():
                        return
                    now = time.monotonic()
                    if self._in_flight:
                        oldest = min(entry[0] for entry in self._in_flight.values())
                        if now - oldest > self.frame_timeout_s:
                            log.warning("a frame got no result within %.0f s; reconnecting", self.frame_timeout_s)
                            if self._call is not None:
                                self._call.cancel()
                            return
                    item = None
                    if len(self._in_flight) < self.window:
                        held = {i for i, t in self._hold_until.items() if t > now}
                        item = self.spool.take(set(self._in_flight) | held)
                    if item is not None:
                        self._in_flight[item.frame_id] = (now, len(item.frame), item.record)
                        self._hold_until.pop(item.frame_id, None)
                        break
                    if self._finishing and not self._in_flight and self.spool.depth()[0] == 0:
                        return  # half-close: the call ends once the server has answered
                    self._cond.wait(TICK_S)
            self.sent += 1
            yield pb.FeatureFrame.FromString(item.frame)

    def _handle(self, result: pb.Result) -> None:
        now = time.monotonic()
        with self._cond:
            sent = self._in_flight.get(result.frame_id)
        if sent is None:
            log.info("frame %d answered again (a resend); kept once", result.frame_id)
            return
        sent_at, size, record = sent
        if result.HasField("error") and result.error.code in RETRYABLE_RESULT_CODES:
            log.info("frame %d: %s (%s); sent again later", result.frame_id, result.error.code, result.error.message)
            with self._cond:
                self._hold_until[result.frame_id] = now + max(self.backoff_s, 0.5)
                del self._in_flight[result.frame_id]
                self._cond.notify_all()
            return
        self.on_result(record, result, (now - sent_at) * 1e3)
        self.spool.ack([result.frame_id])  # only then out of flight: take() must not hand it out in between
        self._observe(size, now)
        with self._cond:
            self._in_flight.pop(result.frame_id, None)
            self._cond.notify_all()

    def _observe(self, size: int, now: float) -> None:
        elapsed = max(now - self._rate_at, 1e-3)
        self._rate_at = now
        instant = 8 * size / 1e3 / elapsed
        weight = min(elapsed / 2.0, 1.0)
        self.link_kbps += weight * (instant - self.link_kbps)
