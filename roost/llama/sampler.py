"""Per-request sampler chains built from llama.cpp's C samplers."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import llama_cpp

from roost.llama.context import LlamaContext
from roost.llama.grammar import Grammar
from roost.llama.model import LlamaModel

RANDOM_SEED = 0xFFFFFFFF  # LLAMA_DEFAULT_SEED: llama.cpp picks a random seed
# A banned token's bias: far below any real logit, so it is never drawn while anything else
# may be, but finite. When a grammar allows nothing but an end token (the format is complete),
# that token must stay drawable: with -inf on every candidate llama.cpp would draw a token the
# grammar rejects, and its grammar aborts the whole process.
BAN_BIAS = -1e6


@dataclass(frozen=True)
class SamplerSpec:
    """What a sampler chain needs; the engine fills it from its SamplingParams."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    seed: int | None = None
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    penalty_last_n: int = 64
    logit_bias: dict[int, float] = field(default_factory=dict)
    grammar: Grammar | None = None  # only text the grammar matches can be sampled
    banned: frozenset[int] = frozenset()  # BAN_BIAS until `lift_ban()` (min_tokens)


class Sampler:
    """One llama_sampler chain: bias → grammar → penalties → top-k/p → min-p → temp → draw."""

    def __init__(self, model: LlamaModel, spec: SamplerSpec) -> None:
        chain_params = llama_cpp.llama_sampler_chain_default_params()
        chain_params.no_perf = True
        self.ptr = llama_cpp.llama_sampler_chain_init(chain_params)
        self.is_banning = bool(spec.banned)
        try:
            for smpl in self._stages(model, spec):
                llama_cpp.llama_sampler_chain_add(self.ptr, smpl)  # the chain owns and frees it
        except Exception:
            self.close()  # frees the stages added so far
            raise

    @staticmethod
    def _stages(model: LlamaModel, spec: SamplerSpec) -> Iterator[llama_cpp.llama_sampler_p]:
        num_vocab = model.num_vocab
        if spec.banned:  # first, so that lift_ban() removes stage 0
            yield _bias_stage(num_vocab, dict.fromkeys(spec.banned, BAN_BIAS))
        if spec.logit_bias:
            yield _bias_stage(num_vocab, spec.logit_bias)
        if spec.grammar is not None:
            yield spec.grammar.sampler()
        if (spec.repetition_penalty, spec.frequency_penalty, spec.presence_penalty) != (1, 0, 0):
            yield llama_cpp.llama_sampler_init_penalties(
                num_vocab,
                spec.penalty_last_n,
                spec.repetition_penalty,
                spec.frequency_penalty,
                spec.presence_penalty,
            )
        if spec.temperature <= 0:
            yield llama_cpp.llama_sampler_init_greedy()
            return
        if spec.top_k > 0:
            yield llama_cpp.llama_sampler_init_top_k(spec.top_k)
        if spec.top_p < 1.0:
            yield llama_cpp.llama_sampler_init_top_p(spec.top_p, 1)
        if spec.min_p > 0.0:
            yield llama_cpp.llama_sampler_init_min_p(spec.min_p, 1)
        yield llama_cpp.llama_sampler_init_temp(spec.temperature)
        seed = RANDOM_SEED if spec.seed is None else spec.seed & 0xFFFFFFFF
        if seed == RANDOM_SEED and spec.seed is not None:
            seed = RANDOM_SEED - 1  # an explicit seed must never mean "random"
        yield llama_cpp.llama_sampler_init_dist(seed)

    def lift_ban(self) -> None:
        """Allow the banned tokens from now on."""
        if self.is_banning:
            llama_cpp.llama_sampler_free(llama_cpp.llama_sampler_chain_remove(self.ptr, 0))
            self.is_banning = False

    def sample(self, ctx: LlamaContext, batch_index: int) -> int:
        """Sample from the logits of `batch_index` and record the token (penalties need it)."""
        return int(llama_cpp.llama_sampler_sample(self.ptr, ctx.ptr, batch_index))

    def close(self) -> None:
        if self.ptr:
            llama_cpp.llama_sampler_free(self.ptr)
            self.ptr = None


def _bias_stage(num_vocab: int, biases: dict[int, float]) -> llama_cpp.llama_sampler_p:
    entries = (llama_cpp.llama_logit_bias * len(biases))()
    for entry, (token, bias) in zip(entries, biases.items(), strict=True):
        entry.token, entry.bias = token, bias
    return llama_cpp.llama_sampler_init_logit_bias(num_vocab, len(biases), entries)
