"""One reusable `llama_batch`, filled token by token and guarded against llama.cpp aborts."""

from __future__ import annotations

import llama_cpp


class Batch:
    """A fixed-capacity batch; `add` refuses what would abort the process inside llama.cpp."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.raw = llama_cpp.llama_batch_init(capacity, 0, 1)
        # llama_batch_init leaves every array uninitialised: one sequence id per token.
        for i in range(capacity):
            self.raw.n_seq_id[i] = 1
        self.num_tokens = 0

    def clear(self) -> None:
        self.num_tokens = 0

    def add(self, token: int, pos: int, seq_id: int, want_logits: bool) -> int:
        """Append one token; returns its index in the batch (the logits index when wanted)."""
        i = self.num_tokens
        if i >= self.capacity:
            raise OverflowError("batch is full")
        raw = self.raw
        raw.token[i] = token
        raw.pos[i] = pos
        raw.seq_id[i][0] = seq_id
        raw.logits[i] = want_logits
        self.num_tokens = i + 1
        return i

    def close(self) -> None:
        if self.capacity:
            llama_cpp.llama_batch_free(self.raw)
            self.capacity = 0
