"""The cloud's TLS material: the server certificate and key, and the CA that client certificates must chain to.

Files are read and checked once at startup, so a wrong path, a file that is no PEM, or a key that does not
belong to the certificate fails with a message naming the file rather than as failed handshakes later.

- ``tls_cert`` + ``tls_key``: gRPC and REST serve TLS.
- ``tls_client_ca`` as well: gRPC requires a client certificate signed by that CA (mutual TLS); the device
  identity is the certificate's common name (:mod:`fpnlink.shared.identity`). REST keeps bearer tokens.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from fpnlink.shared.errors import ConfigError


@dataclass(frozen=True)
class ServerTLS:
    """Checked PEM material of one server.

    Attributes:
        cert_file, key_file: the server's certificate chain and private key.
        client_ca_file: CA bundle client certificates must chain to; None: no client certificates.
        cert, key, client_ca: their contents.
    """

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None
    cert: bytes
    key: bytes
    client_ca: bytes | None

    @property
    def mutual(self) -> bool:
        return self.client_ca is not None

    def grpc_credentials(self) -> grpc.ServerCredentials:
        """Server credentials; client certificates are required and verified under mutual TLS."""
        return grpc.ssl_server_credentials([(self.key, self.cert)], root_certificates=self.client_ca,
                                           require_client_auth=self.mutual)

    def uvicorn_options(self) -> dict[str, object]:
        """``uvicorn.Config`` keyword arguments for HTTPS (server certificate only; REST uses tokens)."""
        return {"ssl_certfile": str(self.cert_file), "ssl_keyfile": str(self.key_file),
                "ssl_cert_reqs": ssl.CERT_NONE}


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the {what} {path}: {exc.strerror or exc}") from None


def _certificates(data: bytes, path: Path, what: str) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise ConfigError(f"the {what} {path} holds no PEM certificate: {exc}") from None
    return certs


def load_server_tls(cert_file: Path, key_file: Path, client_ca_file: Path | None = None) -> ServerTLS:
    """Read and check the server's TLS files.

    Raises:
        ConfigError: a file is unreadable or not PEM, or the key does not match the certificate.
    """
    cert = _read(cert_file, "TLS certificate")
    key = _read(key_file, "TLS key")
    leaf = _certificates(cert, cert_file, "TLS certificate")[0]
    try:
        private = serialization.load_pem_private_key(key, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"the TLS key {key_file} is not an unencrypted PEM private key: {exc}") from None
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    if (private.public_key().public_bytes(serialization.Encoding.DER, public)
            != leaf.public_key().public_bytes(serialization.Encoding.DER, public)):
        raise ConfigError(f"the TLS key {key_file} does not belong to the certificate {cert_file}")
    client_ca = None
    if client_ca_file is not None:
        client_ca = _read(client_ca_file, "client CA")
        _certificates(client_ca, client_ca_file, "client CA")
    return ServerTLS(cert_file, key_file, client_ca_file, cert, key, client_ca)
