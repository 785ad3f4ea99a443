"""A llama.cpp context: decode a batch, edit per-sequence memory, read logits."""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

import llama_cpp
import numpy as np

from roost.llama.batch import Batch
from roost.llama.model import LlamaModel, ModelLoadError


class DecodeError(RuntimeError):
    """llama_decode failed for a reason other than a full KV cache."""


class KVCacheFull(RuntimeError):
    """llama_decode found no room in the KV cache for the batch (nothing was computed)."""


@dataclass(frozen=True)
class ContextParams:
    num_ctx: int
    num_batch: int
    num_seq_max: int
    num_threads: int
    kv_unified: bool = False
    # llama.cpp's "auto" (on for CPU). Its kernels give a token logits that depend on the size
    # of the chunk it was decoded in (by up to ~0.5 here); without it they do not.
    flash_attn: bool = True


def context_params(params: ContextParams) -> llama_cpp.llama_context_params:
    """llama.cpp's parameters for `params`; n_ubatch = n_batch, so a batch is one graph."""
    cparams = llama_cpp.llama_context_default_params()
    cparams.n_ctx = params.num_ctx
    cparams.n_batch = params.num_batch
    cparams.n_ubatch = params.num_batch
    cparams.n_seq_max = params.num_seq_max
    # explicit: the default thread count oversubscribes small machines
    cparams.n_threads = params.num_threads
    cparams.n_threads_batch = params.num_threads
    cparams.kv_unified = params.kv_unified
    cparams.flash_attn_type = (
        llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO
        if params.flash_attn
        else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
    )
    cparams.no_perf = True
    return cparams


class LlamaContext:
    """Owns one `llama_context*` with a unified KV cache shared by `num_seq_max` sequences."""

    def __init__(self, model: LlamaModel, params: ContextParams) -> None:
        # unified: one buffer all sequences grow into (partial seq_cp needs it), but every
        # token then attends over every sequence's cells; split: n_ctx / n_seq_max each
        ctx = llama_cpp.llama_init_from_model(model.ptr, context_params(params))
        if not ctx:
            raise ModelLoadError(f"llama.cpp could not create a context for {model.path}")
        self.ptr = ctx
        self.model = model
        self.params = params
        self.num_ctx: int = llama_cpp.llama_n_ctx(ctx)
        # cells one sequence may use: all of them when unified, its padded share when split
        self.num_ctx_seq: int = llama_cpp.llama_n_ctx_seq(ctx)
        self.memory = llama_cpp.llama_get_memory(ctx)

    def close(self) -> None:
        if self.ptr:
            llama_cpp.llama_free(self.ptr)
            self.ptr = None

    def set_threads(self, num_threads: int) -> None:
        """Threads for the next decodes, prompt and generation alike (a cheap field update)."""
        llama_cpp.llama_set_n_threads(self.ptr, num_threads, num_threads)

    def decode(self, batch: Batch) -> None:
        if batch.num_tokens == 0:
            return
        batch.raw.n_tokens = batch.num_tokens
        status = llama_cpp.llama_decode(self.ptr, batch.raw)
        if status == 1:
            raise KVCacheFull("no KV cache slot for the batch")
        if status != 0:
            raise DecodeError(f"llama_decode returned {status}")

    def logits(self, index: int) -> np.ndarray:
        """Zero-copy view of the logits of batch row `index` (valid until the next decode)."""
        ptr = llama_cpp.llama_get_logits_ith(self.ptr, index)
        return np.ctypeslib.as_array(
            ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)), shape=(self.model.num_vocab,)
        )

    # -- per-sequence memory ----------------------------------------------------------------

    def seq_remove(self, seq_id: int, start: int = 0, end: int = -1) -> bool:
        """Drop positions [start, end) of a sequence; end -1 means to the end."""
        return bool(llama_cpp.llama_memory_seq_rm(self.memory, seq_id, start, end))

    def seq_copy(self, src: int, dst: int, start: int = 0, end: int = -1) -> None:
        llama_cpp.llama_memory_seq_cp(self.memory, src, dst, start, end)

    def seq_pos_max(self, seq_id: int) -> int:
        """The last position a sequence holds; -1 when it holds none."""
        return int(llama_cpp.llama_memory_seq_pos_max(self.memory, seq_id))

    # -- per-sequence state, for saving a sequence's KV outside the context -------------------

    def seq_state_size(self, seq_id: int) -> int:
        """Bytes `seq_state_get` writes for this sequence now."""
        return int(llama_cpp.llama_state_seq_get_size(self.ptr, seq_id))

    def seq_state_get(self, seq_id: int, buffer: np.ndarray) -> int:
        """Copy a sequence's KV state into `buffer` (uint8, at least `seq_state_size` long:
        reuse buffers, a first touch of a large new one costs more than the copy)."""
        size = self.seq_state_size(seq_id)
        if buffer.dtype != np.uint8 or buffer.size < size:
            raise ValueError(f"the buffer needs {size} bytes of uint8")
        return int(llama_cpp.llama_state_seq_get_data(self.ptr, _bytes_ptr(buffer), size, seq_id))

    def seq_state_set(self, seq_id: int, state: np.ndarray, num_tokens: int) -> None:
        """Load state saved by `seq_state_get` into an empty sequence; it must then hold
        exactly `num_tokens` positions, or it is emptied again and an error raised."""
        read = llama_cpp.llama_state_seq_set_data(self.ptr, _bytes_ptr(state), state.size, seq_id)
        if read == 0 or self.seq_pos_max(seq_id) != num_tokens - 1:
            self.seq_remove(seq_id)
            raise StateMismatch(f"{num_tokens} tokens of state did not load into {seq_id}")


class StateMismatch(RuntimeError):
    """Saved sequence state that this context cannot load as it was (other model or shape)."""


def _bytes_ptr(buffer: np.ndarray) -> ctypes._Pointer[ctypes.c_uint8]:
    return buffer.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8))
