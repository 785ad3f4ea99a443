"""Executes a plan: apply KV copies and trims, fill the batch, one decode, sample each row."""

from __future__ import annotations

import logging
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np

from roost.engine.kv_cache import KVCache, Slot
from roost.engine.logprobs import TokenLogprob, token_logprob
from roost.engine.scheduler import Chunk, Plan, Restore
from roost.engine.sequence import Sequence
from roost.engine.sessions import ModelSessions, SessionKey
from roost.llama.batch import Batch
from roost.llama.context import LlamaContext, StateMismatch

log = logging.getLogger("roost.engine")


@dataclass(frozen=True, slots=True)
class Sample:
    seq: Sequence
    token: int
    logprob: TokenLogprob | None


def _seq_id(chunk: Chunk) -> int:
    assert chunk.seq.slot is not None
    return chunk.seq.slot.seq_id


class Runner:
    """The only engine part that calls into llama.cpp during a step."""

    def __init__(
        self,
        ctx: LlamaContext,
        cache: KVCache,
        num_batch: int,
        sessions: ModelSessions | None = None,
    ) -> None:
        self.ctx = ctx
        self.cache = cache  # told of every KV change made here
        self.sessions = sessions
        self.batch = Batch(num_batch)
        self.num_decoded = 0  # tokens run through llama_decode so far (prompt sharing shows here)

    def execute(self, plan: Plan) -> list[Sample]:
        """Run one step; returns what every sequence that reached its end of batch sampled."""
        for save in plan.saves:  # before anything else touches the cells
            self.save(save.seq_id, save.key, save.tokens)
        for src, dst in plan.copies:  # before any trim: a source may be trimmed in this step
            self.ctx.seq_copy(src, dst)
        for seq_id, keep in plan.trims:
            self.ctx.seq_remove(seq_id, keep, -1)
        for restore in plan.restores:
            self._restore(restore)
        if not plan.chunks:
            return []
        # in sequence-id order: llama.cpp decodes a batch whose sequences are out of order
        # 1.5-2x slower with a split KV cache (one stream per sequence; measured at 16)
        chunks = sorted(plan.chunks, key=_seq_id)
        self.batch.clear()
        rows = [self._fill(chunk) for chunk in chunks]
        self.ctx.decode(self.batch)
        self.num_decoded += self.batch.num_tokens
        samples: list[Sample] = []
        for chunk, first_row in zip(chunks, rows, strict=True):
            seq = chunk.seq
            assert seq.slot is not None
            if seq.needs_prompt_logits:
                self._prompt_logprobs(chunk, first_row)
            self.cache.extend(seq.slot, seq.tokens[chunk.start : chunk.start + chunk.count])
            seq.num_computed += chunk.count  # the KV now holds these tokens
            if chunk.wants_logits and seq.sampler is not None:
                last = first_row + chunk.count - 1
                samples.append(self._sample(seq, last))
                samples += [self._sample(f, last) for f in self._fork(seq)]
        return samples

    def _fill(self, chunk: Chunk) -> int:
        """Add a chunk's tokens to the batch; returns the batch row of its first token."""
        seq = chunk.seq
        assert seq.slot is not None
        seq_id, tokens, end = seq.slot.seq_id, seq.tokens, chunk.start + chunk.count
        every_row = seq.needs_prompt_logits
        first = self.batch.num_tokens
        for pos in range(chunk.start, end - 1):
            self.batch.add(tokens[pos], pos, seq_id, every_row)
        self.batch.add(tokens[end - 1], end - 1, seq_id, every_row or chunk.wants_logits)
        return first

    def _prompt_logprobs(self, chunk: Chunk, first_row: int) -> None:
        """Row i's logits score the token at position i + 1 (the first token has none)."""
        seq = chunk.seq
        done = seq.prompt_logprobs
        assert done is not None and seq.params.num_prompt_logprobs is not None
        for pos in range(chunk.start, chunk.start + chunk.count):
            if pos + 1 == len(done) < seq.num_prompt:  # a recomputed position is not scored twice
                logits = self.ctx.logits(first_row + pos - chunk.start)
                done.append(
                    token_logprob(logits, seq.tokens[pos + 1], seq.params.num_prompt_logprobs)
                )

    def _sample(self, seq: Sequence, row: int) -> Sample:
        assert seq.sampler is not None
        token = seq.sampler.sample(self.ctx, row)
        num_top = seq.params.num_logprobs
        logprob = None if num_top is None else token_logprob(self.ctx.logits(row), token, num_top)
        return Sample(seq, token, logprob)

    def _fork(self, leader: Sequence) -> list[Sequence]:
        """n > 1: followers holding a slot copy the leader's prompt KV and sample its logits."""
        forked = []
        for follower in leader.followers:
            follower.leader = None
            if follower.slot is None or follower.sampler is None:
                continue  # not admitted yet: it will compute the prompt itself
            assert leader.slot is not None
            self.ctx.seq_copy(leader.slot.seq_id, follower.slot.seq_id)
            self.cache.copy(leader.slot, follower.slot)
            follower.num_computed = len(follower.slot.tokens)
            follower.prompt_logprobs = leader.prompt_logprobs
            forked.append(follower)
        leader.followers = []
        return forked

    def save(
        self, seq_id: int, key: SessionKey, tokens: list[int], sync: bool = False
    ) -> Future[None] | None:
        """Copy a sequence's state (it holds `tokens`) into the session store; with `sync`
        also to disk (the future resolves once written)."""
        assert self.sessions is not None
        state = np.empty(self.ctx.seq_state_size(seq_id), np.uint8)
        self.ctx.seq_state_get(seq_id, state)
        return self.sessions.put(key, tokens, state, sync)

    def _restore(self, restore: Restore) -> None:
        seq = restore.seq
        seq.is_restoring = False
        slot = seq.slot
        assert slot is not None
        self.ctx.seq_remove(slot.seq_id)
        try:
            self.ctx.seq_state_set(slot.seq_id, restore.state, len(restore.tokens))
        except StateMismatch as exc:  # computed instead: a session never fails a request
            log.warning("request %s: saved state not restored (%s)", seq.request_id, exc)
            self.cache.trim(slot, 0)
            seq.num_computed = seq.num_cached = 0
            return
        self.cache.restored(slot, restore.tokens)
        self.ctx.seq_remove(slot.seq_id, restore.keep, -1)
        self.cache.trim(slot, restore.keep)

    def forget(self, slot: Slot) -> None:
        """Empty a sequence id's KV (after a failed step its cells are in doubt)."""
        self.ctx.seq_remove(slot.seq_id)
        self.cache.trim(slot, 0)

    def close(self) -> None:
        self.batch.close()
