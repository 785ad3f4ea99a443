"""One model's CPU threads, split between its contexts while more than one has work."""

from __future__ import annotations

import threading


class CpuShare:
    """Threads for each busy user of a model's CPUs, so that together they never oversubscribe.

    llama.cpp's worker threads spin while they wait for each other: two contexts decoding at
    once with all threads each run slower together than one after the other. A user alone gets
    every thread; while several are busy each gets an equal share, and users registered first
    (the generation context) get the remainder. Shares are read at the start of each decode.
    """

    def __init__(self, num_threads: int) -> None:
        self.num_threads = num_threads
        self._users: list[str] = []  # in registration order: earlier ones get the remainder
        self._busy: set[str] = set()
        self._lock = threading.Lock()

    def register(self, user: str) -> None:
        with self._lock:
            self._users.append(user)

    def threads(self, user: str, is_busy: bool = True) -> int:
        """Mark `user` busy (or idle) and return the threads it may use now."""
        with self._lock:
            if is_busy:
                self._busy.add(user)
            else:
                self._busy.discard(user)
            busy = [u for u in self._users if u in self._busy] or [user]
            share, remainder = divmod(self.num_threads, len(busy))
            rank = busy.index(user) if user in busy else 0
            return max(1, share + (1 if rank < remainder else 0))

    def idle_if(self, user: str, is_idle: bool) -> bool:
        """Pass `is_idle` through, giving an idle user's share back (a loop's `block` flag)."""
        if is_idle:
            self.threads(user, is_busy=False)
        return is_idle
