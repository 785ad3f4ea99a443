"""Request size limits: a body over max_body_bytes is a 413 before it is read in full."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.conftest import MODEL, Server, start_server

LIMIT = 4096


@pytest.fixture(scope="module")
def small_bodies() -> Iterator[Server]:
    yield from start_server("--parallel", "1", "--max-body-bytes", str(LIMIT))


def _body(size: int) -> bytes:
    """A completions request of about `size` bytes."""
    padding = "x" * max(0, size - 100)
    return json.dumps({"model": MODEL, "prompt": padding, "max_tokens": 1}).encode()


def _assert_too_large(response_json: dict[str, object]) -> None:
    error = response_json["error"]
    assert isinstance(error, dict)
    assert error["code"] == "request_too_large" and error["type"] == "invalid_request_error"
    assert str(LIMIT) in str(error["message"])


def test_a_body_over_the_limit_is_refused_by_its_length(small_bodies: Server) -> None:
    with small_bodies.http() as http:
        reply = http.post(
            "/v1/completions",
            content=_body(3 * LIMIT),
            headers={"content-type": "application/json"},
        )
    assert reply.status_code == 413
    _assert_too_large(reply.json())


def test_a_chunked_body_over_the_limit_is_refused_while_it_arrives(small_bodies: Server) -> None:
    body = _body(3 * LIMIT)

    def chunks() -> Iterator[bytes]:  # no Content-Length: only counting the bytes can tell
        for start in range(0, len(body), 1024):
            yield body[start : start + 1024]

    with small_bodies.http() as http:
        reply = http.post(
            "/v1/completions", content=chunks(), headers={"content-type": "application/json"}
        )
    assert reply.status_code == 413
    _assert_too_large(reply.json())


def test_a_body_under_the_limit_is_served(small_bodies: Server) -> None:
    with small_bodies.http() as http:
        reply = http.post(
            "/v1/completions",
            content=_body(LIMIT // 2),
            headers={"content-type": "application/json"},
        )
    assert reply.status_code == 200, reply.text
    assert reply.json()["usage"]["completion_tokens"] == 1
