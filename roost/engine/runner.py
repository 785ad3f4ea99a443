"""Executes a plan: apply KV trims, fill the batch, one decode, sample each finished row."""

from __future__ import annotations

from roost.engine.scheduler import Plan
from roost.engine.sequence import Sequence
from roost.llama.batch import Batch
from roost.llama.context import LlamaContext


class Runner:
    """The only engine part that calls into llama.cpp during a step."""

    def __init__(self, ctx: LlamaContext, num_batch: int) -> None:
        self.ctx = ctx
        self.batch = Batch(num_batch)

    def execute(self, plan: Plan) -> list[tuple[Sequence, int]]:
        """Run one step; returns (sequence, sampled token) for every sequence that sampled."""
        for seq_id, keep in plan.trims:
            self.ctx.seq_remove(seq_id, keep, -1)
        if not plan.chunks:
            return []
        batch = self.batch
        batch.clear()
        rows: list[tuple[Sequence, int]] = []
        for chunk in plan.chunks:
            seq = chunk.seq
            assert seq.slot is not None
            seq_id, tokens, end = seq.slot.seq_id, seq.tokens, chunk.start + chunk.count
            for pos in range(chunk.start, end - 1):
                batch.add(tokens[pos], pos, seq_id, False)
            last = batch.add(tokens[end - 1], end - 1, seq_id, chunk.wants_logits)
            if chunk.wants_logits:
                rows.append((seq, last))
        self.ctx.decode(batch)
        for chunk in plan.chunks:  # the KV now holds these tokens
            seq = chunk.seq
            assert seq.slot is not None
            seq.slot.tokens.extend(seq.tokens[chunk.start : chunk.start + chunk.count])
            seq.num_computed += chunk.count
        return [(seq, seq.sampler.sample(self.ctx, row)) for seq, row in rows if seq.sampler]

    def close(self) -> None:
        self.batch.close()
