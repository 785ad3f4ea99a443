"""Which llama.cpp sequence id holds which tokens, and for whom (no llama calls here)."""

from __future__ import annotations

from dataclasses import dataclass, field

_BLOCK = 256


def common_prefix_len(a: list[int], b: list[int]) -> int:
    """Length of the common prefix; compares blocks in C before walking the last one."""
    limit = min(len(a), len(b))
    i = 0
    while i + _BLOCK <= limit and a[i : i + _BLOCK] == b[i : i + _BLOCK]:
        i += _BLOCK
    while i < limit and a[i] == b[i]:
        i += 1
    return i


@dataclass
class Slot:
    """One sequence id of the context. `tokens` is exactly what its KV cells hold."""

    seq_id: int
    tokens: list[int] = field(default_factory=list)
    owner: str | None = None  # request id while in use
    last_used: int = 0

    @property
    def is_idle(self) -> bool:
        return self.owner is None


@dataclass(frozen=True)
class Acquired:
    slot: Slot
    num_reused: int  # leading tokens already in the slot's KV that the request keeps


class SlotTable:
    """Hands out sequence ids, preferring the idle one whose cache shares the longest prefix."""

    def __init__(self, num_slots: int) -> None:
        self.slots = [Slot(seq_id=i) for i in range(num_slots)]
        self._clock = 0

    @property
    def num_cells_used(self) -> int:
        return sum(len(slot.tokens) for slot in self.slots)

    def has_idle(self) -> bool:
        return any(slot.is_idle for slot in self.slots)

    def acquire(self, owner: str, tokens: list[int], reuse: bool = True) -> Acquired | None:
        """Claim an idle slot; without `reuse` its cache is dropped, so take the least useful."""
        idle = [slot for slot in self.slots if slot.is_idle]
        if not idle:
            return None
        if reuse:
            best = max(idle, key=lambda s: (common_prefix_len(s.tokens, tokens), -s.last_used))
            # at least one token must be decoded again: its logits start generation
            num_reused = min(common_prefix_len(best.tokens, tokens), len(tokens) - 1)
        else:
            best, num_reused = min(idle, key=lambda s: (len(s.tokens), s.last_used)), 0
        best.owner = owner
        best.tokens = best.tokens[:num_reused]
        return Acquired(best, num_reused)

    def release(self, slot: Slot, kept: list[int]) -> None:
        """Return a slot; `kept` is what stays cached in its KV for later prefix reuse."""
        self._clock += 1
        slot.owner = None
        slot.tokens = kept
        slot.last_used = self._clock

    def evictable(self) -> Slot | None:
        """The least recently used idle slot that still caches tokens."""
        cached = [slot for slot in self.slots if slot.is_idle and slot.tokens]
        return min(cached, key=lambda s: s.last_used, default=None)
