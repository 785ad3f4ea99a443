"""The message queue an engine-side thread blocks on when idle (it never polls)."""

from __future__ import annotations

import queue
from collections.abc import Callable

STOP = object()  # put last: the thread finishes


class Inbox:
    """Messages from other threads, applied in order by the owning thread."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()

    def put(self, item: object) -> None:
        self._queue.put(item)

    def drain(self, apply: Callable[[object], None], block: bool) -> bool:
        """Apply every queued message, first waiting for one if `block`; False on STOP."""
        try:
            item = self._queue.get(block=block)
            while True:
                if item is STOP:
                    return False
                apply(item)
                item = self._queue.get_nowait()
        except queue.Empty:
            return True
