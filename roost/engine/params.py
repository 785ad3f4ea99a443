"""What the engine needs to generate for one request: plain data, nothing HTTP or llama."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


class CompiledGrammar(Protocol):
    """A constraint the backend has already parsed (llama: a GBNF grammar); each sequence's
    sampler takes a copy, so a large grammar is parsed once, off the engine thread."""

    def sampler(self) -> object: ...


@dataclass(frozen=True)
class SamplingParams:
    """One sequence's sampling and stopping rules (validated by the API layer)."""

    max_tokens: int | None = None  # None: until the context is full
    stop: tuple[str, ...] = ()
    # the sampler chain: bias → grammar → penalties → top-k → top-p → min-p → temperature
    temperature: float = 1.0
    top_k: int = 0  # 0: off
    top_p: float = 1.0
    min_p: float = 0.0
    seed: int | None = None  # None: a random seed
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    logit_bias: dict[int, float] = field(default_factory=dict)
    grammar: CompiledGrammar | None = None  # only text the grammar matches can be sampled
    # vLLM's extras
    stop_token_ids: frozenset[int] = frozenset()
    ignore_eos: bool = False  # end-of-generation tokens do not end the sequence
    min_tokens: int = 0  # end tokens and stop_token_ids are banned until this many tokens
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    # log probabilities (raw logits): None = not wanted, N = the chosen token and the top N
    num_logprobs: int | None = None
    num_prompt_logprobs: int | None = None  # also for every prompt token (echo): no prefix reuse
