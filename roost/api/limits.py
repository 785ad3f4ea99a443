"""The request body's size limit, enforced before the body is read (pure ASGI)."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from roost.api.errors import error_response
from roost.errors import ErrorKind, RoostError


class RequestTooLarge(RoostError):
    kind = ErrorKind.TOO_LARGE
    code = "request_too_large"

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"The request body is larger than this server accepts ({limit} bytes; "
            "the max_body_bytes setting)"
        )


class BodySizeLimit:
    """413 `request_too_large` for a body over `limit` bytes: at once when Content-Length says
    so, else as soon as the bytes received pass it (a chunked body). The app then sees a client
    that went away, and whatever it answers is replaced by the 413."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.limit:
            await error_response(RequestTooLarge(self.limit))(scope, receive, send)
            return
        received = 0
        too_large = False

        async def counted() -> Message:
            nonlocal received, too_large
            if too_large:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    too_large = True
                    return {"type": "http.disconnect"}
            return message

        started = False

        async def guarded(message: Message) -> None:
            nonlocal started
            if too_large and not started:
                return  # the app's answer to a "disconnect": the 413 goes instead
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, guarded)
        except Exception:
            if not too_large:
                raise  # (the app may raise on the disconnect it was shown: that is expected)
        if too_large and not started:
            await error_response(RequestTooLarge(self.limit))(scope, receive, send)
