"""Waiting and running queues, and the token budget that turns them into one batch plan."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from roost.engine.kv_cache import KVCache
from roost.engine.sequence import SeqStatus, Sequence

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


@dataclass
class Plan:
    """One step: whole-sequence KV copies (src, dst), then KV trims (seq_id, keep), then one
    decode over the chunks."""

    copies: list[tuple[int, int]] = field(default_factory=list)
    trims: list[tuple[int, int]] = field(default_factory=list)
    chunks: list[Chunk] = field(default_factory=list)


class Scheduler:
    """FIFO admission into free sequence ids; decoding tokens first, then prompt chunks."""

    def __init__(self, cache: KVCache, num_ctx: int, num_batch: int) -> None:
        self.cache = cache
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

    def schedule(self) -> Plan:
        plan = Plan()
        self._admit(plan)
        free = self.num_ctx - self.cache.num_cells_used
        budget = self.num_batch
        # decoding sequences first (1 token each, latency matters), then prompts FCFS
        ordered = sorted(self.running, key=lambda s: s.status is not SeqStatus.DECODE)
        for seq in ordered:
            if seq.slot is None or budget == 0 or seq.is_waiting_for_leader:
                continue  # preempted earlier in this loop, the batch is full, or n > 1
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
            acquired = self.cache.acquire(seq.request_id, seq.tokens, reuse)
            if acquired is None:
                return
            self.waiting.popleft()
            seq.slot = acquired.slot
            seq.num_computed = acquired.num_reused
            if not seq.is_admitted_once:
                seq.num_cached = acquired.num_reused
                seq.is_admitted_once = True
            seq.status = SeqStatus.PREFILL if seq.num_uncomputed > 1 else SeqStatus.DECODE
            if acquired.copy_from is not None:
                plan.copies.append((acquired.copy_from.seq_id, acquired.slot.seq_id))
            plan.trims.append((acquired.slot.seq_id, acquired.num_reused))
            self.running.append(seq)

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
            seq_id, num_freed = evicted
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
            plan.trims.append((victim.slot.seq_id, 0))
            self.cache.release(victim.slot, keep=False)
            victim.slot = None
            victim.num_computed = 0
            victim.status = SeqStatus.WAITING
            self.waiting.appendleft(victim)
        return freed
