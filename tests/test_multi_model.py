"""A config listing several models: one engine each, `model` picks one."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from roost.llama.model import LlamaModel
from tests.conftest import Server, start_config_server
from tests.forcing import forced_text


@pytest.fixture(scope="module")
def two_models(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from start_config_server(
        tmp_path_factory,
        "ctx_size: 512\n"
        "defaults: {max_tokens: 4, temperature: 0}\n"  # server-wide
        "models:\n"
        "  - {name: small-a, parallel: 1, defaults: {max_tokens: 2, stop: [' sea']}}\n"
        "  - {name: small-b}\n",
    )


def test_each_configured_model_is_served(two_models: Server) -> None:
    client = two_models.client()
    assert sorted(m.id for m in client.models.list().data) == ["small-a", "small-b"]
    for name in ("small-a", "small-b"):
        reply = client.completions.create(model=name, prompt="Hello", max_tokens=3)
        assert reply.model == name and reply.usage is not None
    # parallel comes from the model entry (1 → 512 tokens per request) or the server default
    # (4 → llama.cpp pads each share to 256)
    with two_models.http() as http:
        body = {"prompt": "Hello", "max_tokens": 300}
        assert http.post("/v1/completions", json={**body, "model": "small-a"}).status_code == 200
        too_long = http.post("/v1/completions", json={**body, "model": "small-b"})
    assert too_long.status_code == 400
    assert too_long.json()["error"]["code"] == "context_length_exceeded"


@pytest.fixture(scope="module")
def one_broken(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    junk = tmp_path_factory.mktemp("junk") / "broken.gguf"
    junk.write_bytes(b"this is not a GGUF file" * 100)
    yield from start_config_server(
        tmp_path_factory,
        f"ctx_size: 512\nmodels:\n  - {{name: broken, path: {junk}}}\n  - {{name: good}}\n",
    )


def test_a_model_that_fails_to_load_leaves_the_others_serving(one_broken: Server) -> None:
    with one_broken.http() as http:
        health = http.get("/health")
        assert health.status_code == 200 and health.json()["status"] == "ok"
        assert health.json()["models"] == ["good"]
        assert "broken" in health.json()["failed"]
        body = {"prompt": "Hello", "max_tokens": 2}
        assert http.post("/v1/completions", json={**body, "model": "good"}).status_code == 200
        failed = http.post("/v1/completions", json={**body, "model": "broken"})
        listed = [m["id"] for m in http.get("/v1/models").json()["data"]]
    assert failed.status_code == 503
    error = failed.json()["error"]
    assert error["code"] == "model_load_failed"
    assert error["message"].startswith("The model 'broken' failed to load: ")
    assert "broken.gguf" in error["message"]  # the cause names the file
    assert listed == ["good"]


def test_sampling_defaults_fill_what_a_request_leaves_unset(
    two_models: Server, eog_bias: dict[str, int], local_model: LlamaModel
) -> None:
    """Precedence: the request's value, then the model's defaults, then the server's."""
    client = two_models.client()

    def num_tokens(model: str, **fields: object) -> int:
        body = {"logit_bias": eog_bias, **fields}  # nothing ends before max_tokens
        reply = client.completions.create(model=model, prompt="Hello", extra_body=body)
        assert reply.usage is not None
        return reply.usage.completion_tokens

    assert num_tokens("small-a") == 2  # the model's own default
    assert num_tokens("small-b") == 4  # the server-wide default
    assert num_tokens("small-a", max_tokens=5) == 5  # the request wins
    chat = client.chat.completions.create(
        model="small-a", messages=[{"role": "user", "content": "Hi"}], logit_bias=eog_bias
    )
    assert chat.usage is not None and chat.usage.completion_tokens == 2

    # a default stop string cuts the text; an explicit empty list asks for none
    # (greedy: the server-wide temperature 0, which the forcing needs)
    forced = forced_text(local_model, "the blue sea")
    cut = client.completions.create(
        model="small-a", prompt="Hello", max_tokens=10, extra_body=forced
    )
    assert cut.choices[0].text == "the blue" and cut.choices[0].finish_reason == "stop"
    whole = client.completions.create(
        model="small-a", prompt="Hello", max_tokens=10, extra_body={**forced, "stop": []}
    )
    assert whole.choices[0].text == "the blue sea"

    with two_models.http() as http:
        card_a = http.get("/v1/models/small-a").json()
        card_b = http.get("/v1/models/small-b").json()
    assert card_a["roost"]["defaults"] == {"temperature": 0, "max_tokens": 2, "stop": [" sea"]}
    assert card_b["roost"]["defaults"] == {"temperature": 0, "max_tokens": 4}
