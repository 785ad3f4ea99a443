"""Per-request sampling parameters are honoured (real model, real llama.cpp)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import openai
import pytest

from roost.llama.batch import Batch
from roost.llama.context import ContextParams, LlamaContext
from roost.llama.model import LlamaModel
from tests.conftest import MODEL, Server, start_server
from tests.forcing import FORCE_BIAS, forced_text, single_token

STORY = [{"role": "user", "content": "Write a short story about a robot who learns to paint."}]


def _chat(client: openai.OpenAI, **kwargs: object) -> openai.types.chat.ChatCompletion:
    return client.chat.completions.create(model=MODEL, messages=STORY, **kwargs)  # type: ignore


def test_max_tokens_gives_length_and_exact_usage(
    client: openai.OpenAI, eog_bias: dict[str, int]
) -> None:
    reply = _chat(client, max_tokens=7, logit_bias=eog_bias)
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage is not None and reply.usage.completion_tokens == 7


def test_max_completion_tokens_takes_precedence(
    client: openai.OpenAI, eog_bias: dict[str, int]
) -> None:
    reply = _chat(client, max_tokens=30, max_completion_tokens=5, logit_bias=eog_bias)
    assert reply.usage is not None and reply.usage.completion_tokens == 5


def test_same_seed_same_output(client: openai.OpenAI) -> None:
    first = _chat(client, temperature=1.0, seed=1234, max_tokens=40).choices[0].message.content
    again = _chat(client, temperature=1.0, seed=1234, max_tokens=40).choices[0].message.content
    assert first == again
    others = {
        _chat(client, temperature=1.0, seed=s, max_tokens=40).choices[0].message.content
        for s in (1, 2, 3)
    }
    assert len(others | {first}) > 1


@pytest.fixture(scope="module")
def exact_server() -> Iterator[Server]:
    yield from start_server("--no-flash-attn", "--parallel", "1", "--ctx-size", "1024")


def test_without_flash_attention_a_cached_prompt_gives_the_same_logprobs(
    exact_server: Server,
) -> None:
    # flash attention's kernels make a token's logits depend on its chunk's size, and a prompt
    # served from the prefix cache decodes only its last token; without it the two agree
    prompt = "The old lighthouse keeper climbed the stairs every night. " * 12  # > 64 tokens
    client = exact_server.client()
    args = {"model": MODEL, "prompt": prompt, "max_tokens": 6, "temperature": 0, "logprobs": 1}
    cold = client.completions.create(**args)  # type: ignore[call-overload]
    warm = client.completions.create(**args)  # type: ignore[call-overload]
    assert warm.usage.prompt_tokens_details.cached_tokens > 64  # type: ignore[union-attr]
    assert warm.choices[0].logprobs.token_logprobs == cold.choices[0].logprobs.token_logprobs


def test_top_k_one_is_greedy(client: openai.OpenAI) -> None:
    greedy = _chat(client, temperature=0, max_tokens=20).choices[0].message.content
    top1 = (
        _chat(client, temperature=1.5, seed=9, max_tokens=20, extra_body={"top_k": 1})
        .choices[0]
        .message.content
    )
    assert top1 == greedy


def test_logit_bias_forces_a_token(client: openai.OpenAI, local_model: LlamaModel) -> None:
    token = single_token(local_model, " robot")
    out = client.completions.create(
        model=MODEL, prompt="Hello", max_tokens=4, logit_bias={str(token): 100}, temperature=0.8
    )
    assert out.choices[0].text == local_model.detokenize([token] * 4)
    assert out.usage is not None and out.usage.completion_tokens == 4
    # the regex lets only " robot" through: with its own token banned, other tokens spell it
    banned = client.completions.create(
        model=MODEL,
        prompt="I built a",
        max_tokens=8,
        temperature=0,
        logprobs=1,
        logit_bias={str(token): -100},
        extra_body={"guided_regex": " robot"},
    )
    assert banned.choices[0].text == " robot"
    assert banned.choices[0].logprobs is not None and banned.choices[0].logprobs.tokens
    assert " robot" not in banned.choices[0].logprobs.tokens


def _raw_logits(model: LlamaModel, prompt: list[int], token: int) -> tuple[np.ndarray, ...]:
    """Logits after `prompt`, and after `prompt` + `token`, decoded as a server decodes them
    (flash attention off, as on exact_server, so that chunking changes nothing)."""
    ctx = LlamaContext(model, ContextParams(64, 64, 1, 2, flash_attn=False))
    batch = Batch(len(prompt))
    try:
        rows = []
        for pos, tokens in ((0, prompt), (len(prompt), [token])):
            batch.clear()
            for i, t in enumerate(tokens):
                batch.add(t, pos + i, 0, i == len(tokens) - 1)
            ctx.decode(batch)
            rows.append(ctx.logits(len(tokens) - 1).astype(np.float64))
        return tuple(rows)
    finally:
        batch.close()
        ctx.close()


def test_penalties_change_greedy_output(exact_server: Server, local_model: LlamaModel) -> None:
    # a bias of 100 makes " robot" (A) the first token; at the second, B's bias puts it exactly
    # 1 below A: greedy repeats A, and a penalty on A (2 at least) makes the second token B
    prompt = local_model.tokenize("I built a")
    a = single_token(local_model, " robot")
    first, second = _raw_logits(local_model, prompt, a)
    gap_after = second[a] - second  # A's lead over each token at the second step, unbiased
    lead_first = first[a] - first - gap_after + 1  # A's lead at the first step, with B's bias
    usable = [
        t
        for t in range(local_model.num_vocab)
        if t != a
        and not local_model.is_eog(t)
        and gap_after[t] <= 1
        and _plain_text(local_model, t)
    ]
    b = max(usable, key=lambda t: lead_first[t])
    assert lead_first[b] > 2  # far from a tie: the first token is A on any machine
    assert second[a] + FORCE_BIAS - 3 > second.max()  # A and B, biased, stay above the rest
    bias = {str(a): FORCE_BIAS, str(b): FORCE_BIAS - 1 + float(gap_after[b])}
    client = exact_server.client()

    def text(**penalty: float) -> str:
        out = client.completions.create(
            model=MODEL,
            prompt=prompt,
            max_tokens=2,
            temperature=0,
            logit_bias=bias,  # type: ignore[arg-type]
            extra_body=penalty,
        )
        return out.choices[0].text

    assert text() == local_model.detokenize([a, a])
    for field in ("presence_penalty", "frequency_penalty"):
        assert text(**{field: 2.0}) == local_model.detokenize([a, b]), field
    assert text(repetition_penalty=1.8) == local_model.detokenize([a, b])


def _plain_text(model: LlamaModel, token: int) -> bool:
    """Whether the token is whole UTF-8 text (no control token, no piece of a character)."""
    try:
        return bool(model.token_bytes(token).decode())
    except UnicodeDecodeError:
        return False


def test_top_p_and_min_p_accepted_and_reproducible(client: openai.OpenAI) -> None:
    args = {"temperature": 1.0, "top_p": 0.5, "seed": 5, "max_tokens": 20}
    a = _chat(client, **args, extra_body={"min_p": 0.1}).choices[0].message.content
    b = _chat(client, **args, extra_body={"min_p": 0.1}).choices[0].message.content
    assert a == b


@pytest.mark.parametrize("cut", [{"top_p": 1e-9}, {"extra_body": {"min_p": 1.0}}])
def test_top_p_and_min_p_take_effect(
    client: openai.OpenAI, eog_bias: dict[str, int], cut: dict[str, object]
) -> None:
    # each keeps only the most likely token: at temperature 2 every seed then says exactly
    # what greedy decoding says (ignored, 30 tokens at temperature 2 would wander off it)
    args = {"max_tokens": 30, "logit_bias": eog_bias}
    greedy = _chat(client, temperature=0, **args).choices[0].message.content
    for seed in (1, 2):
        hot = _chat(client, temperature=2.0, seed=seed, **args, **cut).choices[0].message.content
        assert hot == greedy


def _stream_text(client: openai.OpenAI, prompt: str, **kwargs: object) -> list[str]:
    chunks = client.completions.create(
        model=MODEL,
        prompt=prompt,
        stream=True,
        temperature=0,
        **kwargs,  # type: ignore[arg-type]
    )
    return [c.choices[0].text for c in chunks if c.choices and c.choices[0].text]


def test_stop_across_token_boundary_never_emitted(
    client: openai.OpenAI, local_model: LlamaModel
) -> None:
    prompt = "The quick brown fox jumps over the lazy dog. The quick brown"
    forced = forced_text(local_model, " fox jumps over the lazy dog.")
    pieces = _stream_text(client, prompt, max_tokens=40, extra_body=forced)
    assert pieces == [" fox", " jumps", " over", " the", " lazy", " dog", "."]
    full = "".join(pieces)
    # a stop string that starts inside one token's text and ends inside the next one's
    stop = pieces[3][-2:] + pieces[4][:2]  # "he l"
    expected = full[: full.index(stop)]
    streamed = _stream_text(client, prompt, max_tokens=40, extra_body=forced, stop=[stop])
    assert "".join(streamed) == expected
    whole = client.completions.create(
        model=MODEL, prompt=prompt, temperature=0, max_tokens=40, extra_body=forced, stop=stop
    )
    assert whole.choices[0].text == expected
    assert whole.choices[0].finish_reason == "stop"
