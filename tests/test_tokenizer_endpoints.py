"""vLLM-style /tokenize and /detokenize agree with what generation counts."""

from __future__ import annotations

import openai

from tests.conftest import MODEL, Server

HELLO = [{"role": "user", "content": "Hello there, how are you?"}]


def test_tokenize_counts_match_usage(server: Server, client: openai.OpenAI) -> None:
    with server.http() as http:
        text = http.post("/tokenize", json={"model": MODEL, "prompt": "The quick brown fox"}).json()
        chat = http.post("/tokenize", json={"model": MODEL, "messages": HELLO}).json()
    completion = client.completions.create(model=MODEL, prompt="The quick brown fox", max_tokens=1)
    reply = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=1)
    assert text["count"] == len(text["tokens"]) == completion.usage.prompt_tokens  # type: ignore[union-attr]
    assert chat["count"] == reply.usage.prompt_tokens  # type: ignore[union-attr]
    assert chat["max_model_len"] == 1024


def test_detokenize_round_trip(server: Server) -> None:
    with server.http() as http:
        tokens = http.post("/tokenize", json={"model": MODEL, "prompt": "Grüße, world!"}).json()
        back = http.post("/detokenize", json={"model": MODEL, "tokens": tokens["tokens"]}).json()
    assert back == {"prompt": "Grüße, world!"}


def test_tokenizer_bad_input(server: Server) -> None:
    with server.http() as http:
        both = http.post("/tokenize", json={"model": MODEL, "prompt": "x", "messages": HELLO})
        neither = http.post("/tokenize", json={"model": MODEL})
        bad_id = http.post("/detokenize", json={"model": MODEL, "tokens": [1, -5]})
        unknown = http.post("/tokenize", json={"model": "nope", "prompt": "x"})
        empty = http.post("/tokenize", json={"model": MODEL, "messages": []})  # was a 500
    assert both.status_code == neither.status_code == bad_id.status_code == 400
    assert empty.status_code == 400 and empty.json()["error"]["param"] == "messages"
    assert bad_id.json()["error"]["param"] == "tokens"
    assert unknown.status_code == 404
