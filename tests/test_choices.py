"""n choices share one prompt evaluation; best_of ranks by mean logprob; echo returns the prompt."""

from __future__ import annotations

import json
import time
from collections import defaultdict

import httpx
import openai
import pytest

from roost.llama.model import LlamaModel
from tests.conftest import MODEL, Server
from tests.forcing import FORCE_BIAS, single_token

STORY = [{"role": "user", "content": "Write a one-line poem about the sea."}]


def test_chat_n_gives_distinct_indexed_choices(
    client: openai.OpenAI, eog_bias: dict[str, int]
) -> None:
    single = client.chat.completions.create(model=MODEL, messages=STORY, max_tokens=12)
    # no choice ends early: each samples all 12 of its tokens
    reply = client.chat.completions.create(
        model=MODEL,
        messages=STORY,
        max_tokens=12,
        n=3,
        temperature=1.0,
        seed=7,
        logit_bias=eog_bias,
    )
    assert [c.index for c in reply.choices] == [0, 1, 2]
    texts = [c.message.content for c in reply.choices]
    assert len(set(texts)) == 3  # sampled independently
    assert reply.usage is not None and single.usage is not None
    # the prompt is counted once; every choice's tokens are counted
    assert reply.usage.prompt_tokens == single.usage.prompt_tokens
    assert reply.usage.completion_tokens == 3 * 12


def test_n_with_a_seed_is_reproducible(client: openai.OpenAI) -> None:
    def texts() -> list[str | None]:
        reply = client.chat.completions.create(
            model=MODEL, messages=STORY, max_tokens=10, n=2, temperature=1.0, seed=11
        )
        return [c.message.content for c in reply.choices]

    assert texts() == texts()


def test_greedy_choices_equal_a_single_request(client: openai.OpenAI) -> None:
    # followers continue from a copy of the leader's KV: a bad copy would change their text
    single = client.chat.completions.create(
        model=MODEL, messages=STORY, max_tokens=16, temperature=0
    )
    reply = client.chat.completions.create(
        model=MODEL, messages=STORY, max_tokens=16, temperature=0, n=3
    )
    expected = single.choices[0].message.content
    assert [c.message.content for c in reply.choices] == [expected] * 3


def test_chat_n_streams_every_index(client: openai.OpenAI, local_model: LlamaModel) -> None:
    # both choices write " waves" 8 times: neither may end before it has said something
    waves = {str(single_token(local_model, " waves")): FORCE_BIAS}
    stream = client.chat.completions.create(
        model=MODEL, messages=STORY, max_tokens=8, n=2, seed=3, stream=True, logit_bias=waves
    )
    texts: dict[int, str] = defaultdict(str)
    roles, finishes = set(), {}
    for chunk in stream:
        for choice in chunk.choices:
            if choice.delta.role:
                roles.add(choice.index)
            texts[choice.index] += choice.delta.content or ""
            if choice.finish_reason:
                finishes[choice.index] = choice.finish_reason
    assert roles == {0, 1} and set(finishes) == {0, 1}
    assert texts == {0: " waves" * 8, 1: " waves" * 8}


def test_completions_n_over_several_prompts(client: openai.OpenAI) -> None:
    out = client.completions.create(
        model=MODEL, prompt=["The sky is", "My favourite food is"], max_tokens=5, n=2, seed=5
    )
    assert [c.index for c in out.choices] == [0, 1, 2, 3]
    single = client.completions.create(
        model=MODEL, prompt=["The sky is", "My favourite food is"], max_tokens=5
    )
    assert out.usage is not None and single.usage is not None
    assert out.usage.prompt_tokens == single.usage.prompt_tokens


def test_best_of_returns_the_highest_mean_logprob(client: openai.OpenAI) -> None:
    # the same seed gives best_of's candidates the seeds n=4 would use (seed + j)
    kwargs = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 8, "seed": 21}
    candidates = client.completions.create(n=4, logprobs=0, **kwargs).choices  # type: ignore[arg-type]

    def mean(choice: object) -> float:
        values = choice.logprobs.token_logprobs  # type: ignore[attr-defined]
        return sum(values) / len(values)

    ranked = sorted(candidates, key=mean, reverse=True)
    best = client.completions.create(best_of=4, n=2, **kwargs).choices  # type: ignore[arg-type]
    assert [c.index for c in best] == [0, 1]
    assert [c.text for c in best] == [c.text for c in ranked[:2]]
    assert best[0].logprobs is None  # ranking needed logprobs; the client did not ask


def test_best_of_errors(server: Server) -> None:
    base = {"model": MODEL, "prompt": "Hi", "max_tokens": 2}
    with server.http() as http:
        fewer = http.post("/v1/completions", json={**base, "n": 3, "best_of": 2})
        streamed = http.post("/v1/completions", json={**base, "best_of": 2, "stream": True})
    for resp in (fewer, streamed):
        assert resp.status_code == 400, resp.text
        assert resp.json()["error"]["param"] == "best_of"


def test_echo_returns_the_prompt_first(client: openai.OpenAI, local_model: LlamaModel) -> None:
    blue = {str(single_token(local_model, " blue")): FORCE_BIAS}
    out = client.completions.create(
        model=MODEL, prompt="Roses are red,", max_tokens=4, echo=True, logit_bias=blue
    )
    assert out.choices[0].text == "Roses are red," + " blue" * 4


def test_echo_streams_the_prompt_in_the_first_chunk(server: Server) -> None:
    body = {
        "model": MODEL,
        "prompt": "Roses are red,",
        "max_tokens": 3,
        "echo": True,
        "logprobs": 1,
        "n": 2,
        "stream": True,
    }
    firsts: dict[int, dict[str, object]] = {}
    with httpx.stream("POST", f"{server.base_url}/v1/completions", json=body, timeout=60) as resp:
        for line in resp.iter_lines():
            if line.startswith("data: {"):
                for choice in json.loads(line[6:])["choices"]:
                    firsts.setdefault(choice["index"], choice)
    assert set(firsts) == {0, 1}
    for choice in firsts.values():
        assert str(choice["text"]).startswith("Roses are red,")
        logprobs = choice["logprobs"]
        assert isinstance(logprobs, dict) and logprobs["token_logprobs"][0] is None


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_disconnect_cancels_every_choice(
    server: Server, eog_bias: dict[str, int], path: str
) -> None:
    body: dict[str, object] = {
        "model": MODEL, "max_tokens": 900, "n": 3, "stream": True, "logit_bias": eog_bias,
    }  # fmt: skip
    body.update({"messages": STORY} if "chat" in path else {"prompt": "Count forever:"})
    with (
        httpx.Client(base_url=server.base_url, timeout=60) as http,
        http.stream("POST", path, json=body) as resp,
    ):
        lines = resp.iter_lines()
        for _ in range(8):
            next(lines)
    # 3 x 900 tokens would take far longer than this wait; only cancellation makes it idle
    for _ in range(50):
        if httpx.get(f"{server.base_url}/health").json()["generation_status"] == "idle":
            break
        time.sleep(0.1)
    else:
        raise AssertionError("the choices kept generating after the client left")
    out = server.client().completions.create(model=MODEL, prompt="Hi", max_tokens=3, n=2)
    assert len(out.choices) == 2
