"""create_app: the FastAPI application, its error handlers and the model lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Callable

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from roost import __version__
from roost.api.access_log import AccessLog
from roost.api.auth import APIKeyGuard, KeyRing
from roost.api.errors import install_handlers
from roost.api.limits import BodySizeLimit
from roost.api.openapi import install_openapi
from roost.api.routes import root, v1
from roost.api.sessions import router as sessions
from roost.chat.server_tools import load_server_tool
from roost.config import Settings
from roost.engine.registry import ModelRegistry


def create_app(settings: Settings, on_fatal: Callable[[str], None] | None = None) -> FastAPI:
    """The app; `on_fatal` is told when the models can never load (the server should stop)."""
    registry = ModelRegistry(settings.resolved_models(), settings.sessions)
    server_tools = {tool.name: tool for tool in map(load_server_tool, settings.tools)}
    keys = KeyRing(settings)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        # load in the background: /health answers 503 "loading" meanwhile
        loading = asyncio.create_task(registry.load(on_fatal))
        if keys.file is not None:  # rotate keys without a restart: edit the file, send SIGHUP
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, keys.reload)
        try:
            yield
        finally:
            loading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loading
            await asyncio.to_thread(registry.close)

    app = FastAPI(title="roost", version=__version__, lifespan=lifespan)
    app.state.registry = registry
    app.state.settings = settings
    app.state.server_tools = server_tools
    app.add_middleware(BodySizeLimit, limit=settings.max_body_bytes)
    app.add_middleware(APIKeyGuard, keys=keys)
    if settings.cors_origins:  # outermost: a browser's preflight carries no API key
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["*"],
            allow_headers=["*"],
            expose_headers=["Retry-After"],
        )
    app.add_middleware(AccessLog)  # outermost: every request, refused or not
    install_handlers(app)
    app.include_router(root)
    app.include_router(v1)
    app.include_router(sessions)
    install_openapi(app)
    return app
