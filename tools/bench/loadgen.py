"""The load generator of ``fpnlink bench load``: N concurrent gRPC ``Stream`` calls replaying pre-encoded frames.

Each stream keeps up to ``in_flight`` frames outstanding, sends until the deadline, then waits for every
answer. A frame is a serialized FeatureFrame template re-stamped with the stream's id and a fresh frame id, so
that no two sends share a result-cache key. Results arrive in completion order and are matched by frame id.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

import grpc

from fpnlink.shared.wire import pb

STREAM_METHOD = "/fpnlink.v1.FeatureLink/Stream"
OK = "OK"


@dataclass
class StreamTally:
    """What one stream sent and received.

    Attributes:
        sent, answered: frames sent and frames answered (a Result, with or without ``error``).
        codes: status code name -> count (``OK`` for results without ``error``; a failed call's own status
            counts once, with its unanswered frames lost).
        latencies_ms: send-to-answer time of every OK frame.
        answer_times: ``time.perf_counter()`` of every answer.
    """

    sent: int = 0
    answered: int = 0
    codes: Counter = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)
    answer_times: list[float] = field(default_factory=list)


def stamp(template: pb.FeatureFrame, stream_id: str, frame_id: int) -> bytes:
    """``template`` with another stream and frame id, serialized."""
    frame = pb.FeatureFrame()
    frame.CopyFrom(template)
    frame.stream_id = stream_id
    frame.frame_id = frame_id
    return frame.SerializeToString()


async def _drive_stream(channel: grpc.aio.Channel, stream_id: str, templates: Sequence[pb.FeatureFrame],
                        deadline: float, in_flight: int, drain_s: float) -> StreamTally:
    tally = StreamTally()
    slots = asyncio.Semaphore(in_flight)
    sent_at: dict[int, float] = {}

    async def requests() -> AsyncIterator[bytes]:
        frame_id = 0
        while time.perf_counter() < deadline:
            await slots.acquire()
            if time.perf_counter() >= deadline:
                break
            frame_id += 1
            data = stamp(templates[frame_id % len(templates)], stream_id, frame_id)
            sent_at[frame_id] = time.perf_counter()
            tally.sent += 1
            yield data

    call = channel.stream_stream(STREAM_METHOD, response_deserializer=pb.Result.FromString)(
        requests(), timeout=deadline - time.perf_counter() + drain_s)
    try:
        async for result in call:
            now = time.perf_counter()
            started = sent_at.pop(result.frame_id, None)
            tally.answered += 1
            tally.answer_times.append(now)
            code = result.error.code if result.HasField("error") else OK
            tally.codes[code] += 1
            if code == OK and started is not None:
                tally.latencies_ms.append(1e3 * (now - started))
            slots.release()
    except grpc.aio.AioRpcError as exc:
        tally.codes[f"call:{exc.code().name}"] += 1
    return tally


async def run_load(target: str, templates: Sequence[pb.FeatureFrame], streams: int, duration_s: float,
                   in_flight: int, drain_s: float = 300.0) -> tuple[list[StreamTally], float, float]:
    """Drive ``streams`` concurrent streams for ``duration_s`` seconds.

    Returns:
        The tallies, and the perf_counter times of the first send and of the last answer.
    """
    cap = max(len(t.SerializeToString()) for t in templates) + 4096
    options = [("grpc.max_send_message_length", cap), ("grpc.max_receive_message_length", 64 * 1024 * 1024)]
    async with grpc.aio.insecure_channel(target, options=options) as channel:
        start = time.perf_counter()
        deadline = start + duration_s
        tallies = await asyncio.gather(*(
            _drive_stream(channel, f"load-{i}", templates, deadline, in_flight, drain_s) for i in range(streams)))
    last = max((t.answer_times[-1] for t in tallies if t.answer_times), default=start)
    return list(tallies), start, last
