"""The error hierarchy that both servers map to protocol status codes (one place each)."""


class FpnlinkError(Exception):
    """Base class of every error fpnlink raises on purpose."""


class BadFrameError(FpnlinkError, ValueError):
    """A frame or payload is malformed, truncated, inconsistent or has wrong shapes."""


class CodecError(BadFrameError):
    """A codec payload cannot be decoded (corrupt, truncated, lying header)."""


class UnsupportedError(FpnlinkError):
    """The request names a codec, task or model this service does not hold."""


class FingerprintMismatchError(FpnlinkError):
    """The frame was produced by a backbone or codec whose fingerprint the receiver does not hold."""


class LimitExceededError(FpnlinkError):
    """A size limit (frame bytes, image pixels, tensor elements) is exceeded."""


class WeightsError(FpnlinkError):
    """Weights cannot be resolved, downloaded or verified."""


class NotReadyError(FpnlinkError):
    """The service has not finished its setup yet."""


class InvalidArgumentError(FpnlinkError, ValueError):
    """A query argument is malformed or out of range (cursor, time window, bucket)."""


class NotFoundError(FpnlinkError, LookupError):
    """A stored stream or frame that the request names does not exist."""


class UnauthenticatedError(FpnlinkError):
    """A request carries no credentials, or credentials the service does not know."""


class PermissionDeniedError(FpnlinkError):
    """Known credentials that do not allow this request (a missing scope, another device's stream)."""


class ConfigError(FpnlinkError, ValueError):
    """A configuration file (token file, certificate, key) is missing or malformed."""


class OverloadedError(FpnlinkError):
    """The service's frame queue is full; retry after ``retry_after_s`` seconds.

    Args:
        message: what is full.
        retry_after_s: the server's estimate of when a slot frees up.
    """

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class QueueTimeoutError(FpnlinkError):
    """A frame waited longer than the queue deadline before the engine could take it."""
