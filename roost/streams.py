"""Asyncio helpers for many event streams at once: merge them, cancel them and wait."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

T = TypeVar("T")


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
