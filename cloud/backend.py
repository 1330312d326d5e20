"""What the transports need of the service: the :class:`CloudBackend` protocol and :class:`FrameOutcome`.

Dependencies run one way::

    service.py ──builds──> server.py (gRPC), api.py + analytics.py (REST) ──depend on──> backend.py
         └──────────────────────────── implements CloudBackend ───────────────────────────────┘

The transports never import the service; :class:`~.service.CloudService` satisfies the protocol.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from fpnlink.shared.wire import pb

if TYPE_CHECKING:
    from grpc_health.v1 import health as grpc_health

    from .auth import Authenticator
    from .engine import CloudEngine
    from .metrics import CloudMetrics
    from .recorder import FrameRecorder
    from .settings import CloudSettings
    from .tls import ServerTLS


@dataclass
class FrameOutcome:
    """What became of one received frame.

    Attributes:
        frame: the parsed frame, None when the bytes did not parse.
        result: the Result, None on failure.
        error: the failure, None on success.
        frame_bytes: size of the received message.
        device_id: the sender's mutual-TLS identity (certificate common name), None without one.
        from_store: the result was answered from the results store (a resend; the heads did not run).
    """

    frame: pb.FeatureFrame | None
    result: pb.Result | None
    error: Exception | None
    frame_bytes: int
    device_id: str | None = None
    from_store: bool = False


class CloudBackend(Protocol):
    """The service as the gRPC server and the REST app use it.

    Attributes:
        settings, metrics: the process settings and its metric objects.
        health: the gRPC health servicer (SERVING while :meth:`readiness` holds, NOT_SERVING otherwise).
        authenticator: bearer-token checks; tls: the server's TLS material, None for plaintext.
        recorder: the results store link, None when the store is off.
    """

    settings: CloudSettings
    metrics: CloudMetrics
    health: grpc_health.aio.HealthServicer
    authenticator: Authenticator
    tls: ServerTLS | None
    recorder: FrameRecorder | None

    @property
    def ready(self) -> bool: ...

    @property
    def engine(self) -> CloudEngine: ...

    def readiness(self) -> tuple[bool, str]: ...

    async def handle_frame(self, data: bytes, transport: str, *, device_id: str | None = None) -> FrameOutcome: ...

    async def analyze_upload(self, data: bytes, tasks: Sequence[str], transport: str = "rest") -> pb.Result: ...

    def capabilities(self) -> pb.Capabilities: ...
