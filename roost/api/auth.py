"""The optional API key, checked before routing and body parsing (pure ASGI: no per-chunk cost)."""

from __future__ import annotations

import hmac

from starlette.types import ASGIApp, Receive, Scope, Send

from roost.api.errors import InvalidAPIKey, error_response

# everything else needs the key, unknown paths included: a keyless caller learns nothing
PUBLIC_PATHS = frozenset({"/health", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})


class APIKeyGuard:
    """401 `invalid_api_key` unless `Authorization: Bearer <key>` or `X-Api-Key: <key>`."""

    def __init__(self, app: ASGIApp, api_key: str | None) -> None:
        self.app = app
        self.expected = api_key.encode() if api_key else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            self.expected is not None
            and scope["type"] == "http"
            and scope["path"] not in PUBLIC_PATHS
            and not hmac.compare_digest(offered_key(scope), self.expected)
        ):
            await error_response(InvalidAPIKey())(scope, receive, send)
            return
        await self.app(scope, receive, send)


def offered_key(scope: Scope) -> bytes:
    """The key a request offers: a Bearer token, else X-Api-Key, else empty."""
    headers = dict(scope["headers"])  # ASGI header names are lower-case bytes
    authorization = headers.get(b"authorization", b"")
    if authorization[:7].lower() == b"bearer ":
        return authorization[7:].strip()
    return headers.get(b"x-api-key", b"")
