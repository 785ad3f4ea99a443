"""What a model will use (memory, checked before its contexts exist) and what it runs on."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from roost.config import EngineConfig, default_ctx_size
from roost.llama.model import LlamaModel
from roost.llama.system import backend_devices, cpu_features, system_info

GIB = 2**30
_FLOAT = 4  # bytes of one logit


class OutOfMemory(RuntimeError):
    """The configuration's KV caches and buffers would not fit in the memory available."""


@dataclass(frozen=True)
class MemoryPlan:
    """Host memory one model needs, in bytes, by part (an estimate: llama.cpp pads a little)."""

    weights: int
    kv_cache: int  # generation context: every sequence's cells
    compute: int  # generation context: one batch's logits and activations
    embeddings: int  # the embedding context: its cells, logits and output rows

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.compute + self.embeddings


def kv_cells(config: EngineConfig, model: LlamaModel) -> int:
    """KV cells the generation context asks llama.cpp for."""
    return config.ctx_size or default_ctx_size(config.parallel, model.num_ctx_train)


def embedding_ctx_size(config: EngineConfig, model: LlamaModel) -> int:
    """The embedding context's size: the longest input, at most the training context."""
    return min(config.embedding_ctx_size, model.num_ctx_train)


def plan_memory(config: EngineConfig, model: LlamaModel) -> MemoryPlan:
    per_token = model.kv_bytes_per_token()
    logits_row = model.num_vocab * _FLOAT
    kv = compute = embeddings = 0
    if config.generate:
        kv = kv_cells(config, model) * per_token
        # llama.cpp sizes its compute buffer for a whole batch of output rows
        compute = config.batch_size * logits_row
    if config.embeddings:
        # embedding mode computes logits for every token, and keeps them as outputs
        num_ctx = embedding_ctx_size(config, model)
        embeddings = num_ctx * (per_token + 2 * logits_row)
    if model.is_offloaded:  # weights and KV go to the GPU, which llama.cpp checks itself
        return MemoryPlan(0, 0, compute, embeddings)
    return MemoryPlan(model.num_bytes, kv, compute, embeddings)


def check_memory(config: EngineConfig, plan: MemoryPlan, available: int | None) -> None:
    """Refuse a model whose host memory would not fit, naming the settings to lower."""
    if available is None or plan.total <= available:
        return
    settings = (
        (plan.kv_cache, f"ctx_size (now {config.ctx_size or 'the default'}) or parallel"),
        (plan.embeddings, "embedding_ctx_size, or turn embeddings off (--no-embeddings)"),
        (plan.compute, "batch_size"),
    )
    # the largest part first: that setting helps most
    lower = [name for size, name in sorted(settings, key=lambda s: -s[0]) if size]
    raise OutOfMemory(
        f"model {config.name!r} needs about {plan.total / GIB:.2f} GiB of memory "
        f"(weights {plan.weights / GIB:.2f}, KV cache {plan.kv_cache / GIB:.2f}, "
        f"compute {plan.compute / GIB:.2f}, embeddings {plan.embeddings / GIB:.2f}) but "
        f"{available / GIB:.2f} GiB are available: lower {'; '.join(lower)}"
    )


def runtime_report(
    config: EngineConfig, model: LlamaModel, plan: MemoryPlan, max_seq_len: int | None
) -> dict[str, Any]:
    """What runs: devices, CPU features, threads, KV cache, repacking and offload."""
    num_cells = kv_cells(config, model) if config.generate else 0
    return {
        "backend_devices": [asdict(device) for device in backend_devices()],
        "cpu_features": cpu_features(system_info()),
        "threads": config.threads,
        "repack": model.is_repacked,
        "n_gpu_layers": model.num_gpu_layers,
        "parallel": config.parallel,
        "kv_cache_tokens": num_cells,
        # wherever it lives (host or GPU): the memory plan counts host memory only
        "kv_cache_bytes": num_cells * model.kv_bytes_per_token(),
        "tokens_per_request": max_seq_len,
        "weights_bytes": model.num_bytes,
        "estimated_memory_bytes": plan.total,
    }
