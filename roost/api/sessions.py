"""Named sessions: which one a request resumes (`X-Session-ID` or `user`), and
/v1/sessions to list, inspect and delete them. A session belongs to the API key that made it."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import time
from typing import Any

from fastapi import APIRouter, Request

from roost.api.auth import KEY_NAME
from roost.api.body import UnicodeJSONRoute
from roost.engine.registry import ModelRegistry
from roost.engine.sessions import MAX_SESSION_ID, SessionKey, SessionRef, Tier
from roost.errors import ErrorKind, InvalidRequest, RoostError, SessionBusy

HEADER = "x-session-id"
FORGET_TIMEOUT = 10.0  # seconds an engine has to drop a deleted session's hot copy


class SessionNotFound(RoostError):
    kind = ErrorKind.NOT_FOUND
    code = "session_not_found"

    def __init__(self) -> None:
        super().__init__("No such session", param="session_id")


def tenant_of(request: Request) -> str:
    """Who is asking: a hash of the name of the API key offered (empty when the server has no
    keys). A key rotated under the same name keeps its sessions."""
    name = request.scope.get(KEY_NAME)
    if name is None:
        return ""
    return hmac.new(b"roost-tenant", name.encode(), hashlib.sha256).hexdigest()[:32]


def session_of(request: Request, user: str | None) -> SessionRef:
    """The session a request names: the X-Session-ID header, else the `user` field."""
    tenant = tenant_of(request)
    header = request.headers.get(HEADER)
    name, param = (header, "X-Session-ID") if header is not None else (user, "user")
    if not name:  # OpenAI accepts an empty `user`: no session, anonymous reuse only
        return SessionRef(tenant)
    if len(name) > MAX_SESSION_ID:
        raise InvalidRequest(f"a session id has at most {MAX_SESSION_ID} characters", param=param)
    return SessionRef(tenant, SessionKey(tenant, name), param)


router = APIRouter(prefix="/v1/sessions", route_class=UnicodeJSONRoute)


@router.get("")
async def list_sessions(request: Request) -> dict[str, Any]:
    registry: ModelRegistry = request.app.state.registry
    items = _items(registry, tenant_of(request))
    named = [item for item in items if item["id"] is not None]
    totals = {tier.value: {"sessions": 0, "bytes": 0} for tier in Tier}
    for item in items:
        totals[item["tier"]]["sessions"] += 1
        totals[item["tier"]]["bytes"] += item["bytes"]
    store = registry.sessions
    hits = dict(store.stats.hits) if store else {}
    return {
        "object": "list",
        "data": named,
        "totals": totals,  # anonymous states (found by their tokens) included
        "hits": hits,
        "misses": store.stats.misses if store else 0,
    }


@router.get("/{session_id:path}")
async def get_session(session_id: str, request: Request) -> dict[str, Any]:
    registry: ModelRegistry = request.app.state.registry
    found = [i for i in _items(registry, tenant_of(request)) if i["id"] == session_id]
    if not found:
        raise SessionNotFound()
    return {"object": "session", "id": session_id, "data": found}


@router.delete("/{session_id:path}")
async def delete_session(session_id: str, request: Request) -> dict[str, Any]:
    registry: ModelRegistry = request.app.state.registry
    key = SessionKey(tenant_of(request), session_id)
    found = [i for i in _items(registry, key.owner) if i["id"] == session_id]
    engines = [served.engine for served in registry.models.values() if served.engine]
    if any(engine.is_busy(key) for engine in engines):
        raise SessionBusy("session_id")
    for served in registry.models.values():
        if served.engine is not None:  # its hot copy, on the engine thread
            forgotten = asyncio.wrap_future(served.engine.engine.forget(key))
            with contextlib.suppress(TimeoutError):  # an engine that stopped answering
                await asyncio.wait_for(forgotten, FORGET_TIMEOUT)
        if registry.sessions is not None:
            registry.sessions.drop(served.name, key)  # RAM and disk
    if not found:
        raise SessionNotFound()
    return {"object": "session.deleted", "id": session_id, "deleted": True}


def _items(registry: ModelRegistry, tenant: str) -> list[dict[str, Any]]:
    """One item per (session, model): hot ones from the engines, the rest from the store."""
    items: dict[tuple[str, SessionKey], dict[str, Any]] = {}
    if registry.sessions is not None:
        for saved in registry.sessions.entries(tenant):
            items[(saved.model, saved.key)] = {
                "id": saved.key.name,
                "object": "session",
                "model": saved.model,
                "tokens": len(saved.tokens),
                "tier": saved.tier.value,
                "bytes": saved.num_bytes,
                "last_used": int(saved.last_used),
            }
    now = int(time.time())
    for served in registry.models.values():
        if served.engine is None:
            continue
        per_token = served.model.kv_bytes_per_token()
        for slot in served.engine.engine.cache.slots:
            key = slot.session
            if key is None or key.owner != tenant or not slot.tokens:
                continue
            item = items.setdefault((served.name, key), {"id": key.name, "object": "session"})
            item.update(
                model=served.name,
                tokens=len(slot.tokens),
                tier=Tier.HOT.value,
                bytes=len(slot.tokens) * per_token,
                last_used=now if not slot.is_idle else item.get("last_used", now),
            )
    return list(items.values())
