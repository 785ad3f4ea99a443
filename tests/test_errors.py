"""Bad input gets OpenAI-shaped errors with the right status, never a 500."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.conftest import MODEL, Server, start_server

HELLO = [{"role": "user", "content": "hi"}]


def _error(resp: object) -> dict[str, object]:
    body = resp.json()  # type: ignore[attr-defined]
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def test_malformed_json_is_400(server: Server) -> None:
    with server.http() as http:
        resp = http.post(
            "/v1/chat/completions",
            content=b"{not json",
            headers={"content-type": "application/json"},
        )
    assert resp.status_code == 400
    assert _error(resp)["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("field", "value", "param"),
    [
        ("temperature", 3.5, "temperature"),
        ("top_p", 1.5, "top_p"),
        ("max_tokens", 0, "max_tokens"),
        ("presence_penalty", -9, "presence_penalty"),
        ("stop", 5, "stop"),
        ("n", 0, "n"),
        ("logit_bias", {"abc": 1}, "logit_bias"),
        ("messages", [], "messages"),
        ("messages", [{"role": "wizard", "content": "x"}], "messages[0].role"),
    ],
)
def test_invalid_field_names_param(server: Server, field: str, value: object, param: str) -> None:
    body = {"model": MODEL, "messages": HELLO, field: value}
    with server.http() as http:
        resp = http.post("/v1/chat/completions", json=body)
    assert resp.status_code == 400, resp.text
    error = _error(resp)
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_tokens", "3"),
        ("max_tokens", True),
        ("n", 2.5),  # 2.0 is an integer, as JSON Schema counts it
        ("temperature", "0.5"),
        ("seed", True),
        ("stream", "yes"),
        ("stream", 1),
        ("logprobs", 1),
    ],
)
def test_wrong_json_types_are_not_coerced(server: Server, field: str, value: object) -> None:
    body = {"model": MODEL, "messages": HELLO, "max_tokens": 2, field: value}
    with server.http() as http:
        resp = http.post("/v1/chat/completions", json=body)
    assert resp.status_code == 400, resp.text
    assert _error(resp)["param"] == field
    assert _error(resp)["code"] == "invalid_type"


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/completions", '{"model": "%s", "prompt": "\\ud800 x"}'),
        (
            "/v1/chat/completions",
            '{"model": "%s", "messages": [{"role": "user", "content": "\\udfff"}]}',
        ),
        (
            "/v1/chat/completions",
            '{"model": "\\ud800", "messages": [{"role": "user", "content": "x"}]}',
        ),
        ("/v1/embeddings", '{"model": "%s", "input": "a \\ud83d"}'),
        ("/tokenize", '{"model": "%s", "prompt": "\\ud800"}'),
    ],
)
def test_unpaired_surrogate_escapes_are_400(server: Server, path: str, body: str) -> None:
    # legal JSON, but the strings cannot be encoded: they used to reach a 500 and a traceback
    content = body.replace("%s", MODEL).encode()
    with server.http() as http:
        resp = http.post(path, content=content, headers={"content-type": "application/json"})
        assert resp.status_code == 400, resp.text
        assert "surrogate" in _error(resp)["message"]
        paired = b'{"model": "%s", "prompt": "\\ud83d\\ude00", "max_tokens": 1}' % MODEL.encode()
        ok = http.post(
            "/v1/completions", content=paired, headers={"content-type": "application/json"}
        )
    assert ok.status_code == 200, ok.text  # an escaped pair is one valid character


@pytest.mark.parametrize("content", [b'{"model": "\xff"}', b"[" * 100_000])
def test_undecodable_bodies_are_400_with_a_code(server: Server, content: bytes) -> None:
    with server.http() as http:
        resp = http.post(
            "/v1/completions", content=content, headers={"content-type": "application/json"}
        )
    assert resp.status_code == 400
    assert _error(resp)["code"] == "invalid_value"


@pytest.mark.parametrize(
    ("message", "param", "phrase"),
    [
        ({"role": "user"}, "messages[0].content", "needs content"),
        ({"role": "system", "content": None}, "messages[0].content", "needs content"),
        ({"role": "user", "content": [{"type": "text"}]}, "messages[0].content[0]", "'text' field"),
        (
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]},
            "messages[0].content[0]",
            "not supported",
        ),
        (
            {"role": "user", "content": [{"type": "refusal", "refusal": "no"}]},
            "messages[0].content[0]",
            "assistant",
        ),
    ],
)
def test_bad_message_content_is_400(server: Server, message: dict, param: str, phrase: str) -> None:
    with server.http() as http:
        resp = http.post("/v1/chat/completions", json={"model": MODEL, "messages": [message]})
    assert resp.status_code == 400, resp.text
    assert _error(resp)["param"] == param
    assert phrase in str(_error(resp)["message"])


def test_an_assistant_refusal_part_is_history(server: Server) -> None:
    messages = [
        {"role": "user", "content": "Tell me a secret."},
        {"role": "assistant", "content": [{"type": "refusal", "refusal": "I can't."}]},
        {"role": "user", "content": "Then say hi."},
    ]
    body = {"model": MODEL, "messages": messages, "max_tokens": 1}
    with server.http() as http:
        assert http.post("/v1/chat/completions", json=body).status_code == 200


def test_missing_required_field(server: Server) -> None:
    with server.http() as http:
        resp = http.post("/v1/completions", json={"model": MODEL})
    assert resp.status_code == 400
    assert _error(resp)["param"] == "prompt"


def test_unknown_fields_are_ignored(server: Server) -> None:
    body = {
        "model": MODEL,
        "messages": HELLO,
        "max_tokens": 2,
        "user": "u1",
        "metadata": {"a": "b"},
        "store": False,
        "some_future_field": [1, 2],
    }
    with server.http() as http:
        assert http.post("/v1/chat/completions", json=body).status_code == 200


def test_explicit_nulls_mean_defaults(server: Server) -> None:
    # clients serialise unset options as null; OpenAI treats them as not given
    nulls = {"n": None, "stream": None, "temperature": None, "stop": None, "seed": None}
    chat = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "hi", "name": None}],
        "max_tokens": 2,
        "logprobs": None,
        "top_logprobs": None,
        "parallel_tool_calls": None,
        "tools": None,
        **nulls,
    }
    completion = {"model": MODEL, "prompt": "hi", "max_tokens": 2, "echo": None, **nulls}
    with server.http() as http:
        for path, body in (("/v1/chat/completions", chat), ("/v1/completions", completion)):
            resp = http.post(path, json=body)
            assert resp.status_code == 200, resp.text
            assert len(resp.json()["choices"]) == 1
        missing = http.post("/v1/completions", json={**completion, "model": None})
    assert missing.status_code == 400 and _error(missing)["param"] == "model"


def test_unknown_model_is_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-9", messages=HELLO)
    assert info.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-9")
    with pytest.raises(openai.NotFoundError):  # the route's `$` matched before a final newline
        client.models.retrieve(f"{MODEL}\n")


def test_context_length_exceeded(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=5000)
    assert info.value.code == "context_length_exceeded"
    long_prompt = "word " * 5000
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=MODEL, prompt=long_prompt, max_tokens=1)
    assert info.value.code == "context_length_exceeded"


def test_bad_token_ids_are_400(server: Server) -> None:
    with server.http() as http:
        resp = http.post("/v1/completions", json={"model": MODEL, "prompt": [1, 999999]})
    assert resp.status_code == 400 and _error(resp)["param"] == "prompt"


def test_unknown_route_is_openai_shaped_404(server: Server) -> None:
    with server.http() as http:
        resp = http.get("/v1/nothing-here")
    assert resp.status_code == 404
    _error(resp)


@pytest.fixture(scope="module")
def keyed_server() -> Iterator[Server]:
    yield from start_server("--parallel", "1", "--ctx-size", "512", api_key="sekrit")


def test_api_key_required_on_v1(keyed_server: Server) -> None:
    with pytest.raises(openai.AuthenticationError) as info:
        keyed_server.client(api_key="wrong").models.list()
    assert info.value.code == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        keyed_server.client(api_key="wrong").chat.completions.create(model=MODEL, messages=HELLO)
    good = keyed_server.client()
    assert good.models.list().data[0].id == MODEL
    base = keyed_server.base_url
    assert httpx.get(f"{base}/v1/models", headers={"X-Api-Key": "sekrit"}).status_code == 200
    missing = httpx.post(f"{base}/v1/completions", json={})
    assert missing.status_code == 401
    assert missing.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(f"{base}/v1/models", headers={"Authorization": "Bearer"}).status_code == 401
    assert httpx.get(f"{base}/health").status_code == 200  # public


@pytest.mark.parametrize(
    ("method", "path", "content"),
    [
        ("POST", "/v1/chat/completions", b"{not json"),  # the key is checked before the body
        ("POST", "/v1/chat/completions/", b"{}"),
        ("GET", "/v1/chat/completions", b""),
        ("GET", "/v1/no-such-route", b""),
        ("POST", "/tokenize", b"{}"),
        ("POST", "/detokenize", b"{}"),
    ],
)
def test_no_key_is_401_before_anything_else(
    keyed_server: Server, method: str, path: str, content: bytes
) -> None:
    headers = {"content-type": "application/json"}
    resp = httpx.request(method, keyed_server.base_url + path, content=content, headers=headers)
    assert resp.status_code == 401, resp.text
    assert _error(resp)["code"] == "invalid_api_key"


def test_health_is_503_loading_until_models_are_ready() -> None:
    from fastapi.testclient import TestClient

    from roost.api.app import create_app
    from roost.config import load_settings

    # without entering the client's context the lifespan never runs: models stay "loading"
    client = TestClient(create_app(load_settings(None, api_key="k")))
    health = client.get("/health")
    assert health.status_code == 503
    assert health.json()["status"] == "loading"
    busy = client.post(
        "/v1/chat/completions",
        json={"model": MODEL, "messages": HELLO},
        headers={"Authorization": "Bearer k"},
    )
    assert busy.status_code == 503
    assert busy.json()["error"]["code"] == "model_loading"


@pytest.mark.parametrize(
    ("field", "value", "limit"),
    [  # OpenAI's limits for tools and logit_bias; a history longer than any context
        ("messages", [{"role": "user", "content": "x"}] * 4097, 4096),
        ("tools", [{"type": "function", "function": {"name": f"f{i}"}} for i in range(129)], 128),
        ("logit_bias", {str(i): 1 for i in range(301)}, 300),
        ("stop", [str(i) for i in range(17)], 16),
    ],
)
def test_counts_over_a_limit_are_400_naming_it(
    server: Server, field: str, value: object, limit: int
) -> None:
    body = {"model": MODEL, "messages": HELLO, field: value}
    with server.http() as http:
        resp = http.post("/v1/chat/completions", json=body)
    assert resp.status_code == 400, resp.text
    error = _error(resp)
    assert error["param"] == field and f"at most {limit}" in error["message"], error
