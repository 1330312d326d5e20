"""gRPC channel credentials of the edge: TLS (a CA to trust), a client certificate (mutual TLS), a bearer token.

=====================================  ==================================================================
given                                  channel
=====================================  ==================================================================
nothing                                plaintext (``grpc.insecure_channel``)
``tls_ca``                             TLS, the server verified against ``tls_ca``
+ ``tls_cert`` and ``tls_key``         mutual TLS: the certificate's common name is the device identity
+ ``token``                            every call carries ``authorization: Bearer TOKEN``
``token`` alone                        only to a loopback server (gRPC local credentials); elsewhere a
                                       token must not cross the network in plaintext, so it is refused
=====================================  ==================================================================
"""

from __future__ import annotations

from pathlib import Path

import grpc

from ..shared.errors import ConfigError


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the {what} {path}: {exc.strerror or exc}") from None


def channel_credentials(
    tls_ca: Path | None = None,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
    token: str | None = None,
) -> grpc.ChannelCredentials | None:
    """Credentials for the given files and token; None for a plaintext channel.

    Raises:
        ConfigError: a file is unreadable, ``tls_cert`` and ``tls_key`` are not given together, or a client
            certificate is given without ``tls_ca``.
    """
    if (tls_cert is None) != (tls_key is None):
        raise ConfigError("tls_cert and tls_key go together (mutual TLS): give both or neither")
    if tls_cert is not None and tls_ca is None:
        raise ConfigError("a client certificate needs tls_ca, the CA that signed the server's certificate")
    if tls_ca is None:
        if token is None:
            return None
        transport = grpc.local_channel_credentials(grpc.LocalConnectionType.LOCAL_TCP)
    else:
        chain = _read(tls_cert, "TLS certificate") if tls_cert is not None else None
        key = _read(tls_key, "TLS key") if tls_key is not None else None
        transport = grpc.ssl_channel_credentials(_read(tls_ca, "TLS CA"), key, chain)
    if token is None:
        return transport
    if not token.strip():
        raise ConfigError("the token is empty")
    return grpc.composite_channel_credentials(transport, grpc.access_token_call_credentials(token.strip()))
