"""Transport: CORS for the origins a user names (none by default)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import Server, start_config_server

ALLOWED = "http://app.example"
PREFLIGHT = {
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "authorization,content-type",
}


@pytest.fixture(scope="module")
def cors_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    config = f"cors_origins: ['{ALLOWED}']\nparallel: 1\n"
    yield from start_config_server(tmp_path_factory, config, api_key="secret")


def test_a_named_origin_may_call_the_api_from_a_browser(cors_server: Server) -> None:
    with httpx.Client(base_url=cors_server.base_url) as http:
        # the preflight carries no key: it must not get a 401
        preflight = http.options("/v1/chat/completions", headers={"Origin": ALLOWED, **PREFLIGHT})
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == ALLOWED
        listing = http.get(
            "/v1/models", headers={"Origin": ALLOWED, "Authorization": "Bearer secret"}
        )
        assert listing.status_code == 200
        assert listing.headers["access-control-allow-origin"] == ALLOWED
        # the key is still required for the call itself
        assert http.get("/v1/models", headers={"Origin": ALLOWED}).status_code == 401


def test_other_origins_get_no_cors_headers(cors_server: Server, server: Server) -> None:
    with httpx.Client(base_url=cors_server.base_url) as http:
        preflight = http.options(
            "/v1/chat/completions", headers={"Origin": "http://evil.example", **PREFLIGHT}
        )
        assert "access-control-allow-origin" not in preflight.headers
    with server.http() as http:  # the default: no origin allowed
        reply = http.get("/v1/models", headers={"Origin": ALLOWED})
        assert "access-control-allow-origin" not in reply.headers
