"""What the engine needs to generate for one request: nothing HTTP-specific."""

from __future__ import annotations

from dataclasses import dataclass, field

from roost.llama.sampler import SamplerSpec


@dataclass(frozen=True)
class SamplingParams:
    """Stopping rules for one sequence plus its sampler chain (validated by the API layer)."""

    max_tokens: int | None = None  # None: until the context is full
    stop: tuple[str, ...] = ()
    sampler: SamplerSpec = field(default_factory=SamplerSpec)
