"""The gRPC client of service ``fpnlink.v1.FeatureLink``: the public API for integrators.

::

    with Client("cloud:50051") as client:
        client.wait_ready(timeout_s=30)
        for result in client.stream(agent.encode(img, i).frame for i, (_, img) in enumerate(source)):
            ...

Every frame is checked against the server's capabilities (tasks, backbone and codec fingerprints,
size cap) before it is sent, so a mismatch fails here with both fingerprints named rather than as
a string of per-frame errors. Every gRPC failure surfaces as :class:`LinkError`, which carries the
status code. Unary calls are retried on UNAVAILABLE (a frame id is idempotent); :meth:`Client.stream` is
not resumed: :class:`~fpnlink.edge.forward.Forwarder` resumes from the spool.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ..shared.errors import FingerprintMismatchError, FpnlinkError, LimitExceededError, UnsupportedError
from ..shared.wire import PB_TO_TASK, TASK_TO_PB, pb, pb_grpc
from .credentials import channel_credentials

DEFAULT_MAX_FRAME_BYTES = 256 * 1024 * 1024
SERVICE_NAME: str = pb.DESCRIPTOR.services_by_name["FeatureLink"].full_name
"""``fpnlink.v1.FeatureLink``: the service whose health :meth:`Client.wait_ready` asks for."""
MAX_BACKOFF_S = 5.0
READY_POLL_S = 0.2
KEEPALIVE_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.keepalive_time_ms", 30_000),  # a ping after 30 s without traffic ...
    ("grpc.keepalive_timeout_ms", 10_000),  # ... unanswered for 10 s ends the call: a dead link is noticed
    ("grpc.keepalive_permit_without_calls", 0),  # servers refuse idle pings by default (too_many_pings)
    ("grpc.http2.max_pings_without_data", 0),
)
"""Channel keepalives: a half-open connection (a pulled cable, a NAT that forgot us) fails within ~40 s."""

_HINTS = {
    grpc.StatusCode.UNAVAILABLE: "is fpnlink-cloud serving gRPC at {target}?",
    grpc.StatusCode.DEADLINE_EXCEEDED: "no answer in time; raise the timeout or check the server's load",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "a message exceeded a size limit; raise max_frame_bytes on both sides "
                                        "or code the features at a lower rate",
    grpc.StatusCode.UNIMPLEMENTED: "the server at {target} does not implement this method (wrong port?)",
}


class LinkError(FpnlinkError):
    """A call to the cloud failed.

    Attributes:
        code: the gRPC status code, or None when the server broke the protocol (e.g. a missing result).
        details: the server's or the transport's message.
        method: the RPC, e.g. ``Stream``.
        target: the server address.
    """

    def __init__(self, method: str, target: str, code: grpc.StatusCode | None, details: str) -> None:
        self.method, self.target, self.code, self.details = method, target, code, details
        status = code.name if code is not None else "PROTOCOL"
        message = f"{method} to {target} failed with {status}: {details}"
        if code in _HINTS:
            message += f" ({_HINTS[code].format(target=target)})"
        super().__init__(message)


@dataclass(frozen=True)
class Reply:
    """A result with the time its frame took on the wire and in the cloud.

    Attributes:
        result: the cloud's answer; ``result.error`` is set when the frame failed.
        round_trip_ms: from handing the frame to gRPC to receiving its result (includes queueing
            behind earlier frames of the stream and the cloud's ``stage_ms['total']``).
    """

    result: pb.Result
    round_trip_ms: float


def check_compatible(
    caps: pb.Capabilities,
    *,
    tasks: list[str],
    model_fingerprint: str,
    codec: str,
    codec_fingerprint: str,
) -> None:
    """Check that a server can interpret frames made with these settings.

    Raises:
        UnsupportedError: the server serves none of a task, or does not hold the codec.
        FingerprintMismatchError: the server's backbone or codec fingerprint differs from ours.
    """
    served = {PB_TO_TASK[t] for t in caps.tasks if t in PB_TO_TASK}
    for task in tasks:
        prints = {m.backbone_fingerprint for m in caps.models if m.task == TASK_TO_PB.get(task)}
        if task not in served or not prints:
            raise UnsupportedError(f"the cloud serves tasks {sorted(served)}, not {task!r}")
        if model_fingerprint not in prints:
            raise FingerprintMismatchError(
                f"backbone fingerprint mismatch for task {task!r}: the edge has {model_fingerprint}, the cloud "
                f"holds {sorted(prints)} (cloud weights {caps.weights!r}, min_size {caps.min_size}, max_size "
                f"{caps.max_size}); edge and cloud must load the same weights and network-input sizes"
            )
    codecs = {c.name: c for c in caps.codecs}
    if codec not in codecs:
        raise UnsupportedError(f"the cloud has no codec {codec!r}; it offers {sorted(codecs)}")
    if codecs[codec].fingerprint != codec_fingerprint:
        raise FingerprintMismatchError(
            f"codec {codec!r} fingerprint mismatch: the edge has {codec_fingerprint}, the cloud "
            f"{codecs[codec].fingerprint}; edge and cloud must run the same codec version and settings"
        )


class Client:
    """A connection to one fpnlink cloud.

    Args:
        target: ``host:port`` of the gRPC server.
        max_frame_bytes: largest message sent or received; the server's own cap also applies.
        timeout_s: deadline of each unary call.
        retries: extra attempts of a unary call that failed with UNAVAILABLE.
        backoff_s: sleep before the first retry, doubled at each further one (at most 5 s).
        credentials: channel credentials built by the caller; excludes the four below.
        tls_ca, tls_cert, tls_key, token: TLS trust, client certificate and bearer token (see
            :func:`~.credentials.channel_credentials`); none of them: a plaintext channel.
    """

    def __init__(
        self,
        target: str,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        timeout_s: float = 30.0,
        retries: int = 3,
        backoff_s: float = 0.2,
        credentials: grpc.ChannelCredentials | None = None,
        *,
        tls_ca: Path | None = None,
        tls_cert: Path | None = None,
        tls_key: Path | None = None,
        token: str | None = None,
    ) -> None:
        if not target:
            raise ValueError("target must be host:port, got an empty string")
        if max_frame_bytes < 1:
            raise ValueError(f"max_frame_bytes must be positive, got {max_frame_bytes}")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        if retries < 0 or backoff_s < 0:
            raise ValueError(f"retries and backoff_s must be >= 0, got {retries} and {backoff_s}")
        self.target = target
        self.max_frame_bytes = max_frame_bytes
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        if credentials is not None and (tls_ca or tls_cert or tls_key or token):
            raise ValueError("give either credentials or tls_ca/tls_cert/tls_key/token, not both")
        if credentials is None:
            credentials = channel_credentials(tls_ca, tls_cert, tls_key, token)
        options = [
            ("grpc.max_send_message_length", max_frame_bytes),
            ("grpc.max_receive_message_length", max_frame_bytes),
            *KEEPALIVE_OPTIONS,
        ]
        if credentials is None:
            self._channel = grpc.insecure_channel(target, options=options)
        else:
            self._channel = grpc.secure_channel(target, credentials, options=options)
        self._stub = pb_grpc.FeatureLinkStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)
        self._caps: pb.Capabilities | None = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    # -- unary calls ---------------------------------------------------------------------------------

    def capabilities(self) -> pb.Capabilities:
        """Ask the server what it serves (and remember it for the frame checks)."""
        self._caps = self._unary("GetCapabilities", self._stub.GetCapabilities, pb.CapabilitiesRequest())
        return self._caps

    def wait_ready(self, timeout_s: float = 10.0) -> None:
        """Block until the server's grpc.health.v1 status is SERVING.

        The status of service ``fpnlink.v1.FeatureLink`` is asked first; a server that does not
        register it is judged by its overall status (service ``""``).

        Raises:
            LinkError: not SERVING within ``timeout_s`` (the last status or transport error is named),
                or the server has no health service.
        """
        deadline = time.monotonic() + timeout_s
        last = "no answer"
        while True:
            remaining = deadline - time.monotonic()
            try:
                status = self._health_status(max(remaining, 0.05))
                if status == health_pb2.HealthCheckResponse.SERVING:
                    return
                last = (f"the cloud answers but is not ready (health status "
                        f"{health_pb2.HealthCheckResponse.ServingStatus.Name(status)}: models still loading or its "
                        "results store unavailable; its /readyz gives the reason)")
            except LinkError as exc:
                if exc.code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    raise
                last = exc.details
            if time.monotonic() + READY_POLL_S > deadline:
                raise LinkError("Health/Check", self.target, grpc.StatusCode.UNAVAILABLE,
                                f"not ready after {timeout_s:g} s; last: {last}")
            time.sleep(READY_POLL_S)

    def _health_status(self, timeout_s: float) -> int:
        try:
            request = health_pb2.HealthCheckRequest(service=SERVICE_NAME)
            return self._health.Check(request, timeout=timeout_s).status
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                raise self._error("Health/Check", exc) from None
        try:
            return self._health.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout_s).status
        except grpc.RpcError as exc:
            raise self._error("Health/Check", exc) from None

    def analyze(self, frame: pb.FeatureFrame, *, check: bool = True, timeout_s: float | None = None) -> pb.Result:
        """Send one frame and wait for its result; retried on UNAVAILABLE with the same frame id.

        Args:
            frame: the frame (see :meth:`EdgeAgent.encode`).
            check: verify the frame against the server's capabilities first.
            timeout_s: deadline of each attempt; the client's default when None.

        Raises:
            LinkError: the call failed (the server's status code and message are kept).
            FingerprintMismatchError, UnsupportedError, LimitExceededError: the frame fails the check.
        """
        if check:
            self.check_frame(frame, self._caps or self.capabilities())
        return self._unary("Analyze", self._stub.Analyze, frame, timeout_s)

    def _unary(self, method: str, rpc: Any, request: Any, timeout_s: float | None = None) -> Any:
        attempt = 0
        while True:
            try:
                return rpc(request, timeout=timeout_s or self.timeout_s)
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE or attempt >= self.retries:
                    raise self._error(method, exc) from None
            time.sleep(min(self.backoff_s * 2**attempt, MAX_BACKOFF_S))
            attempt += 1

    # -- streaming -----------------------------------------------------------------------------------

    def stream(
        self,
        frames: Iterable[pb.FeatureFrame],
        *,
        ordered: bool = False,
        check: bool = True,
        timeout_s: float | None = None,
    ) -> Iterator[pb.Result]:
        """Send frames over one bidirectional Stream call and yield their results.

        Args:
            frames: frames with distinct ids; pulled lazily as gRPC can send them, so a generator
                that encodes on demand overlaps coding with transport.
            ordered: yield results in the order the frames were sent (buffering early ones);
                otherwise as they arrive, matched by ``frame_id``.
            check: verify every frame against the server's capabilities before it is sent.
            timeout_s: deadline of the whole stream; none when None.

        Raises:
            LinkError: the call failed, the server answered a frame that was not sent, or the
                stream ended with frames unanswered.
            FingerprintMismatchError, UnsupportedError, LimitExceededError: a frame fails the check
                (the first frame's failure is raised before the call starts; a later one after the
                results of the frames sent before it).
        """
        for reply in self.stream_replies(frames, ordered=ordered, check=check, timeout_s=timeout_s):
            yield reply.result

    def stream_replies(
        self,
        frames: Iterable[pb.FeatureFrame],
        *,
        ordered: bool = False,
        check: bool = True,
        timeout_s: float | None = None,
    ) -> Iterator[Reply]:
        """Like :meth:`stream`, with each result's round-trip time."""
        frames = iter(frames)
        first = next(frames, None)
        if first is None:
            return
        caps = self.capabilities() if check else None
        if caps is not None:
            self.check_frame(first, caps)
        sent_at: dict[int, float] = {}
        order: deque[int] = deque()
        lock = threading.Lock()
        failure: list[BaseException] = []

        def requests() -> Iterator[pb.FeatureFrame]:
            # Runs in gRPC's sending thread: an exception here would only be logged, so it is kept
            # and re-raised to the caller once the frames already sent are answered.
            try:
                for frame in itertools.chain([first], frames):
                    if caps is not None and frame is not first:
                        self.check_frame(frame, caps)
                    with lock:
                        if frame.frame_id in sent_at:
                            raise ValueError(f"frame id {frame.frame_id} is already in flight on this stream")
                        sent_at[frame.frame_id] = time.perf_counter()
                        if ordered:
                            order.append(frame.frame_id)
                    yield frame
            except Exception as exc:
                failure.append(exc)

        call = self._stub.Stream(requests(), timeout=timeout_s)
        early: dict[int, Reply] = {}
        try:
            for result in call:
                received = time.perf_counter()
                with lock:
                    sent = sent_at.pop(result.frame_id, None)
                if sent is None:
                    raise LinkError("Stream", self.target, None,
                                    f"answered frame id {result.frame_id}, which was not sent or was answered twice")
                reply = Reply(result, (received - sent) * 1e3)
                if not ordered:
                    yield reply
                    continue
                early[result.frame_id] = reply
                while order and order[0] in early:
                    yield early.pop(order.popleft())
        except grpc.RpcError as exc:
            raise self._error("Stream", exc) from None
        finally:
            call.cancel()
        if failure:
            raise failure[0]
        if sent_at:
            missing = sorted(sent_at)
            raise LinkError("Stream", self.target, None,
                            f"stream ended without results for {len(missing)} frame(s), ids {missing[:10]}")

    def open_stream(self, frames: Iterable[pb.FeatureFrame], timeout_s: float | None = None) -> Any:
        """Start a bare Stream call (no checks, no bookkeeping): the call iterates results and can be cancelled.

        :class:`~fpnlink.edge.forward.Forwarder` builds store-and-forward on it; use :meth:`stream` otherwise.
        """
        return self._stub.Stream(iter(frames), timeout=timeout_s)

    def check_frame(self, frame: pb.FeatureFrame, caps: pb.Capabilities) -> None:
        """Check one frame against ``caps`` and the size caps of both sides (no call is made)."""
        unknown = [t for t in frame.tasks if t not in PB_TO_TASK]
        if unknown:
            raise UnsupportedError(f"frame {frame.frame_id}: unknown task values {unknown}")
        check_compatible(
            caps,
            tasks=[PB_TO_TASK[t] for t in frame.tasks],
            model_fingerprint=frame.model_fingerprint,
            codec=frame.codec,
            codec_fingerprint=frame.codec_fingerprint,
        )
        limit = min(self.max_frame_bytes, caps.max_frame_bytes or self.max_frame_bytes)
        size = frame.ByteSize()
        if size > limit:
            raise LimitExceededError(f"frame {frame.frame_id} has {size} bytes, over the {limit}-byte cap "
                                     f"(client {self.max_frame_bytes}, server {caps.max_frame_bytes})")

    def _error(self, method: str, exc: grpc.RpcError) -> LinkError:
        code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
        details = exc.details() if hasattr(exc, "details") else str(exc)
        return LinkError(method, self.target, code, details or "")
