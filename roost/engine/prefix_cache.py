"""Which llama.cpp sequence id holds which tokens, and for whom (no llama calls here)."""

from __future__ import annotations

from dataclasses import dataclass, field

_BLOCK = 256
MIN_COPY_GAIN = 16  # compact mode: copy another slot's prefix only if it saves this many tokens
# prompt tokens decoded again even when all are cached: the last one's logits start generation,
# and llama.cpp's one-token decode computes them differently from the multi-token decode a cold
# prompt gets (with --no-flash-attn two tokens make them bit-identical)
MIN_RECOMPUTED = 2


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
    copy_from: Slot | None = None  # copy this idle slot's whole KV into `slot` first


class SlotTable:
    """Hands out sequence ids, reusing the idle cache that shares the longest prefix.

    `compact` (a split KV cache, one stream per sequence): llama.cpp attends over every stream
    from the lowest to the highest sequence id in a batch, so 4 sequences on ids 0, 5, 9, 14
    decode ~1.6x slower than on 0-3. Running sequences then always take the lowest idle id, and
    a cached prefix held by another idle slot is copied over (a whole-stream copy).
    """

    def __init__(self, num_slots: int, compact: bool = False) -> None:
        self.slots = [Slot(seq_id=i) for i in range(num_slots)]
        self.compact = compact
        self._clock = 0

    @property
    def num_cells_used(self) -> int:
        return sum(len(slot.tokens) for slot in self.slots)

    def has_idle(self) -> bool:
        return any(slot.is_idle for slot in self.slots)

    def acquire(self, owner: str, tokens: list[int], reuse: bool = True) -> Acquired | None:
        """Claim an idle slot and say how many leading tokens of its KV the request keeps.

        Without `reuse` the cache is dropped, so take the least useful slot (compact: the
        lowest id, as always)."""
        idle = [slot for slot in self.slots if slot.is_idle]
        if not idle:
            return None
        if not reuse:
            if self.compact:
                slot = min(idle, key=lambda s: s.seq_id)
            else:
                slot = min(idle, key=lambda s: (len(s.tokens), s.last_used))
            return self._claim(slot, owner, 0)

        def reusable(slot: Slot) -> int:
            return max(0, min(common_prefix_len(slot.tokens, tokens), len(tokens) - MIN_RECOMPUTED))

        best = max(idle, key=lambda s: (reusable(s), -s.last_used))
        best_len = reusable(best)
        if not self.compact:
            return self._claim(best, owner, best_len)
        slot = min(idle, key=lambda s: s.seq_id)
        own_len = reusable(slot)
        # a copy moves the whole stream (5-12 ms here): only for a real gain over the slot's own
        if best_len - own_len < MIN_COPY_GAIN:
            return self._claim(slot, owner, own_len)
        slot.tokens = best.tokens
        return self._claim(slot, owner, best_len, copy_from=best)

    def _claim(
        self, slot: Slot, owner: str, num_reused: int, copy_from: Slot | None = None
    ) -> Acquired:
        slot.owner = owner
        slot.tokens = slot.tokens[:num_reused]
        return Acquired(slot, num_reused, copy_from)

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
