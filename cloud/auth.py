"""Who may call what: bearer tokens on both transports, and the device identity of a mutual-TLS peer.

==========================================  ================  =============================================
call                                        scope             notes
==========================================  ================  =============================================
gRPC ``FeatureLink/Stream``, ``Analyze``    ``ingest``        token in metadata ``authorization: Bearer T``
gRPC ``FeatureLink/GetCapabilities``        ingest or read
gRPC reflection                             any valid token
gRPC ``grpc.health.v1.Health``              none              probes carry no token
REST ``POST /v1/frames``, ``/v1/analyze``   ``ingest``        header ``Authorization: Bearer T``
REST ``GET /v1/capabilities``               ingest or read
REST analytics (``/v1/streams``...)         ``read``
REST ``/healthz``, ``/readyz``, ``/metrics``  none            probes and Prometheus
==========================================  ================  =============================================

``admin`` holds every scope. No token: :class:`UnauthenticatedError` (UNAUTHENTICATED / 401); a token without
the scope: :class:`PermissionDeniedError` (PERMISSION_DENIED / 403). Without a token file every call is allowed
(loopback development; the service warns when it serves that way on another address).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import grpc
from fastapi import Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from fpnlink.shared.errors import PermissionDeniedError, UnauthenticatedError
from fpnlink.shared.identity import owns_stream

from .errors import map_error
from .tokens import SCOPES, TokenEntry, hash_token

logger = logging.getLogger(__name__)

INGEST, READ = "ingest", "read"
ANY_SCOPE: tuple[str, ...] = SCOPES
METADATA_KEY = "authorization"
BEARER = "bearer "
OPEN_GRPC_SERVICES = ("grpc.health.v1.Health",)
FailureHook = Callable[[str, str], None]
"""Called with (transport, gRPC status name) for each refused call (metrics)."""


@dataclass(frozen=True)
class Principal:
    """Who made a call.

    Attributes:
        name: the token's name; ``anonymous`` without a token file.
        scopes: what the token allows.
        device_id: the mutual-TLS client certificate's common name; None without one.
    """

    name: str
    scopes: frozenset[str]
    device_id: str | None = None


ANONYMOUS = Principal("anonymous", frozenset(SCOPES))


class Authenticator:
    """Checks bearer tokens against a token table (``tokens.load_tokens``).

    Args:
        tokens: entries keyed by hash; None disables tokens (every call allowed as :data:`ANONYMOUS`).
    """

    def __init__(self, tokens: dict[str, TokenEntry] | None) -> None:
        self._tokens = tokens

    @property
    def enabled(self) -> bool:
        return self._tokens is not None

    def authorize(self, token: str | None, scopes: Sequence[str]) -> Principal:
        """The principal of ``token`` if it holds one of ``scopes``.

        Raises:
            UnauthenticatedError: no token, or an unknown one.
            PermissionDeniedError: a known token without any of ``scopes``.
        """
        if self._tokens is None:
            return ANONYMOUS
        if not token:
            raise UnauthenticatedError("a bearer token is required (Authorization: Bearer TOKEN)")
        entry = self._tokens.get(hash_token(token))
        if entry is None:
            raise UnauthenticatedError("unknown bearer token")
        if not any(entry.allows(scope) for scope in scopes):
            raise PermissionDeniedError(f"token {entry.name!r} has scopes {sorted(entry.scopes)}; this call needs "
                                        f"{' or '.join(scopes)}")
        return Principal(entry.name, entry.scopes)


def check_stream_owner(device_id: str | None, stream_id: str) -> None:
    """Refuse a frame of a stream that the mutual-TLS device ``device_id`` does not own (no-op without one)."""
    if device_id is not None and not owns_stream(device_id, stream_id):
        raise PermissionDeniedError(f"device {device_id!r} may write only streams {device_id!r} and "
                                    f"'{device_id}:...', not {stream_id!r}")


def bearer_token(value: str | None) -> str | None:
    """The token of an ``Authorization`` value ``Bearer T`` (case-insensitive scheme), else None."""
    if value and value[:len(BEARER)].lower() == BEARER:
        return value[len(BEARER):].strip() or None
    return None


# --------------------------------------------------------------------------------------------------- gRPC


def grpc_scopes(method: str) -> tuple[str, ...] | None:
    """Scopes a gRPC method needs (``/package.Service/Method``); None for open methods."""
    service, _, name = method.lstrip("/").partition("/")
    if service in OPEN_GRPC_SERVICES:
        return None
    if service == "fpnlink.v1.FeatureLink":
        return (INGEST, READ) if name == "GetCapabilities" else (INGEST,)
    return ANY_SCOPE


def peer_device_id(context: grpc.aio.ServicerContext) -> str | None:
    """The common name of the peer's verified client certificate; None without mutual TLS."""
    names = context.auth_context().get("x509_common_name")
    return names[0].decode() if names else None


class TokenInterceptor(grpc.aio.ServerInterceptor):
    """Refuses gRPC calls whose ``authorization`` metadata lacks a token with the method's scope."""

    def __init__(self, authenticator: Authenticator, on_failure: FailureHook | None = None) -> None:
        self.authenticator = authenticator
        self.on_failure = on_failure

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        scopes = grpc_scopes(details.method)
        if handler is None or scopes is None:
            return handler
        metadata = dict(details.invocation_metadata or ())
        try:
            self.authenticator.authorize(bearer_token(metadata.get(METADATA_KEY)), scopes)
        except (UnauthenticatedError, PermissionDeniedError) as exc:
            mapped = map_error(exc)
            if self.on_failure is not None:
                self.on_failure("grpc", mapped.code.name)
            return _refusal(handler, mapped.code, mapped.message)
        return handler


def _refusal(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same kind as ``handler`` that ends the call with ``code``."""

    async def refuse(request: object, context: grpc.aio.ServicerContext) -> None:
        await context.abort(code, message)

    kinds = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }
    make = kinds[(handler.request_streaming, handler.response_streaming)]
    return make(refuse, request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)


# --------------------------------------------------------------------------------------------------- REST

bearer_scheme = HTTPBearer(auto_error=False, description="a token from the cloud's token file")


def rest_dependency(authenticator: Authenticator, scopes: Sequence[str],
                    on_failure: FailureHook | None = None) -> Callable[..., Principal]:
    """A FastAPI dependency that returns the caller's :class:`Principal` or raises 401/403 (via the mapper)."""

    def principal(credentials: HTTPAuthorizationCredentials | None = Security(bearer_scheme)) -> Principal:
        token = credentials.credentials if credentials is not None else None
        try:
            return authenticator.authorize(token, scopes)
        except (UnauthenticatedError, PermissionDeniedError) as exc:
            if on_failure is not None:
                on_failure("rest", map_error(exc).code.name)
            raise

    return principal
