"""Per-request sampling parameters are honoured (real model, real llama.cpp)."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from roost.llama.model import LlamaModel
from tests.conftest import MODEL, Server, start_server

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
    token = local_model.tokenize(" robot", add_special=False)[0]
    out = client.completions.create(
        model=MODEL, prompt="Hello", max_tokens=4, logit_bias={str(token): 100}, temperature=0.8
    )
    assert out.choices[0].text == local_model.detokenize([token] * 4)
    assert out.usage is not None and out.usage.completion_tokens == 4
    banned = client.completions.create(
        model=MODEL,
        prompt="I built a",
        max_tokens=8,
        temperature=0,
        logit_bias={str(token): -100},
    )
    assert " robot" not in banned.choices[0].text


def test_penalties_change_greedy_output(client: openai.OpenAI) -> None:
    base = _chat(client, temperature=0, max_tokens=60).choices[0].message.content
    for field in ("presence_penalty", "frequency_penalty"):
        penalised = _chat(client, temperature=0, max_tokens=60, **{field: 2.0})
        assert penalised.choices[0].message.content != base, field
    repeated = _chat(client, temperature=0, max_tokens=60, extra_body={"repetition_penalty": 1.8})
    assert repeated.choices[0].message.content != base


def test_top_p_and_min_p_accepted_and_reproducible(client: openai.OpenAI) -> None:
    args = {"temperature": 1.0, "top_p": 0.5, "seed": 5, "max_tokens": 20}
    a = _chat(client, **args, extra_body={"min_p": 0.1}).choices[0].message.content
    b = _chat(client, **args, extra_body={"min_p": 0.1}).choices[0].message.content
    assert a == b


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
    client: openai.OpenAI, eog_bias: dict[str, int]
) -> None:
    prompt = "The quick brown fox jumps over the lazy dog. The quick brown"
    pieces = _stream_text(client, prompt, max_tokens=40, logit_bias=eog_bias)
    full = "".join(pieces)
    # a stop string that starts inside one token's text and ends inside the next one's
    k = next(
        i for i in range(3, len(pieces) - 1) if len(pieces[i]) >= 2 and len(pieces[i + 1]) >= 2
    )
    stop = pieces[k][-2:] + pieces[k + 1][:2]
    expected = full[: full.index(stop)]
    streamed = _stream_text(client, prompt, max_tokens=40, logit_bias=eog_bias, stop=[stop])
    assert "".join(streamed) == expected
    whole = client.completions.create(
        model=MODEL, prompt=prompt, temperature=0, max_tokens=40, logit_bias=eog_bias, stop=stop
    )
    assert whole.choices[0].text == expected
    assert whole.choices[0].finish_reason == "stop"
