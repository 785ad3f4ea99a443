"""The one owner of every sequence id's cached tokens: which tokens each holds, for whom.

Nothing else writes a slot's tokens. The KV cells themselves change in the runner, which
executes what this bookkeeping decided (no llama calls here)."""

from __future__ import annotations

from dataclasses import dataclass

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


class Slot:
    """One sequence id of the context. `tokens` is exactly what its KV cells hold: read it,
    never write it (KVCache does)."""

    __slots__ = ("_tokens", "last_used", "owner", "seq_id")

    def __init__(self, seq_id: int) -> None:
        self.seq_id = seq_id
        self._tokens: list[int] = []
        self.owner: str | None = None  # request id while in use
        self.last_used = 0

    @property
    def tokens(self) -> list[int]:
        return self._tokens

    @property
    def is_idle(self) -> bool:
        return self.owner is None


@dataclass(frozen=True)
class Acquired:
    slot: Slot
    num_reused: int  # leading tokens already in the slot's KV that the request keeps
    copy_from: Slot | None = None  # copy this idle slot's whole KV into `slot` first


class KVCache:
    """Hands out sequence ids, reusing the idle cache that shares the longest prefix, and
    records every change to what each id caches: acquire, extend, trim, copy, release, evict.

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
        self.copy(best, slot)
        return self._claim(slot, owner, best_len, copy_from=best)

    def _claim(
        self, slot: Slot, owner: str, num_reused: int, copy_from: Slot | None = None
    ) -> Acquired:
        slot.owner = owner
        self.trim(slot, num_reused)
        return Acquired(slot, num_reused, copy_from)

    def extend(self, slot: Slot, tokens: list[int]) -> None:
        """The KV now also holds `tokens`, after the ones it held."""
        slot._tokens.extend(tokens)

    def trim(self, slot: Slot, keep: int) -> None:
        """The KV keeps only its first `keep` tokens."""
        del slot._tokens[keep:]

    def copy(self, src: Slot, dst: Slot) -> None:
        """`dst` now holds a copy of `src`'s whole KV."""
        dst._tokens = list(src._tokens)

    def release(self, slot: Slot, keep: bool = True) -> None:
        """Return a slot; with `keep`, its tokens stay cached for later prefix reuse."""
        self._clock += 1
        slot.owner = None
        if not keep:
            self.trim(slot, 0)
        slot.last_used = self._clock

    def evict(self) -> tuple[int, int] | None:
        """Empty the least recently used idle slot that still caches tokens: (its sequence
        id, the tokens it held), or None if no idle slot caches any."""
        cached = [slot for slot in self.slots if slot.is_idle and slot.tokens]
        slot = min(cached, key=lambda s: s.last_used, default=None)
        if slot is None:
            return None
        num_freed = len(slot.tokens)
        self.trim(slot, 0)
        return slot.seq_id, num_freed
