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
    # vLLM's extras
    stop_token_ids: frozenset[int] = frozenset()
    ignore_eos: bool = False  # end-of-generation tokens do not end the sequence
    min_tokens: int = 0  # end tokens and stop_token_ids are banned until this many tokens
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    # log probabilities (raw logits): None = not wanted, N = the chosen token and the top N
    num_logprobs: int | None = None
    num_prompt_logprobs: int | None = None  # also for every prompt token (echo): no prefix reuse
