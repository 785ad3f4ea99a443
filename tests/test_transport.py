"""Transport: HTTPS without a proxy, and CORS for the origins a user names (none by default)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import MODEL, Server, start_config_server, start_server

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


def test_https_with_a_certificate_made_here(tmp_path_factory: pytest.TempPathFactory) -> None:
    import trustme

    folder = tmp_path_factory.mktemp("tls")
    authority = trustme.CA()
    certificate = authority.issue_cert("127.0.0.1")
    ca, cert, key = folder / "ca.pem", folder / "cert.pem", folder / "key.pem"
    authority.cert_pem.write_to_path(str(ca))
    certificate.private_key_pem.write_to_path(str(key))
    certificate.cert_chain_pems[0].write_to_path(str(cert))
    flags = ("--parallel", "1", "--ssl-certfile", str(cert), "--ssl-keyfile", str(key))
    for server in start_server(*flags, tls_ca=str(ca)):
        assert server.base_url.startswith("https://")
        with server.http() as http:
            reply = http.post(
                "/v1/completions", json={"model": MODEL, "prompt": "Hi", "max_tokens": 2}
            )
            assert reply.status_code == 200, reply.text
        # the system's CAs do not know this one
        with (
            httpx.Client(base_url=server.base_url) as untrusting,
            pytest.raises(httpx.ConnectError),
        ):
            untrusting.get("/health")
        plain = server.base_url.replace("https://", "http://")
        with pytest.raises(httpx.HTTPError):  # no plain HTTP on the TLS port
            httpx.get(f"{plain}/health", timeout=5)


def test_a_certificate_without_its_key_is_a_startup_error(tmp_path: Path) -> None:
    from roost.cli import main

    cert = tmp_path / "cert.pem"
    cert.write_text("not used")
    assert main(["models", "--ssl-certfile", str(cert)]) == 2
