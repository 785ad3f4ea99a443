"""The endpoint surface through the official openai client: shapes, streaming, alias, models."""

from __future__ import annotations

import json

import openai

from tests.conftest import MODEL, Server

HELLO = [{"role": "user", "content": "Say hello."}]


def test_health_reports_status_and_models(server: Server) -> None:
    with server.http() as http:
        body = http.get("/health").json()
    assert body["status"] == "ok"
    assert body["generation_status"] in ("idle", "generating")  # other tests' streams may end
    assert body["models"] == [MODEL]
    assert body["tools_loaded"] == []


def test_models_list_and_get(client: openai.OpenAI) -> None:
    models = client.models.list().data
    assert [m.id for m in models] == [MODEL]
    card = client.models.retrieve(MODEL)
    assert card.owned_by == "roost" and card.object == "model" and card.created > 0


def test_chat_non_streaming(client: openai.OpenAI) -> None:
    # min_tokens: no end token before the 4th, so there is content whatever is sampled
    reply = client.chat.completions.create(
        model=MODEL, messages=HELLO, max_tokens=12, seed=1, extra_body={"min_tokens": 4}
    )
    assert reply.object == "chat.completion"
    choice = reply.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    usage = reply.usage
    assert usage is not None and 4 <= usage.completion_tokens <= 12
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_chat_streaming_chunks(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=HELLO,
            max_tokens=16,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"min_tokens": 4},  # some content, whatever is sampled
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len({c.id for c in chunks}) == 1 and len({c.created for c in chunks}) == 1
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1 and finals[0].choices[0].finish_reason in ("stop", "length")
    usage_chunk = chunks[-1]
    assert usage_chunk.choices == [] and usage_chunk.usage is not None
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed
    assert usage_chunk.usage.completion_tokens <= 16


def test_streaming_ends_with_done(server: Server) -> None:
    body = {"model": MODEL, "messages": HELLO, "max_tokens": 4, "stream": True}
    with server.http() as http, http.stream("POST", "/v1/chat/completions", json=body) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in resp.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    assert all(line.startswith("data: ") for line in lines)
    json.loads(lines[0][6:])


def test_streaming_equals_non_streaming(client: openai.OpenAI) -> None:
    args = {"model": MODEL, "messages": HELLO, "max_tokens": 24, "temperature": 0}
    whole = client.chat.completions.create(**args).choices[0].message.content
    parts = client.chat.completions.create(**args, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in parts if c.choices) == whole


def test_v1_alias_is_chat(server: Server) -> None:
    body = {"model": MODEL, "messages": HELLO, "max_tokens": 8, "temperature": 0}
    with server.http() as http:
        alias = http.post("/v1/", json=body).json()
        chat = http.post("/v1/chat/completions", json=body).json()
    assert alias["object"] == "chat.completion"
    assert alias["choices"][0]["message"] == chat["choices"][0]["message"]


def test_completions_string_prompt(client: openai.OpenAI) -> None:
    out = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=8)
    assert out.object == "text_completion"
    assert len(out.choices) == 1 and out.choices[0].index == 0
    assert out.usage is not None and out.usage.completion_tokens <= 8


def test_completions_list_prompt_gives_one_choice_each(client: openai.OpenAI) -> None:
    prompts = ["One, two, three,", "Roses are red,", "def fibonacci(n):"]
    out = client.completions.create(model=MODEL, prompt=prompts, max_tokens=6, temperature=0)
    assert sorted(c.index for c in out.choices) == [0, 1, 2]
    for choice in out.choices:
        alone = client.completions.create(
            model=MODEL, prompt=prompts[choice.index], max_tokens=6, temperature=0
        )
        assert alone.choices[0].text == choice.text


def test_completions_token_prompt_counts_tokens(client: openai.OpenAI) -> None:
    ids = [504, 3458, 282, 4649, 314]
    out = client.completions.create(model=MODEL, prompt=ids, max_tokens=5)
    assert out.usage is not None and out.usage.prompt_tokens == len(ids)
    batched = client.completions.create(model=MODEL, prompt=[ids, ids[:3]], max_tokens=5)
    assert batched.usage is not None and batched.usage.prompt_tokens == len(ids) + 3
    assert len(batched.choices) == 2


def test_completions_streaming(client: openai.OpenAI) -> None:
    chunks = list(
        client.completions.create(
            model=MODEL,
            prompt=["Once upon a time", "In a galaxy"],
            max_tokens=10,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert len({c.id for c in chunks}) == 1
    finals = [c.choices[0] for c in chunks if c.choices and c.choices[0].finish_reason]
    assert sorted(f.index for f in finals) == [0, 1]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens <= 20
