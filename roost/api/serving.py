"""Shared serving plumbing: submit prompts, merge their event streams, frame SSE."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from fastapi import Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from roost.api.errors import (
    APIError,
    ClientDisconnected,
    EngineFailure,
    ServiceUnavailable,
    error_body,
)
from roost.api.protocol import Usage
from roost.api.registry import ServedModel
from roost.engine.client import QueueFull, RequestStream
from roost.engine.params import SamplingParams
from roost.engine.sequence import Event, FinishReason

T = TypeVar("T")
DONE = "data: [DONE]\n\n"


def sse(payload: BaseModel | dict[str, Any]) -> str:
    """Frame one server-sent event."""
    if isinstance(payload, BaseModel):
        return f"data: {payload.model_dump_json()}\n\n"
    return f"data: {json.dumps(payload)}\n\n"


def submit_all(
    served: ServedModel, prompts: list[list[int]], params: SamplingParams
) -> list[RequestStream]:
    """Queue every prompt now; all or none (a full queue cancels what was queued)."""
    streams: list[RequestStream] = []
    try:
        for prompt in prompts:
            streams.append(served.client.submit(prompt, params))
    except QueueFull:
        for stream in streams:
            stream.cancel()
        raise ServiceUnavailable(
            "The server is busy: too many requests are waiting. Retry shortly.", "queue_full"
        ) from None
    return streams


async def merge(streams: list[RequestStream]) -> AsyncIterator[tuple[int, Event]]:
    """Events of several requests as they come, tagged with the request's index."""
    if len(streams) == 1:
        async for event in streams[0]:
            yield 0, event
        return
    queue: asyncio.Queue[tuple[int, Event]] = asyncio.Queue()

    async def pump(index: int, stream: RequestStream) -> None:
        async for event in stream:
            queue.put_nowait((index, event))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        remaining = len(streams)
        while remaining:
            index, event = await queue.get()
            remaining -= event.finish_reason is not None
            yield index, event
    finally:
        for task in tasks:
            task.cancel()


def check_event(event: Event) -> None:
    if event.finish_reason is FinishReason.ERROR:
        raise EngineFailure(f"generation failed: {event.error or 'engine error'}")


@dataclass
class Collected:
    """The non-streaming result of several requests."""

    texts: list[str]
    finish_reasons: list[str | None]
    usage: Usage = field(default_factory=Usage)


async def collect(streams: list[RequestStream]) -> Collected:
    result = Collected([""] * len(streams), [None] * len(streams))
    async for index, event in merge(streams):
        check_event(event)
        result.texts[index] += event.text
        if event.finish_reason is not None:
            result.finish_reasons[index] = event.finish_reason.value
            add_usage(result.usage, event)
    return result


def add_usage(usage: Usage, event: Event) -> None:
    usage.add(event.num_prompt_tokens, event.num_output_tokens, event.num_cached_tokens)


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


def stream_response(
    streams: list[RequestStream], frames: Callable[[], AsyncIterator[str]]
) -> StreamingResponse:
    """SSE response; whatever ends it (finish, error, disconnect) cancels every request."""

    async def body() -> AsyncIterator[str]:
        try:
            async for frame in frames():
                yield frame
        except APIError as exc:  # e.g. a later tool round no longer fits the context
            yield sse(exc.body())
            yield DONE
        except Exception:  # the status line is sent: report in-band, never a traceback
            yield sse(error_body("internal error", "server_error", None, "internal_error"))
            yield DONE
        finally:
            for stream in streams:
                stream.cancel()

    return StreamingResponse(
        body(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
