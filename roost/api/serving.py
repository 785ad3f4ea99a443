"""Shared serving plumbing: submit prompts, merge their event streams, frame SSE."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Generic, TypeVar

from fastapi import Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from roost.api.errors import (
    APIError,
    ClientDisconnected,
    EngineFailure,
    InvalidRequest,
    ServiceUnavailable,
    error_body,
)
from roost.api.protocol import Usage
from roost.api.registry import ServedModel
from roost.engine.client import QueueFull, RequestStream
from roost.engine.logprobs import TokenLogprob
from roost.engine.params import SamplingParams
from roost.engine.sequence import Event, FinishReason

log = logging.getLogger("roost.api")

T = TypeVar("T")
DONE = "data: [DONE]\n\n"


def sse(payload: BaseModel | dict[str, Any]) -> str:
    """Frame one server-sent event."""
    if isinstance(payload, BaseModel):
        return f"data: {payload.model_dump_json()}\n\n"
    return f"data: {json.dumps(payload)}\n\n"


def choice_params(params: SamplingParams, n: int) -> list[SamplingParams]:
    """n choices of one prompt; with a seed, choice j draws with seed + j (distinct, repeatable)."""
    seed = params.sampler.seed
    if seed is None:
        return [params] * n
    return [replace(params, sampler=replace(params.sampler, seed=seed + j)) for j in range(n)]


def submit_all(
    served: ServedModel, prompts: list[list[int]], params: SamplingParams, n: int = 1
) -> list[RequestStream]:
    """Queue n choices per prompt (stream i * n + j); all or none (a full queue cancels all)."""
    capacity = served.client.max_in_flight
    if len(prompts) * n > capacity:  # could never be queued: retrying a 503 would not help
        raise InvalidRequest(
            f"{len(prompts)} prompt(s) x {n} choices need {len(prompts) * n} sequences; this "
            f"model holds at most {capacity} at once (parallel + max_waiting)",
            param="n",
        )
    streams: list[RequestStream] = []
    try:
        for prompt in prompts:
            streams += served.client.submit_group(prompt, choice_params(params, n))
    except QueueFull:
        for stream in streams:
            stream.cancel()
        raise ServiceUnavailable(
            "The server is busy: too many requests are waiting. Retry shortly.", "queue_full"
        ) from None
    return streams


@dataclass
class _Item(Generic[T]):
    index: int
    value: T | None = None
    error: BaseException | None = None
    is_end: bool = False


async def merge(sources: Sequence[AsyncIterator[T]]) -> AsyncIterator[tuple[int, T]]:
    """Items of several async iterators as they come, tagged with the source's index."""
    if len(sources) == 1:
        async for value in sources[0]:
            yield 0, value
        return
    queue: asyncio.Queue[_Item[T]] = asyncio.Queue()

    async def pump(index: int, source: AsyncIterator[T]) -> None:
        try:
            async for value in source:
                queue.put_nowait(_Item(index, value))
        except Exception as exc:  # re-raised in the consumer
            queue.put_nowait(_Item(index, error=exc))
        queue.put_nowait(_Item(index, is_end=True))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(sources)]
    try:
        remaining = len(sources)
        while remaining:
            item = await queue.get()
            if item.error is not None:
                raise item.error
            if item.is_end:
                remaining -= 1
                continue
            yield item.index, item.value  # type: ignore[misc]
    finally:
        # a source generator may be closed only once its pump has really stopped
        await cancel_and_wait(tasks)


async def cancel_and_wait(tasks: Sequence[asyncio.Future[Any]]) -> None:
    """Cancel tasks and wait until each has stopped (whatever it raised)."""
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def check_event(event: Event) -> None:
    if event.finish_reason is FinishReason.ERROR:
        raise EngineFailure(f"generation failed: {event.error or 'engine error'}")


@dataclass
class ChoiceResult:
    """One choice's whole output (non-streaming)."""

    text: str = ""
    finish_reason: str | None = None
    logprobs: list[TokenLogprob] = field(default_factory=list)
    prompt_logprobs: list[TokenLogprob | None] | None = None


async def collect(streams: list[RequestStream]) -> tuple[list[ChoiceResult], Usage]:
    results, usage = [ChoiceResult() for _ in streams], Usage()
    async for index, event in merge(streams):
        check_event(event)
        result = results[index]
        result.text += event.text
        result.logprobs += event.logprobs
        if event.prompt_logprobs is not None:
            result.prompt_logprobs = event.prompt_logprobs
        if event.finish_reason is not None:
            result.finish_reason = event.finish_reason.value
            add_usage(usage, event)
    return results, usage


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
            log.exception("stream failed (%s)", ", ".join(s.request_id for s in streams))
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
