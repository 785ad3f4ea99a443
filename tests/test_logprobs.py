"""Log probabilities match a direct computation on the same model's raw logits."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import openai
import pytest

from roost.llama.batch import Batch
from roost.llama.context import ContextParams, LlamaContext
from roost.llama.model import LlamaModel
from tests.conftest import MODEL, Server
from tests.forcing import forced_text

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def direct(local_model: LlamaModel) -> Iterator[LlamaContext]:
    ctx = LlamaContext(local_model, ContextParams(512, 512, 1, 2))
    yield ctx
    ctx.close()


def _direct_logprobs(ctx: LlamaContext, tokens: list[int]) -> np.ndarray:
    """Log-softmax (float64) of the logits at every position of `tokens`, one sequence."""
    ctx.seq_remove(-1)  # every sequence
    batch = Batch(len(tokens))
    try:
        for pos, token in enumerate(tokens):
            batch.add(token, pos, 0, True)
        ctx.decode(batch)
        rows = np.stack([ctx.logits(i).astype(np.float64) for i in range(len(tokens))])
    finally:
        batch.close()
    peak = rows.max(axis=1, keepdims=True)
    return rows - peak - np.log(np.exp(rows - peak).sum(axis=1, keepdims=True))


def test_completion_logprobs_match_direct_computation(
    client: openai.OpenAI, local_model: LlamaModel, direct: LlamaContext
) -> None:
    prompt = local_model.tokenize("The capital of France is")
    out = client.completions.create(
        model=MODEL, prompt=prompt, max_tokens=6, temperature=0, logprobs=5, echo=True
    )
    logprobs = out.choices[0].logprobs
    assert logprobs is not None and logprobs.token_logprobs is not None
    assert logprobs.tokens is not None and logprobs.top_logprobs is not None
    num_prompt = len(prompt)
    # greedy: the direct argmax chain reproduces the generated tokens
    tokens = list(prompt)
    for _ in range(6):
        tokens.append(int(_direct_logprobs(direct, tokens)[-1].argmax()))
    expected = _direct_logprobs(direct, tokens)
    assert logprobs.tokens == [local_model.token_text(t) for t in tokens]
    assert logprobs.token_logprobs[0] is None and logprobs.top_logprobs[0] is None
    for pos in range(1, len(tokens)):
        want = expected[pos - 1]
        assert logprobs.token_logprobs[pos] == pytest.approx(want[tokens[pos]], abs=2e-3)
        top = logprobs.top_logprobs[pos]
        assert top is not None and len(top) in (5, 6)  # the top 5, plus the chosen token
        best = np.argsort(-want)[:5]
        for token in best:
            assert top[local_model.token_text(int(token))] == pytest.approx(want[token], abs=2e-3)
    # after the prompt, greedy tokens are the most likely ones
    for pos in range(num_prompt, len(tokens)):
        assert logprobs.token_logprobs[pos] == max(logprobs.top_logprobs[pos].values())  # type: ignore[union-attr]


def test_completion_text_offsets_index_the_text(
    client: openai.OpenAI, local_model: LlamaModel
) -> None:
    # whole characters only (split ones are the next test's): the answer is forced
    out = client.completions.create(
        model=MODEL,
        prompt="Count: one, two,",
        max_tokens=5,
        temperature=0,
        logprobs=1,
        echo=True,
        extra_body=forced_text(local_model, " three, four"),
    )
    choice = out.choices[0]
    assert choice.text == "Count: one, two, three, four"
    lp = choice.logprobs
    assert lp is not None and lp.tokens and lp.text_offset
    for token, offset in zip(lp.tokens, lp.text_offset, strict=True):
        assert choice.text[offset : offset + len(token)] == token


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    ("prompt", "echo"),
    [("é café naïve 日本語", True), ("Translate to Japanese: good morning ->", False)],
)
def test_text_offsets_count_a_split_character_once(
    client: openai.OpenAI, local_model: LlamaModel, prompt: str, echo: bool, stream: bool
) -> None:
    # "日" or "お" arrive as several byte tokens (shown as U+FFFD each): offsets counted from
    # those pieces ran past the text and, with echo, went backwards into the prompt. The output
    # is forced to "おはよう", four characters each split over two tokens, whatever the CPU.
    answer = "おはよう"
    forced = forced_text(local_model, answer)
    args = {"model": MODEL, "prompt": prompt, "max_tokens": 12, "temperature": 0}
    out = client.completions.create(
        **args,  # type: ignore[arg-type]
        logprobs=1,
        echo=echo,
        stream=stream,
        extra_body=forced,
    )
    choices = [chunk.choices[0] for chunk in out] if stream else [out.choices[0]]
    text = "".join(c.text for c in choices)
    assert text == (prompt if echo else "") + answer
    tokens = [t for c in choices if c.logprobs for t in c.logprobs.tokens or []]
    offsets = [o for c in choices if c.logprobs for o in c.logprobs.text_offset or []]
    assert any("\ufffd" in t for t in tokens)  # the case under test: a split character
    assert offsets == sorted(offsets) and all(0 <= o < len(text) for o in offsets)
    for token, offset in zip(tokens, offsets, strict=True):
        if "\ufffd" not in token:
            assert text[offset : offset + len(token)] == token


def test_chat_logprobs_shape_and_values(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=MODEL, messages=QUESTION, max_tokens=8, temperature=0, logprobs=True, top_logprobs=3
    )
    choice = reply.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content
    content = choice.logprobs.content
    assert "".join(entry.token for entry in content) == choice.message.content
    for entry in content:
        assert entry.bytes == list(entry.token.encode())
        assert len(entry.top_logprobs) == 3
        values = [alt.logprob for alt in entry.top_logprobs]
        assert values == sorted(values, reverse=True) and values[0] <= 0
        assert sum(np.exp(values)) <= 1.0 + 1e-6
        # greedy picks the most likely token
        assert entry.top_logprobs[0].token == entry.token
        assert entry.logprob == pytest.approx(values[0])


def test_chat_logprobs_stream_per_chunk(client: openai.OpenAI) -> None:
    whole = client.chat.completions.create(
        model=MODEL, messages=QUESTION, max_tokens=8, temperature=0, logprobs=True, top_logprobs=2
    )
    stream = client.chat.completions.create(
        model=MODEL,
        messages=QUESTION,
        max_tokens=8,
        temperature=0,
        logprobs=True,
        top_logprobs=2,
        stream=True,
    )
    streamed = []
    for chunk in stream:
        for choice in chunk.choices:
            if choice.delta.content:
                assert choice.logprobs is not None and choice.logprobs.content
            if choice.logprobs is not None and choice.logprobs.content:
                streamed += choice.logprobs.content
    assert whole.choices[0].logprobs is not None
    expected = whole.choices[0].logprobs.content or []
    assert [e.token for e in streamed] == [e.token for e in expected]
    assert [e.logprob for e in streamed] == pytest.approx([e.logprob for e in expected], abs=1e-4)


def test_no_logprobs_unless_asked(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=3)
    assert reply.choices[0].logprobs is None
    out = client.completions.create(model=MODEL, prompt="Hi", max_tokens=3)
    assert out.choices[0].logprobs is None


@pytest.mark.parametrize(
    ("path", "fields", "param"),
    [
        ("/v1/chat/completions", {"top_logprobs": 2}, "top_logprobs"),
        ("/v1/chat/completions", {"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ("/v1/chat/completions", {"logprobs": True, "top_logprobs": -1}, "top_logprobs"),
        ("/v1/completions", {"logprobs": 6}, "logprobs"),
        ("/v1/completions", {"logprobs": -1}, "logprobs"),
    ],
)
def test_logprob_fields_out_of_range_are_400(
    server: Server, path: str, fields: dict[str, object], param: str
) -> None:
    body: dict[str, object] = {"model": MODEL, "max_tokens": 2, **fields}
    body.update({"messages": QUESTION} if "chat" in path else {"prompt": "Hi"})
    with server.http() as http:
        resp = http.post(path, json=body)
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["param"] == param


ANSWER = "Hello! How can I help you today?"


@pytest.mark.parametrize("stop", ["How", " How can"])
@pytest.mark.parametrize("stream", [False, True])
def test_stop_text_has_no_logprobs_either(
    client: openai.OpenAI, local_model: LlamaModel, stop: str, stream: bool
) -> None:
    # the answer is forced to "Hello" "!" " How" " can" ...: " How" straddles the first stop,
    # and " How" " can" (held back token by token) make up the second; neither may show up
    # through logprobs
    reply = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=12,
        temperature=0,
        stop=stop,
        logprobs=True,
        stream=stream,
        extra_body=forced_text(local_model, ANSWER),
    )
    if stream:
        choices = [chunk.choices[0] for chunk in reply if chunk.choices]  # type: ignore[union-attr]
        text = "".join(c.delta.content or "" for c in choices)
        entries = [e for c in choices if c.logprobs for e in c.logprobs.content or []]
        finish = choices[-1].finish_reason
    else:
        text = reply.choices[0].message.content or ""  # type: ignore[union-attr]
        entries = reply.choices[0].logprobs.content or []  # type: ignore[union-attr]
        finish = reply.choices[0].finish_reason  # type: ignore[union-attr]
    assert finish == "stop" and text == ANSWER.split(stop)[0]  # "Hello! " or "Hello!"
    assert [entry.token for entry in entries] == ["Hello", "!"]  # those before the stop keep theirs
