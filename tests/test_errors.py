"""Bad input gets OpenAI-shaped errors with the right status, never a 500."""

from __future__ import annotations

from collections.abc import Iterator

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
    import httpx

    base = keyed_server.base_url
    assert httpx.get(f"{base}/v1/models", headers={"X-Api-Key": "sekrit"}).status_code == 200
    missing = httpx.post(f"{base}/v1/completions", json={})
    assert missing.status_code == 401
    assert missing.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(f"{base}/v1/models", headers={"Authorization": "Bearer"}).status_code == 401
    assert httpx.get(f"{base}/health").status_code == 200  # public


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
