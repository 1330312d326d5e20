"""The gRPC side: the FeatureLink servicer, health checking and reflection on one ``grpc.aio`` server.

FeatureLink's frame methods take the request as raw bytes (identity deserializer), so the servicer knows the
exact size received (``Result.frame_bytes``) and can answer an unparsable message itself:

- ``Analyze``: a failed frame ends the call with a gRPC status and message (see :mod:`.errors`); a full
  queue's ``RESOURCE_EXHAUSTED`` carries its retry hint as ``grpc-retry-pushback-ms`` trailing metadata.
- ``Stream``: reads ahead up to ``stream_in_flight`` frames and answers each as it completes, in completion
  order (match them by ``frame_id``); a failed frame gets a Result with ``error`` set (status code name +
  message; a full queue's names the retry hint) and the stream goes on.

A message over ``max_frame_bytes`` is refused by gRPC itself with ``RESOURCE_EXHAUSTED``; on ``Stream`` that
ends the stream, since gRPC cancels the whole call.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from fpnlink.shared.wire import pb

from .auth import TokenInterceptor, peer_device_id
from .errors import map_error
from .pipeline import as_completed_map

if TYPE_CHECKING:
    from .backend import CloudBackend, FrameOutcome
    from .settings import CloudSettings

logger = logging.getLogger(__name__)

SERVICE_NAME: str = pb.DESCRIPTOR.services_by_name["FeatureLink"].full_name
TRANSPORT = "grpc"


def _raw(data: bytes) -> bytes:
    """Request 'deserializer' that keeps the received bytes as they are."""
    return data


class FeatureLinkServicer:
    """``fpnlink.v1.FeatureLink`` over a :class:`~.backend.CloudBackend`; registered by :func:`add_feature_link`."""

    def __init__(self, service: CloudBackend) -> None:
        self.service = service

    async def Analyze(self, request: bytes, context: grpc.aio.ServicerContext) -> pb.Result:
        outcome = await self.service.handle_frame(request, TRANSPORT, device_id=peer_device_id(context))
        if outcome.error is not None:
            mapped = map_error(outcome.error)
            await context.abort(mapped.code, mapped.message, mapped.trailing_metadata())
        return outcome.result

    async def Stream(self, requests: AsyncIterator[bytes],
                     context: grpc.aio.ServicerContext) -> AsyncIterator[pb.Result]:
        device_id = peer_device_id(context)

        async def answer(request: bytes) -> pb.Result:
            outcome = await self.service.handle_frame(request, TRANSPORT, device_id=device_id)
            return outcome.result if outcome.error is None else self._error_result(outcome)

        async for result in as_completed_map(requests, answer, self.service.settings.stream_in_flight):
            yield result

    async def GetCapabilities(self, request: pb.CapabilitiesRequest,
                              context: grpc.aio.ServicerContext) -> pb.Capabilities:
        try:
            return self.service.capabilities()
        except Exception as exc:  # mapped to a status, the server lives on
            mapped = map_error(exc)
            await context.abort(mapped.code, mapped.message)

    def _error_result(self, outcome: FrameOutcome) -> pb.Result:
        mapped = map_error(outcome.error)
        frame = outcome.frame
        return pb.Result(
            stream_id=frame.stream_id if frame is not None else "",
            frame_id=frame.frame_id if frame is not None else 0,
            frame_bytes=outcome.frame_bytes,
            trained=self.service.ready and self.service.engine.bundle.trained,
            error=pb.Error(code=mapped.code.name, message=mapped.message),
        )


def add_feature_link(servicer: FeatureLinkServicer, server: grpc.aio.Server) -> None:
    """Register FeatureLink with raw-bytes requests for ``Stream`` and ``Analyze``."""
    handlers = {
        "Stream": grpc.stream_stream_rpc_method_handler(
            servicer.Stream, request_deserializer=_raw, response_serializer=pb.Result.SerializeToString),
        "Analyze": grpc.unary_unary_rpc_method_handler(
            servicer.Analyze, request_deserializer=_raw, response_serializer=pb.Result.SerializeToString),
        "GetCapabilities": grpc.unary_unary_rpc_method_handler(
            servicer.GetCapabilities, request_deserializer=pb.CapabilitiesRequest.FromString,
            response_serializer=pb.Capabilities.SerializeToString),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)


def build_grpc_server(service: CloudBackend, settings: CloudSettings) -> tuple[grpc.aio.Server, int]:
    """A bound (not yet started) ``grpc.aio`` server with FeatureLink, health and reflection.

    With ``service.tls`` it listens with TLS (mutual when a client CA is set); with tokens enabled a
    :class:`~.auth.TokenInterceptor` checks every call but health.

    Returns:
        The server and the port it bound (``settings.grpc_port``, or the ephemeral port for 0).
    """
    cap = settings.max_frame_bytes
    options = [("grpc.max_receive_message_length", cap), ("grpc.max_send_message_length", cap)]
    if settings.max_connection_age_s is not None:  # clients reconnect, and a balancer spreads them again
        options += [("grpc.max_connection_age_ms", round(1e3 * settings.max_connection_age_s)),
                    ("grpc.max_connection_age_grace_ms", round(1e3 * settings.grace_s))]
    server = grpc.aio.server(
        options=options,
        maximum_concurrent_rpcs=settings.max_concurrent_rpcs,
        interceptors=[TokenInterceptor(service.authenticator, service.metrics.record_auth_failure)]
        if service.authenticator.enabled else None,
    )
    add_feature_link(FeatureLinkServicer(service), server)
    health_pb2_grpc.add_HealthServicer_to_server(service.health, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
        server,
    )
    host = settings.host
    address = _address(host, settings.grpc_port)
    tls = service.tls
    port = server.add_secure_port(address, tls.grpc_credentials()) if tls else server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"gRPC server could not bind {address}")
    return server, port


def build_health_server(service: CloudBackend, settings: CloudSettings) -> tuple[grpc.aio.Server, int]:
    """A plaintext gRPC server with only ``grpc.health.v1`` on ``settings.health_port``.

    For the kubelet's gRPC probes, which cannot do TLS: no frames, no tokens, nothing but serving status.
    """
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(service.health, server)
    address = _address(settings.host, settings.health_port)
    port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"gRPC health server could not bind {address}")
    return server, port


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"
