"""What the engine needs to generate for one request: nothing HTTP-specific."""

from __future__ import annotations

from dataclasses import dataclass, field

from roost.llama.sampler import SamplerSpec


@dataclass(frozen=True)
class SamplingParams:
    """Sampling and stopping rules for one sequence (already validated by the API layer)."""

    max_tokens: int | None = None  # None: until the context is full
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: dict[int, float] = field(default_factory=dict)
    stop: tuple[str, ...] = ()

    def sampler_spec(self) -> SamplerSpec:
        return SamplerSpec(
            temperature=self.temperature,
            top_k=self.top_k,
            top_p=self.top_p,
            min_p=self.min_p,
            seed=self.seed,
            repetition_penalty=self.repetition_penalty,
            frequency_penalty=self.frequency_penalty,
            presence_penalty=self.presence_penalty,
            logit_bias=self.logit_bias,
        )
