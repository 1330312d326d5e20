"""Opaque pagination cursors: the keyset position after a page's last item, as URL-safe base64 JSON."""

from __future__ import annotations

import base64
import binascii
import json

from fpnlink.shared.errors import InvalidArgumentError

MAX_CURSOR_LENGTH = 1024


def encode_cursor(kind: str, *position: str | int) -> str:
    """A cursor of ``kind`` (``"streams"``, ``"frames"``) at ``position``."""
    text = json.dumps([kind, *position], separators=(",", ":"))
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode_cursor(cursor: str, kind: str, types: tuple[type, ...]) -> tuple[str | int, ...]:
    """The position of a cursor that :func:`encode_cursor` issued for ``kind`` with fields of ``types``.

    Raises:
        InvalidArgumentError: anything else (edited, truncated, from another listing).
    """
    try:
        if len(cursor) > MAX_CURSOR_LENGTH:
            raise ValueError("too long")
        value = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if not (isinstance(value, list) and len(value) == len(types) + 1 and value[0] == kind
                and all(type(v) is t for v, t in zip(value[1:], types))):
            raise ValueError("not a cursor of this listing")
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise InvalidArgumentError(f"cursor {cursor[:64]!r} is not a {kind} cursor this server issued ({exc}); "
                                   f"pass the next_cursor of the previous page unchanged") from None
    return tuple(value[1:])
