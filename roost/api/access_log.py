"""One log line per HTTP request, with the name of the API key that made it (never the key,
never the body): `roost.access` at INFO, written when the response has ended."""

from __future__ import annotations

import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from roost.api.auth import KEY_NAME

log = logging.getLogger("roost.access")


class AccessLog:
    """Pure ASGI and outermost, so a refused request (401, 413) is logged too; a stream is
    logged when its last byte has gone or its client has left."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not log.isEnabledFor(logging.INFO):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status: int | None = None

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            client = scope.get("client")
            log.info(
                '%s "%s %s" %s %.0f ms key=%s',
                client[0] if client else "-",
                scope["method"],
                scope["path"],
                status if status is not None else "-",
                (time.perf_counter() - started) * 1000,
                scope.get(KEY_NAME) or "-",
            )
