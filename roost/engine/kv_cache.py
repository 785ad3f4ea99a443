"""The one owner of every sequence id's cached tokens: which tokens each holds, for whom.

Nothing else writes a slot's tokens. The KV cells themselves change in the runner, which
executes what this bookkeeping decided (no llama calls here)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from roost.engine.sessions import SessionKey

_BLOCK = 256
MIN_COPY_GAIN = 16  # compact mode: copy another slot's prefix only if it saves this many tokens
# prompt tokens decoded again even when all are cached: the last one's logits start generation,
# and llama.cpp's one-token decode computes them differently from the multi-token decode a cold
# prompt gets (with --no-flash-attn two tokens make them bit-identical)
MIN_RECOMPUTED = 2
# an idle slot's cache is resumed when the prompt keeps at least this share of it (llama-server's
# --slot-prompt-similarity): a shared system prompt alone does not make a conversation displace
# another's 1,500 tokens; it takes an empty or the least recently used slot instead
MIN_SIMILARITY = 0.1


def reusable_len(cached: list[int], tokens: list[int]) -> int:
    """Leading tokens of `cached` a prompt of `tokens` keeps: the shared prefix, but never its
    last MIN_RECOMPUTED tokens."""
    return max(0, min(common_prefix_len(cached, tokens), len(tokens) - MIN_RECOMPUTED))


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

    __slots__ = ("_tokens", "is_saved", "last_used", "owner", "seq_id", "session", "tenant")

    def __init__(self, seq_id: int) -> None:
        self.seq_id = seq_id
        self._tokens: list[int] = []
        self.owner: str | None = None  # request id while in use
        self.last_used = 0
        self.tenant = ""  # the API key owner whose tokens these are: nobody else reuses them
        self.session: SessionKey | None = None  # the named session these tokens belong to
        self.is_saved = False  # the session store holds exactly these tokens' state

    @property
    def tokens(self) -> list[int]:
        return self._tokens

    @property
    def is_idle(self) -> bool:
        return self.owner is None


@dataclass(frozen=True)
class Displaced:
    """What a slot held before a claim cut it: worth saving before its cells are reused."""

    tokens: list[int]
    tenant: str
    session: SessionKey | None


@dataclass(frozen=True)
class Acquired:
    slot: Slot
    num_reused: int  # leading tokens already in the slot's KV that the request keeps
    copy_from: Slot | None = None  # copy this idle slot's whole KV into `slot` first
    displaced: Displaced | None = None  # save it before anything else touches the slot
    is_hit: bool = False  # the slot held this conversation (its session, or a similar prefix)


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

    def acquire(
        self,
        owner: str,
        tokens: list[int],
        reuse: bool = True,
        tenant: str = "",
        session: SessionKey | None = None,
    ) -> Acquired | None:
        """Claim an idle slot and say how many leading tokens of its KV the request keeps: the
        slot of its session if idle, else the tenant's that shares the longest prefix, if that
        is a real share of what it holds (MIN_SIMILARITY), else an empty or the LRU slot.

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
            return self._claim(slot, owner, 0, tenant, session)

        def reusable(slot: Slot) -> int:
            if slot.tenant != tenant:
                return 0
            return reusable_len(slot.tokens, tokens)

        def is_own(slot: Slot) -> bool:
            return session is not None and slot.session == session

        def worth(slot: Slot) -> int:
            """Tokens reused if the slot holds this conversation, else 0."""
            size = reusable(slot)
            return size if size > 0 and size >= MIN_SIMILARITY * len(slot.tokens) else 0

        # its own session's slot, else the most similar, else an empty one, else the LRU
        best = max(idle, key=lambda s: (is_own(s), worth(s), not s.tokens, -s.last_used))
        best_hit = is_own(best) or worth(best) > 0
        if not self.compact:
            return self._claim(best, owner, reusable(best), tenant, session, is_hit=best_hit)
        slot = min(idle, key=lambda s: s.seq_id)
        own_len = reusable(slot)
        # a copy moves the whole stream (5-12 ms here): only for a real gain over the slot's own
        if not best_hit or reusable(best) - own_len < MIN_COPY_GAIN:
            is_hit = is_own(slot) or worth(slot) > 0
            return self._claim(slot, owner, own_len, tenant, session, is_hit=is_hit)
        displaced = _displaced(slot, 0)
        self.copy(best, slot)
        if is_own(best):  # the session moves with its tokens: one slot holds it, not two
            best.session, best.is_saved = None, True  # (its content is `slot`'s to save)
        return self._claim(slot, owner, reusable(best), tenant, session, best, displaced, True)

    def _claim(
        self,
        slot: Slot,
        owner: str,
        num_reused: int,
        tenant: str,
        session: SessionKey | None,
        copy_from: Slot | None = None,
        displaced: Displaced | None = None,
        is_hit: bool = False,
    ) -> Acquired:
        if copy_from is None:
            keeps_session = session is not None and slot.session == session
            displaced = _displaced(slot, len(slot.tokens) if keeps_session else num_reused)
        slot.owner, slot.tenant, slot.session = owner, tenant, session
        self.trim(slot, num_reused)
        return Acquired(slot, num_reused, copy_from, displaced, is_hit)

    def extend(self, slot: Slot, tokens: list[int]) -> None:
        """The KV now also holds `tokens`, after the ones it held."""
        slot._tokens.extend(tokens)
        slot.is_saved = False

    def trim(self, slot: Slot, keep: int) -> None:
        """The KV keeps only its first `keep` tokens."""
        if keep < len(slot._tokens):
            del slot._tokens[keep:]
            slot.is_saved = False

    def copy(self, src: Slot, dst: Slot) -> None:
        """`dst` now holds a copy of `src`'s whole KV."""
        dst._tokens = list(src._tokens)
        dst.tenant = src.tenant
        dst.is_saved = False

    def restored(self, slot: Slot, tokens: list[int]) -> None:
        """The KV now holds a saved state of exactly these tokens."""
        slot._tokens = list(tokens)
        slot.is_saved = True

    def saved(self, slot: Slot) -> None:
        """The session store now holds this slot's state as it is."""
        slot.is_saved = True

    def forget_session(self, session: SessionKey) -> list[int]:
        """Idle slots holding `session` forget it and its tokens (a deleted session): their
        sequence ids."""
        forgotten = []
        for slot in self.slots:
            if slot.session == session and slot.is_idle:
                slot.session = None
                self.trim(slot, 0)
                forgotten.append(slot.seq_id)
        return forgotten

    def release(self, slot: Slot, keep: bool = True) -> None:
        """Return a slot; with `keep`, its tokens stay cached for later prefix reuse."""
        self._clock += 1
        slot.owner = None
        if not keep:
            self.trim(slot, 0)
        slot.last_used = self._clock

    def evict(self) -> tuple[int, int, Displaced | None] | None:
        """Empty the least recently used idle slot that still caches tokens: (its sequence
        id, the tokens it held, its content if worth saving), or None if no idle slot caches."""
        cached = [slot for slot in self.slots if slot.is_idle and slot.tokens]
        slot = min(cached, key=lambda s: s.last_used, default=None)
        if slot is None:
            return None
        num_freed, displaced = len(slot.tokens), _displaced(slot, 0)
        self.trim(slot, 0)
        slot.session = None
        return slot.seq_id, num_freed, displaced


def _displaced(slot: Slot, keep: int) -> Displaced | None:
    """The slot's content if a claim keeping `keep` tokens loses any not already saved."""
    if keep >= len(slot.tokens) or slot.is_saved:
        return None
    return Displaced(list(slot.tokens), slot.tenant, slot.session)
