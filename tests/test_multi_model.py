"""A config listing several models: one engine each, `model` picks one."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import Server, start_config_server


@pytest.fixture(scope="module")
def two_models(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from start_config_server(
        tmp_path_factory,
        "ctx_size: 512\nmodels:\n  - {name: small-a, parallel: 1}\n  - {name: small-b}\n",
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
