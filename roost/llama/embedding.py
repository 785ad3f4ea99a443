"""A llama.cpp context in embedding mode: one pooled vector per sequence of a decode."""

from __future__ import annotations

import ctypes
import enum
from dataclasses import dataclass, replace

import llama_cpp
import numpy as np

from roost.llama.batch import Batch
from roost.llama.context import ContextParams, DecodeError, context_params
from roost.llama.model import LlamaModel, ModelLoadError


class Pooling(enum.IntEnum):
    """llama.cpp's `llama_pooling_type`."""

    UNSPECIFIED = llama_cpp.LLAMA_POOLING_TYPE_UNSPECIFIED
    NONE = llama_cpp.LLAMA_POOLING_TYPE_NONE
    MEAN = llama_cpp.LLAMA_POOLING_TYPE_MEAN
    CLS = llama_cpp.LLAMA_POOLING_TYPE_CLS
    LAST = llama_cpp.LLAMA_POOLING_TYPE_LAST
    RANK = llama_cpp.LLAMA_POOLING_TYPE_RANK


@dataclass(frozen=True)
class EmbeddingParams:
    num_ctx: int  # longest input; also the batch and ubatch size (see below)
    num_seq_max: int  # inputs per decode
    num_threads: int


class EmbeddingContext:
    """Owns one `llama_context*` with `embeddings = true`, separate from the generation one.

    Invariant: the KV cache is empty between calls to `embed` (each decode starts at position 0
    for every sequence and is cleared afterwards).
    """

    def __init__(self, model: LlamaModel, params: EmbeddingParams) -> None:
        # llama.cpp reserves an output row per sequence within n_batch, and aborts the process
        # (GGML_ASSERT n_outputs_max) when n_seq_max exceeds it
        params = replace(params, num_seq_max=min(params.num_seq_max, params.num_ctx))
        # UNSPECIFIED lets llama.cpp resolve the GGUF's `<arch>.pooling_type` (and any per-arch
        # default) exactly as it would itself; a causal LM resolves to NONE (one vector per
        # token), which has no per-sequence vector, so it gets MEAN over its tokens instead.
        ctx, pooling = _create(model, params, Pooling.UNSPECIFIED)
        if pooling is Pooling.NONE:
            llama_cpp.llama_free(ctx)
            ctx, pooling = _create(model, params, Pooling.MEAN)
        if pooling is Pooling.RANK:  # a reranker: its output is a score, not a vector
            llama_cpp.llama_free(ctx)
            raise ModelLoadError(f"{model.path} is a reranker (rank pooling), not an embedder")
        self.ptr = ctx
        self.model = model
        self.pooling = pooling
        self.num_seq_max = params.num_seq_max
        self.num_embd: int = llama_cpp.llama_model_n_embd_out(model.ptr)
        # a pooled sequence must sit in one ubatch, and llama.cpp may round n_ctx: take the least
        self.max_input_len: int = min(
            llama_cpp.llama_n_ctx(ctx), llama_cpp.llama_n_ubatch(ctx), model.num_ctx_train
        )
        self.memory = llama_cpp.llama_get_memory(ctx)
        self.batch = Batch(self.max_input_len)

    def close(self) -> None:
        self.batch.close()
        if self.ptr:
            llama_cpp.llama_free(self.ptr)
            self.ptr = None

    def set_threads(self, num_threads: int) -> None:
        """Threads for the next decodes (a cheap field update)."""
        llama_cpp.llama_set_n_threads(self.ptr, num_threads, num_threads)

    def embed(self, inputs: list[list[int]]) -> np.ndarray:
        """Pooled (not normalised) float32 vectors, one row per input, from ONE decode."""
        self._check(inputs)
        batch = self.batch
        batch.clear()
        for seq_id, tokens in enumerate(inputs):
            for pos, token in enumerate(tokens):
                # every token is an output in embedding mode (llama.cpp would override it)
                batch.add(token, pos, seq_id, True)
        batch.raw.n_tokens = batch.num_tokens
        try:
            status = llama_cpp.llama_decode(self.ptr, batch.raw)
            if status != 0:
                raise DecodeError(f"llama_decode returned {status}")
            return np.stack([self._pooled(seq_id) for seq_id in range(len(inputs))])
        finally:
            llama_cpp.llama_memory_clear(self.memory, True)

    def _pooled(self, seq_id: int) -> np.ndarray:
        ptr = llama_cpp.llama_get_embeddings_seq(self.ptr, seq_id)
        if not ptr:
            raise DecodeError(f"no pooled embedding for sequence {seq_id}")
        view = ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float))
        return np.ctypeslib.as_array(view, shape=(self.num_embd,)).copy()

    def _check(self, inputs: list[list[int]]) -> None:
        """Refuse what would make llama.cpp abort the process or misplace a sequence."""
        if not 0 < len(inputs) <= self.num_seq_max:
            raise ValueError(f"{len(inputs)} inputs in one decode (1..{self.num_seq_max})")
        if sum(map(len, inputs)) > self.batch.capacity:
            raise OverflowError(f"more than {self.batch.capacity} tokens in one decode")
        num_vocab = self.model.num_vocab
        for tokens in inputs:
            if not tokens:
                raise ValueError("an empty input has no embedding")
            if min(tokens) < 0 or max(tokens) >= num_vocab:
                raise ValueError(f"token ids must be in [0, {num_vocab})")


def _create(
    model: LlamaModel, params: EmbeddingParams, pooling: Pooling
) -> tuple[llama_cpp.llama_context_p, Pooling]:
    # n_batch == n_ubatch == n_ctx: llama.cpp pools a sequence only if it sits in one ubatch;
    # unified: any sequence may use any cell, so many short inputs share one decode
    cparams = context_params(
        ContextParams(params.num_ctx, params.num_ctx, params.num_seq_max, params.num_threads, True)
    )
    cparams.embeddings = True
    cparams.pooling_type = pooling
    ctx = llama_cpp.llama_init_from_model(model.ptr, cparams)
    if not ctx:
        raise ModelLoadError(f"llama.cpp could not create an embedding context for {model.path}")
    return ctx, Pooling(llama_cpp.llama_pooling_type(ctx))
