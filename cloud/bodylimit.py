"""An ASGI middleware that caps request bodies per path, before the app buffers or parses them.

A declared ``Content-Length`` over the cap is answered at once; a body that streams past the cap (chunked
uploads) is cut off, and whatever the app would have answered is replaced by the same rejection.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fpnlink.shared.errors import LimitExceededError


class BodyLimitMiddleware:
    """Reject bodies over ``limits[path]`` bytes with ``reject(LimitExceededError)``.

    Args:
        app: the wrapped ASGI app.
        limits: request path -> largest body in bytes; other paths pass through untouched.
        reject: builds the response for a too-large body (the app's one error mapper).
    """

    def __init__(self, app: ASGIApp, limits: Mapping[str, int],
                 reject: Callable[[LimitExceededError], Response]) -> None:
        self.app = app
        self.limits = dict(limits)
        self.reject = reject

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = self.limits.get(scope.get("path", "")) if scope["type"] == "http" else None
        if limit is None:
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            error = LimitExceededError(f"request body of {declared} bytes exceeds the limit of {limit} bytes")
            await self.reject(error)(scope, receive, send)
            return

        received = 0
        exceeded: LimitExceededError | None = None
        started = replaced = False

        async def limited_receive() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    exceeded = LimitExceededError(f"request body exceeds the limit of {limit} bytes")
                    raise exceeded
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started, replaced
            if exceeded is None or (started and not replaced):
                started = started or message["type"] == "http.response.start"
                await send(message)
            elif not replaced:
                replaced = True
                await self.reject(exceeded)(scope, receive, send)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except LimitExceededError:
            if exceeded is None or started or replaced:
                raise
            replaced = True
            await self.reject(exceeded)(scope, receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
