"""Streams to HTTP: SSE framing, whole answers collected, and a client that goes away."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from fastapi import Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from roost.api.errors import ClientDisconnected, error_body, error_json
from roost.chat.generation import TokenCounts, check_event, started
from roost.engine.client import RequestStream
from roost.engine.logprobs import TokenLogprob
from roost.errors import RoostError
from roost.streams import merge

log = logging.getLogger("roost.api")

T = TypeVar("T")
DONE = "data: [DONE]\n\n"


def sse(payload: BaseModel | dict[str, Any]) -> str:
    """Frame one server-sent event."""
    if isinstance(payload, BaseModel):
        return f"data: {payload.model_dump_json()}\n\n"
    return f"data: {json.dumps(payload)}\n\n"


@dataclass
class ChoiceResult:
    """One choice's whole output (non-streaming)."""

    text: str = ""
    finish_reason: str | None = None
    logprobs: list[TokenLogprob] = field(default_factory=list)
    prompt_logprobs: list[TokenLogprob | None] | None = None


async def collect(streams: list[RequestStream]) -> tuple[list[ChoiceResult], TokenCounts]:
    """Every choice's whole output, and the tokens they used."""
    results, usage = [ChoiceResult() for _ in streams], TokenCounts()
    async for index, event in merge(streams):
        check_event(event)
        result = results[index]
        result.text += event.text
        result.logprobs += event.logprobs
        if event.prompt_logprobs is not None:
            result.prompt_logprobs = event.prompt_logprobs
        if event.finish_reason is not None:
            result.finish_reason = event.finish_reason.value
            usage.add(event)
    return results, usage


async def until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Run `work`, cancelling it if the client goes away first (no polling: one receive())."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.create_task(_wait_disconnect(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        raise ClientDisconnected("client disconnected")
    return task.result()


async def _wait_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def stream_response(
    request: Request, streams: list[RequestStream], frames: AsyncIterator[str]
) -> StreamingResponse:
    """SSE response, its status sent once the request has started: one refused before (a
    queue timeout) is still an HTTP error. Whatever ends it (finish, error, disconnect)
    cancels every request."""
    try:
        if streams:
            await until_disconnect(request, started(streams))
    except BaseException:
        for stream in streams:
            stream.cancel()
        raise

    async def body() -> AsyncIterator[str]:
        try:
            async for frame in frames:
                yield frame
        except RoostError as exc:  # e.g. a later tool round no longer fits the context
            yield sse(error_json(exc))
            yield DONE
        except Exception:  # the status line is sent: report in-band, never a traceback
            log.exception("stream failed (%s)", ", ".join(s.request_id for s in streams))
            yield sse(error_body("internal error", "server_error", None, "internal_error"))
            yield DONE
        finally:
            await frames.aclose()  # type: ignore[attr-defined]
            for stream in streams:
                stream.cancel()

    return StreamingResponse(
        body(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
