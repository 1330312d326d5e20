"""The one streaming loop (``fpnlink-edge run`` and ``fpnlink demo``): source -> agent -> spool -> link -> results.

::

    Source ──SourceFrame──> EdgeAgent.encode ──> Spool.put ──> Forwarder ──gRPC──> cloud
                                                  │  drops          │ results
                                                  v                 v
                                         ResultLog (results.jsonl: one line per frame) <── on_row hook

The calling thread reads and encodes; the forwarder's thread owns the link. A replayable source waits for
room in the spool (it loses nothing by waiting); a live source never waits, and the spool's full policy
decides what is dropped. Every frame gets exactly one results line: ``result`` when answered, ``dropped``
when the spool let it go.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tqdm import tqdm

from ..shared.errors import FpnlinkError
from ..shared.wire import pb, result_to_dict
from .agent import EdgeAgent, EncodedFrame, RateControl
from .client import Client
from .forward import Forwarder
from .results import ResultLog
from .sources import Source, SourceFrame
from .spool import Spool, Spooled

ROOM_POLL_S = 0.05
log = logging.getLogger(__name__)

RowHook = Callable[[dict[str, Any]], None]
"""Called with every results line after it is written (printing, drawing, metrics)."""
EncodeHook = Callable[[SourceFrame, EncodedFrame], dict[str, Any]]
"""Extra fields for a frame's results line, taken when it is encoded (a rate-control record, a JPEG size)."""


@dataclass
class StreamCounts:
    """What a run did. ``answered`` = ``ok`` + ``failed``; ``bytes`` and ``raw`` sum answered frames."""

    encoded: int = 0
    ok: int = 0
    failed: int = 0
    dropped: int = 0
    bytes: int = 0
    raw: int = 0
    round_trip_ms: float = 0.0
    not_encoded: list[tuple[str, str]] = field(default_factory=list)

    @property
    def answered(self) -> int:
        return self.ok + self.failed


def answered_row(record: dict[str, Any], result: pb.Result, round_trip_ms: float) -> dict[str, Any]:
    """A results line for an answered frame: its spooled record, the round trip and the cloud's result."""
    row = dict(record)
    stages = dict(row.get("stage_ms", {}))
    cloud_total = result.stage_ms.get("total")
    stages["round_trip"] = round_trip_ms
    stages["transport"] = None if cloud_total is None else max(round_trip_ms - cloud_total, 0.0)
    row["stage_ms"] = stages
    row["result"] = result_to_dict(result)
    return row


def dropped_row(item: Spooled, reason: str) -> dict[str, Any]:
    """A results line for a frame the spool dropped."""
    return {**item.record, "dropped": reason}


class StreamLoop:
    """Runs one source to its end (or until interrupted) through the spool.

    Args:
        agent: encodes frames (its ``stream_id`` is stamped on them).
        source: where frames come from; a replayable one starts at the spool's cursor for it.
        spool: the on-disk queue.
        client: the link (``wait_ready`` already passed once).
        results: the results file.
        phi: fixed rate per scale, or None.
        rate_control: a per-frame budgeted coder instead of ``phi``.
        on_encoded: extra fields for each frame's line.
        on_row: called with every line written.
        window, frame_timeout_s, backoff_s, max_backoff_s: see :class:`~fpnlink.edge.forward.Forwarder`.
        progress: show a progress bar (frames, fps, link kbps, spool depth).
        budget_hook: called before each frame with the link's kbps, the spooled frames and the frames encoded
            per second so far (link-adaptive rate, :class:`~fpnlink.edge.rate.LinkBudget`).
    """

    def __init__(self, agent: EdgeAgent, source: Source, spool: Spool, client: Client, results: ResultLog, *,
                 phi: dict[str, float] | None = None, rate_control: RateControl | None = None,
                 on_encoded: EncodeHook | None = None, on_row: RowHook | None = None, window: int = 4,
                 frame_timeout_s: float = 60.0, backoff_s: float = 0.2, max_backoff_s: float = 5.0,
                 progress: bool = True, budget_hook: Callable[[float, int, float], None] | None = None) -> None:
        self.agent, self.source, self.spool, self.results = agent, source, spool, results
        self.phi, self.rate_control, self.on_encoded, self.on_row = phi, rate_control, on_encoded, on_row
        self.budget_hook = budget_hook
        self.counts = StreamCounts()
        self.forwarder = Forwarder(client, spool, self._answered, window=window, frame_timeout_s=frame_timeout_s,
                                   backoff_s=backoff_s, max_backoff_s=max_backoff_s)
        self.progress = progress
        self._bar: tqdm | None = None
        self._last_size = 0
        self.last_phi: dict[str, float] = {}
        self._started = time.monotonic()

    # -- results ------------------------------------------------------------------------------------

    def _write(self, row: dict[str, Any]) -> None:
        if not self.results.write(row):
            return  # a resend's second answer
        if "dropped" in row:
            self.counts.dropped += 1
        else:
            ok = not row["result"].get("error")
            self.counts.ok += ok
            self.counts.failed += not ok
            self.counts.bytes += row["frame_bytes"]
            self.counts.raw += row["raw_feature_bytes"]
            self.counts.round_trip_ms += row["stage_ms"]["round_trip"]
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix_str(self.status(), refresh=False)
        if self.on_row is not None:
            self.on_row(row)

    def _answered(self, record: dict[str, Any], result: pb.Result, round_trip_ms: float) -> None:
        self._write(answered_row(record, result, round_trip_ms))

    def _drop(self, items: list[Spooled], reason: str) -> None:
        for item in items:
            log.warning("frame %d (%s) dropped: %s", item.frame_id, item.record.get("image"), reason)
            self._write(dropped_row(item, reason))

    def fps(self) -> float:
        """Frames encoded per second since the run started."""
        return self.counts.encoded / max(time.monotonic() - self._started, 1e-6)

    def status(self) -> str:
        """``fps``, link ``kbps`` and spool depth, as the progress bar shows them."""
        frames, size = self.spool.depth()
        return (f"{self.fps():.1f} fps, link {self.forwarder.link_kbps:,.0f} kbps, "
                f"spool {frames} frame(s) / {size / 1e6:.1f} MB")

    # -- the run ------------------------------------------------------------------------------------

    def reconcile(self) -> None:
        """Acknowledge spooled frames the results file already answers (a crash between line and ack)."""
        done = [frame_id for stream, frame_id in self.spool.keys() if (stream, frame_id) in self.results.written]
        if done:
            log.info("%d spooled frame(s) were answered before the restart; not sent again", len(done))
            self.spool.ack(done)

    def run(self) -> StreamCounts:
        """Encode the source into the spool while the forwarder drains it; return when all is answered.

        Raises:
            KeyboardInterrupt: passed on after the link is stopped; unanswered frames stay spooled.
        """
        self.reconcile()
        total = len(self.source) + self.spool.depth()[0] if self.source.replayable else None
        self._bar = tqdm(total=total, unit="frame", desc="frames", disable=not self.progress)
        self.forwarder.start()
        try:
            for taken in self.source:
                self._drop(self.spool.expire(), "expired in the spool (ttl)")
                if self.source.replayable:
                    self._wait_for_room()
                if self.budget_hook is not None:
                    self.budget_hook(self.forwarder.link_kbps, self.spool.depth()[0], self.fps())
                frame_id = self.spool.next_frame_id()
                try:
                    encoded = self.agent.encode(taken.image, frame_id, self.phi, capture_time_us=taken.capture_time_us,
                                                rate_control=self.rate_control)
                except (ValueError, FpnlinkError) as exc:
                    log.warning("%s: not encoded: %s", taken.name, exc)
                    self.counts.not_encoded.append((taken.name, f"{taken.name}: not encoded: {exc}"))
                    continue
                record = {"image": taken.name, "stream_id": self.agent.stream_id, "frame_id": frame_id,
                          "capture_time_us": taken.capture_time_us, "frame_bytes": encoded.frame_bytes,
                          "raw_feature_bytes": encoded.raw_feature_bytes, "stage_ms": dict(encoded.stage_ms)}
                if self.on_encoded is not None:
                    record.update(self.on_encoded(taken, encoded))
                cursor = (self.source.identity, taken.index + 1) if self.source.replayable else None
                data = encoded.frame.SerializeToString()
                self._last_size = len(data)
                self.last_phi = {scale.name: scale.phi for scale in encoded.frame.scales}
                dropped = self.spool.put(frame_id, self.agent.stream_id, data, record, cursor)
                self.counts.encoded += 1
                self._drop(dropped, f"spool full ({self.spool.quota_bytes:,} bytes, {self.spool.full_policy})")
                self.forwarder.notify()
            if self.source.replayable:
                self.spool.clear_cursor(self.source.identity)
            self.forwarder.finish()
            while not self.forwarder.join(timeout_s=1.0):
                self._drop(self.spool.expire(), "expired in the spool (ttl)")
        except BaseException:
            self.forwarder.stop()
            raise
        finally:
            self._bar.close()
        return self.counts

    def _wait_for_room(self) -> None:
        while 0 < self.spool.depth()[1] and self.spool.depth()[1] + self._last_size > self.spool.quota_bytes:
            time.sleep(ROOM_POLL_S)
