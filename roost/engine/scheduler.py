"""Waiting and running queues, and the token budget that turns them into one batch plan."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from roost.engine.kv_cache import Displaced, KVCache, reusable_len
from roost.engine.sequence import SeqStatus, Sequence, Ticket
from roost.engine.sessions import ModelSessions, SessionKey, Tier, anonymous

# prompt chunks whose every row keeps its logits (echo with logprobs) stay small: llama.cpp
# sizes its output buffer to the largest such batch (rows times vocabulary floats)
PROMPT_LOGITS_CHUNK = 128


@dataclass(frozen=True)
class Chunk:
    """Tokens `seq.tokens[start:start + count]` go into this step's batch."""

    seq: Sequence
    start: int
    count: int

    @property
    def wants_logits(self) -> bool:
        return self.start + self.count == len(self.seq.tokens)


@dataclass(frozen=True)
class Save:
    """Copy a sequence id's state to the session store before its cells are reused."""

    seq_id: int
    key: SessionKey
    tokens: list[int]


@dataclass(frozen=True)
class Restore:
    """Load a saved state into a sequence's slot, then keep its first `keep` tokens."""

    seq: Sequence
    tokens: list[int]
    state: np.ndarray
    keep: int


@dataclass
class Plan:
    """One step: saves, whole-sequence KV copies (src, dst), KV trims (seq_id, keep),
    restores, then one decode over the chunks. `started`: requests admitted for the first time."""

    started: list[Ticket] = field(default_factory=list)
    saves: list[Save] = field(default_factory=list)
    copies: list[tuple[int, int]] = field(default_factory=list)
    trims: list[tuple[int, int]] = field(default_factory=list)
    restores: list[Restore] = field(default_factory=list)
    chunks: list[Chunk] = field(default_factory=list)


class Scheduler:
    """FIFO admission into free sequence ids; decoding tokens first, then prompt chunks."""

    def __init__(
        self,
        cache: KVCache,
        num_ctx: int,
        num_batch: int,
        sessions: ModelSessions | None = None,
    ) -> None:
        self.cache = cache
        self.sessions = sessions  # saved states beyond the context; None: none kept
        self.num_ctx = num_ctx
        self.num_batch = num_batch
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []

    def has_work(self) -> bool:
        return bool(self.running or self.waiting)

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def remove(self, seq: Sequence) -> None:
        """Take a sequence out of the queues; its computed tokens stay cached in its slot."""
        if seq in self.waiting:
            self.waiting.remove(seq)
        if seq in self.running:
            self.running.remove(seq)
        if seq.slot is not None:
            self.cache.release(seq.slot)
            seq.slot = None
        seq.unlink_followers()
        seq.leader = None

    def find(self, request_id: str) -> Sequence | None:
        for seq in (*self.running, *self.waiting):
            if seq.request_id == request_id:
                return seq
        return None

    def expire(self, now: float, limit: float) -> list[Sequence]:
        """Take out the sequences of requests that have waited more than `limit` seconds
        without starting. The queue is in arrival order (a preempted sequence put back at its
        head has started), so the search ends at the first one still within its time."""
        expired = []
        for seq in self.waiting:
            if seq.ticket.is_settled:
                continue
            if now - seq.ticket.queued_at <= limit:
                break
            expired.append(seq)
        for seq in expired:
            self.waiting.remove(seq)
        return expired

    def schedule(self) -> Plan:
        plan = Plan()
        self._admit(plan)
        free = self.num_ctx - self.cache.num_cells_used
        budget = self.num_batch
        # decoding sequences first (1 token each, latency matters), then prompts FCFS
        ordered = sorted(self.running, key=lambda s: s.status is not SeqStatus.DECODE)
        for seq in ordered:
            if seq.slot is None or budget == 0 or seq.is_waiting_for_leader or seq.is_restoring:
                continue  # preempted earlier, the batch is full, n > 1, or loading its state
            want = min(seq.num_uncomputed, budget)
            if seq.needs_prompt_logits:
                want = min(want, PROMPT_LOGITS_CHUNK)
            if want > free:
                # only a generating sequence may preempt; a prompt waits for room instead
                may_preempt = seq.status is SeqStatus.DECODE
                free += self._make_room(want - free, plan, seq, may_preempt)
            count = min(want, free)
            if count <= 0:
                continue
            plan.chunks.append(Chunk(seq, seq.num_computed, count))
            free -= count
            budget -= count
        return plan

    def _admit(self, plan: Plan) -> None:
        while self.waiting:
            seq = self.waiting[0]
            if not self._has_room_for(seq):
                return  # FIFO: the head waits, and so do those behind it
            # a follower's KV will be the leader's copy; prompt logprobs need every position
            reuse = not (seq.is_waiting_for_leader or seq.needs_prompt_logits)
            acquired = self.cache.acquire(
                seq.request_id, seq.tokens, reuse, seq.tenant, seq.session
            )
            if acquired is None:
                return
            self.waiting.popleft()
            seq.slot = acquired.slot
            seq.num_computed = acquired.num_reused
            if acquired.displaced is not None:
                self._save(plan, acquired.slot.seq_id, acquired.displaced)
            if reuse:
                self._resume(plan, seq, is_hot=acquired.is_hit)
            if not seq.is_admitted_once:
                seq.num_cached = seq.num_computed  # from the slot's cache or a saved state
                seq.is_admitted_once = True
                if not seq.ticket.is_settled:
                    plan.started.append(seq.ticket)
            seq.status = SeqStatus.PREFILL if seq.num_uncomputed > 1 else SeqStatus.DECODE
            if acquired.copy_from is not None:
                plan.copies.append((acquired.copy_from.seq_id, acquired.slot.seq_id))
            plan.trims.append((acquired.slot.seq_id, acquired.num_reused))
            self.running.append(seq)

    def _save(self, plan: Plan, seq_id: int, content: Displaced) -> None:
        if (save := self.save_of(seq_id, content)) is not None:
            plan.saves.append(save)

    def save_of(self, seq_id: int, content: Displaced) -> Save | None:
        """The save that keeps what a slot held in the session store, if it is worth keeping."""
        if self.sessions is None or len(content.tokens) < self.sessions.min_tokens:
            return None
        key = content.session or anonymous(content.tenant, content.tokens)
        return Save(seq_id, key, content.tokens)

    def _resume(self, plan: Plan, seq: Sequence, is_hot: bool) -> None:
        """Restore a saved state when it holds more of the prompt than the slot does."""
        if self.sessions is None:
            return
        saved = self.sessions.find(seq.session, seq.tenant, seq.tokens)
        state = saved.state if saved is not None else None
        if saved is None or state is None:
            self.sessions.count(Tier.HOT if is_hot else None)
            return
        keep = reusable_len(saved.tokens, seq.tokens)
        if keep - seq.num_computed < self.sessions.min_tokens:  # not worth a restore
            self.sessions.count(Tier.HOT if is_hot else None)
            return
        plan.restores.append(Restore(seq, saved.tokens, state, keep))
        self.sessions.count(Tier.DISK if saved.was_on_disk else Tier.RAM)
        self.sessions.used(saved)
        seq.num_computed = keep
        seq.is_restoring = True

    def _has_room_for(self, seq: Sequence) -> bool:
        """Unified cache: start a sequence only if all its tokens fit beside the running ones
        (idle caches can be evicted) with a cell each for their next token. Else a generating
        sequence would preempt it before its prompt is done, and again at every admission:
        two requests overflowing the cache together took 13x their time alone."""
        # compact slots mean a split cache: every sequence has cells of its own
        if self.cache.compact or not self.running or seq.is_waiting_for_leader:
            return True  # (a follower's prompt cells are the leader's, shared)
        held = sum(len(s.slot.tokens) for s in self.running if s.slot is not None)
        return len(seq.tokens) <= self.num_ctx - held - len(self.running)

    def _make_room(self, needed: int, plan: Plan, keep: Sequence, may_preempt: bool) -> int:
        """Free KV cells: drop idle caches (LRU) first, then preempt the newest sequences."""
        freed = 0
        while freed < needed and (evicted := self.cache.evict()) is not None:
            seq_id, num_freed, displaced = evicted
            if displaced is not None:
                self._save(plan, seq_id, displaced)
            freed += num_freed
            plan.trims.append((seq_id, 0))
        planned = {id(chunk.seq) for chunk in plan.chunks}
        victims = [s for s in self.running if s is not keep and id(s) not in planned]
        while may_preempt and freed < needed and victims:
            victim = victims.pop()
            victim.unlink_followers()
            self.running.remove(victim)
            assert victim.slot is not None
            freed += len(victim.slot.tokens)
            # swapped out: its state is saved, and restored when it is admitted again
            self._save(
                plan,
                victim.slot.seq_id,
                Displaced(list(victim.slot.tokens), victim.tenant, victim.session),
            )
            plan.trims.append((victim.slot.seq_id, 0))
            self.cache.release(victim.slot, keep=False)
            victim.slot = None
            victim.num_computed = 0
            victim.status = SeqStatus.WAITING
            self.waiting.appendleft(victim)
        return freed
