"""API keys, checked before routing and body parsing (pure ASGI: no per-chunk cost).

Keys have names: `api_key` is named "default", `api_keys` maps names to keys, and
`api_key_file` holds one `name: key` a line (re-read on SIGHUP, so keys rotate without a
restart). A request's key name, never the key, is what the rest of roost sees."""

from __future__ import annotations

import hmac
import logging

from starlette.types import ASGIApp, Receive, Scope, Send

from roost.api.errors import InvalidAPIKey, error_response
from roost.config import Settings, read_key_file

log = logging.getLogger("roost.auth")

# everything else needs the key, unknown paths included: a keyless caller learns nothing
PUBLIC_PATHS = frozenset({"/health", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})
KEY_NAME = "roost.key_name"  # where the guard leaves the name, in the ASGI scope


class KeyRing:
    """The keys the server accepts, by name."""

    def __init__(self, settings: Settings) -> None:
        self._fixed = {name: key.get_secret_value() for name, key in settings.api_keys.items()}
        if settings.api_key is not None:
            self._fixed["default"] = settings.api_key.get_secret_value()
        self.file = settings.api_key_file
        self._keys = self._load()

    @property
    def is_enabled(self) -> bool:
        return bool(self._keys) or self.file is not None

    def _load(self) -> list[tuple[bytes, str]]:
        keys = dict(self._fixed)
        if self.file is not None:
            keys.update(read_key_file(self.file))
        return [(key.encode(), name) for name, key in keys.items()]

    def reload(self) -> None:
        """Re-read the key file (SIGHUP); a file that cannot be read keeps the old keys."""
        try:
            self._keys = self._load()
        except (OSError, ValueError) as exc:
            log.error("API keys not reloaded, the old ones stay: %s", exc)
            return
        log.info("API keys reloaded: %s", ", ".join(sorted(name for _, name in self._keys)))

    def name_of(self, offered: bytes) -> str | None:
        """The name of the key offered, or None. Every key is compared, in constant time."""
        found = None
        for key, name in self._keys:
            if hmac.compare_digest(offered, key):
                found = name
        return found


class APIKeyGuard:
    """401 `invalid_api_key` unless `Authorization: Bearer <key>` or `X-Api-Key: <key>` is one
    of the ring's keys; the key's name goes into the scope for whoever needs an owner."""

    def __init__(self, app: ASGIApp, keys: KeyRing) -> None:
        self.app = app
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.keys.is_enabled:
            name = self.keys.name_of(offered_key(scope))
            if name is None and scope["path"] not in PUBLIC_PATHS:
                await error_response(InvalidAPIKey())(scope, receive, send)
                return
            scope[KEY_NAME] = name
        await self.app(scope, receive, send)


def offered_key(scope: Scope) -> bytes:
    """The key a request offers: a Bearer token, else X-Api-Key, else empty."""
    headers = dict(scope["headers"])  # ASGI header names are lower-case bytes
    authorization = headers.get(b"authorization", b"")
    if authorization[:7].lower() == b"bearer ":
        return authorization[7:].strip()
    return headers.get(b"x-api-key", b"")
