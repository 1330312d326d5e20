"""The one mapping from fpnlink errors to gRPC status codes and HTTP statuses.

Both transports call :func:`map_error` once per failed request; nothing else decides a status code.

==============================  ======================  ====  =============================================
error                           gRPC status             HTTP  meaning
==============================  ======================  ====  =============================================
``CodecError``                  ``INVALID_ARGUMENT``    400   a payload does not decode (corrupt, truncated)
``BadFrameError``               ``INVALID_ARGUMENT``    400   malformed frame or upload, wrong shapes
``InvalidArgumentError``        ``INVALID_ARGUMENT``    400   a bad query: cursor, time window, bucket
``NotFoundError``               ``NOT_FOUND``           404   a stored stream or frame does not exist
``UnsupportedError``            ``UNIMPLEMENTED``       422   unknown codec or task, or a model not held
``FingerprintMismatchError``    ``FAILED_PRECONDITION`` 409   features or codec from other weights/settings
``LimitExceededError``          ``RESOURCE_EXHAUSTED``  413   a size limit (bytes, pixels) is exceeded
``NotReadyError``               ``UNAVAILABLE``         503   weights still loading, or the results store
                                                              unreachable or its queue full; retry later
``OverloadedError``             ``RESOURCE_EXHAUSTED``  503   the frame queue is full; retry after the hint
                                                              (``grpc-retry-pushback-ms``, ``Retry-After``)
``QueueTimeoutError``           ``DEADLINE_EXCEEDED``   504   a frame waited past the queue deadline
``UnauthenticatedError``        ``UNAUTHENTICATED``     401   no token, or a token the service does not know
``PermissionDeniedError``       ``PERMISSION_DENIED``   403   a token without the scope, another device's stream
anything else                   ``INTERNAL``            500   a bug: logged with its traceback
==============================  ======================  ====  =============================================

``UnsupportedError`` maps to ``UNIMPLEMENTED`` rather than ``INVALID_ARGUMENT``: the request is well formed
but asks for something this deployment does not serve (another codec, another model), which gRPC defines as
"not implemented or not supported/enabled in this service"; a client should not retry it unchanged, and
``GetCapabilities`` tells it what is served.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import grpc

from fpnlink.shared.errors import (
    BadFrameError, CodecError, FingerprintMismatchError, InvalidArgumentError, LimitExceededError, NotFoundError,
    NotReadyError, OverloadedError, PermissionDeniedError, QueueTimeoutError, UnauthenticatedError, UnsupportedError,
)

logger = logging.getLogger(__name__)

INTERNAL_MESSAGE = "internal error while handling the request; the server log has the traceback"

# Most specific class first: CodecError is a BadFrameError.
_TABLE: tuple[tuple[type[Exception], grpc.StatusCode, int], ...] = (
    (CodecError, grpc.StatusCode.INVALID_ARGUMENT, 400),
    (BadFrameError, grpc.StatusCode.INVALID_ARGUMENT, 400),
    (InvalidArgumentError, grpc.StatusCode.INVALID_ARGUMENT, 400),
    (NotFoundError, grpc.StatusCode.NOT_FOUND, 404),
    (UnsupportedError, grpc.StatusCode.UNIMPLEMENTED, 422),
    (FingerprintMismatchError, grpc.StatusCode.FAILED_PRECONDITION, 409),
    (LimitExceededError, grpc.StatusCode.RESOURCE_EXHAUSTED, 413),
    (NotReadyError, grpc.StatusCode.UNAVAILABLE, 503),
    (OverloadedError, grpc.StatusCode.RESOURCE_EXHAUSTED, 503),
    (QueueTimeoutError, grpc.StatusCode.DEADLINE_EXCEEDED, 504),
    (UnauthenticatedError, grpc.StatusCode.UNAUTHENTICATED, 401),
    (PermissionDeniedError, grpc.StatusCode.PERMISSION_DENIED, 403),
)
RETRY_PUSHBACK_KEY = "grpc-retry-pushback-ms"
"""Trailing metadata a gRPC client's retry policy reads as the server's retry hint (gRFC A6)."""


@dataclass(frozen=True)
class MappedError:
    """A failure as both transports report it.

    Attributes:
        code: gRPC status code; ``code.name`` is what a stream's ``Result.error.code`` carries.
        http_status: HTTP status code.
        message: text for the client (the exception text, or a generic line for internal errors).
        retry_after_s: when the client may retry (``OverloadedError``), None otherwise.
    """

    code: grpc.StatusCode
    http_status: int
    message: str
    retry_after_s: float | None = None

    @property
    def internal(self) -> bool:
        return self.code == grpc.StatusCode.INTERNAL

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        """gRPC trailing metadata carrying the retry hint, empty without one."""
        if self.retry_after_s is None:
            return ()
        return ((RETRY_PUSHBACK_KEY, str(max(1, round(1e3 * self.retry_after_s)))),)


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, int]:
    """gRPC and HTTP status of an exception, without logging (for metrics labels)."""
    for kind, code, http_status in _TABLE:
        if isinstance(exc, kind):
            return code, http_status
    return grpc.StatusCode.INTERNAL, 500


def map_error(exc: BaseException) -> MappedError:
    """Map an exception to its statuses and client message; internal errors are logged with traceback."""
    code, http_status = status_for(exc)
    if code == grpc.StatusCode.INTERNAL:
        logger.error("internal error: %s: %s", type(exc).__name__, exc, exc_info=exc)
        return MappedError(code, http_status, f"{INTERNAL_MESSAGE} ({type(exc).__name__})")
    return MappedError(code, http_status, str(exc) or type(exc).__name__, getattr(exc, "retry_after_s", None))
