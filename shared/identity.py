"""Device identity: the common name of a device's client certificate, and the streams that device owns.

Under mutual TLS the cloud knows each device by the CN of the certificate it presented. A device owns the
stream named like itself and every stream under it::

    device "cam-7" writes  "cam-7", "cam-7:front", "cam-7:2026-12-01"
               and never   "cam-8", "cam-70", "cam-8:front"

Both sides use this: the cloud refuses a frame whose stream the device does not own, the edge names its
default stream after its certificate so that it is accepted.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.x509.oid import NameOID

from .errors import ConfigError

STREAM_SEPARATOR = ":"
"""Between the device and the rest of a stream id; URL-safe, so that REST paths can name the stream."""


def owns_stream(device_id: str, stream_id: str) -> bool:
    """Whether device ``device_id`` may write stream ``stream_id`` (itself, or ``device_id:...``)."""
    return bool(device_id) and (stream_id == device_id or stream_id.startswith(device_id + STREAM_SEPARATOR))


def certificate_identity(pem: bytes, source: str = "certificate") -> str:
    """The device identity (subject common name) of a PEM certificate.

    Args:
        pem: the certificate, PEM-encoded (the first one of a chain).
        source: what to call it in errors (a file name).

    Raises:
        ConfigError: not a PEM certificate, or it has no common name.
    """
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise ConfigError(f"{source} is not a PEM X.509 certificate: {exc}") from None
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not names or not str(names[0].value):
        raise ConfigError(f"{source} has no subject common name, which is the device identity")
    return str(names[0].value)
