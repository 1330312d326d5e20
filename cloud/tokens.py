"""The bearer-token file: token hashes with a name and scopes each, never a token in plaintext.

Format (JSON)::

    {"tokens": [
      {"name": "cam-7",       "sha256": "3f0c...64 hex...", "scopes": ["ingest"]},
      {"name": "dashboard",   "sha256": "9ab1...",          "scopes": ["read"]},
      {"name": "ops",         "sha256": "77de...",          "scopes": ["admin"]}
    ]}

Scopes: ``ingest`` (send frames: gRPC FeatureLink, ``POST /v1/frames``, ``/v1/analyze``), ``read`` (the REST
analytics), ``admin`` (everything). Tokens are 32 random bytes (:func:`new_token`), so an unsalted SHA-256 is
enough to make a leaked file useless; a hash is looked up, never compared by prefix.
``fpnlink-cloud token add --file F --name N --scopes ingest`` creates a token, stores its hash and prints the
token once.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from fpnlink.shared.errors import ConfigError

SCOPES = ("ingest", "read", "admin")
ADMIN = "admin"
TOKEN_PREFIX = "fpl_"
_HEX64 = re.compile(r"[0-9a-f]{64}")
_PLAINTEXT_KEYS = ("token", "secret", "password")


@dataclass(frozen=True)
class TokenEntry:
    """One stored token: who holds it and what it may do."""

    name: str
    sha256: str
    scopes: frozenset[str]

    def allows(self, scope: str) -> bool:
        return scope in self.scopes or ADMIN in self.scopes


def hash_token(token: str) -> str:
    """Hex SHA-256 of a token, as the token file stores it."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    """A fresh random bearer token (``fpl_`` + 43 URL-safe characters, 256 bits)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def parse_tokens(text: str, source: str = "token file") -> dict[str, TokenEntry]:
    """Token entries keyed by hash; every defect raises :class:`ConfigError` naming the entry."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{source} is not JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("tokens"), list):
        raise ConfigError(f'{source} must be an object {{"tokens": [...]}}')
    entries: dict[str, TokenEntry] = {}
    names: set[str] = set()
    for i, item in enumerate(doc["tokens"]):
        where = f"{source}, tokens[{i}]"
        if not isinstance(item, dict):
            raise ConfigError(f"{where} must be an object with name, sha256 and scopes")
        plaintext = [key for key in _PLAINTEXT_KEYS if key in item]
        if plaintext:
            raise ConfigError(f"{where} stores {plaintext[0]!r} in plaintext; store only its sha256 "
                              f"(fpnlink-cloud token add writes one)")
        name, digest, scopes = item.get("name"), item.get("sha256"), item.get("scopes")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{where} needs a non-empty string 'name'")
        if not isinstance(digest, str) or not _HEX64.fullmatch(digest):
            raise ConfigError(f"{where} ({name}): 'sha256' must be 64 lowercase hex digits")
        if not isinstance(scopes, list) or not scopes or not all(s in SCOPES for s in scopes):
            raise ConfigError(f"{where} ({name}): 'scopes' must be a non-empty list of {list(SCOPES)}, "
                              f"got {scopes!r}")
        if name in names or digest in entries:
            raise ConfigError(f"{where} ({name}): duplicate name or hash")
        names.add(name)
        entries[digest] = TokenEntry(name, digest, frozenset(scopes))
    return entries


def load_tokens(path: Path) -> dict[str, TokenEntry]:
    """Read a token file (see the module docstring)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read the token file {path}: {exc.strerror or exc}") from None
    return parse_tokens(text, f"token file {path}")


def add_token(path: Path, name: str, scopes: list[str]) -> str:
    """Create a token, store its hash under ``name`` in ``path`` (created 0600 if missing); returns the token."""
    entries = list(load_tokens(path).values()) if path.exists() else []
    token = new_token()
    stored = [{"name": e.name, "sha256": e.sha256, "scopes": sorted(e.scopes)} for e in entries]
    stored.append({"name": name, "sha256": hash_token(token), "scopes": list(dict.fromkeys(scopes))})
    text = json.dumps({"tokens": stored}, indent=2) + "\n"
    parse_tokens(text, f"token file {path}")  # the new entry is checked like any other
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return token
