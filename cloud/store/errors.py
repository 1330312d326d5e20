"""Store failures; both are :class:`NotReadyError`, so transports answer UNAVAILABLE (gRPC) / 503 (HTTP)."""

from __future__ import annotations

from fpnlink.shared.errors import NotReadyError


class StoreUnavailableError(NotReadyError):
    """The results database cannot be reached or refused a write; the frame was not stored, retry it."""


class StoreFullError(StoreUnavailableError):
    """The store's write queue is full (the database falls behind); the frame was not stored, retry it."""
