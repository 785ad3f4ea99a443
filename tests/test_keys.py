"""Several named API keys: each works, each owns its sessions, a key file rotates on SIGHUP."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import MODEL, Server, start_config_server

KEYS = {"alice": "key-alice-1", "bob": "key-bob-1"}


@pytest.fixture(scope="module")
def key_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("keys") / "keys.txt"
    path.write_text("# name: key\ncarol: key-carol-1\n")
    return path


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory, key_file: Path) -> Iterator[Server]:
    config = (
        "parallel: 1\napi_keys:\n"
        + "".join(f"  {name}: {key}\n" for name, key in KEYS.items())
        + f"api_key_file: {key_file}\n"
    )
    yield from start_config_server(tmp_path_factory, config)


def _http(server: Server, key: str) -> httpx.Client:
    return httpx.Client(
        base_url=server.base_url, timeout=120, headers={"Authorization": f"Bearer {key}"}
    )


def _status(server: Server, key: str) -> int:
    with _http(server, key) as http:
        return http.get("/v1/models").status_code


def test_every_named_key_works_and_no_other(keyed: Server) -> None:
    assert [_status(keyed, key) for key in (*KEYS.values(), "key-carol-1")] == [200, 200, 200]
    assert _status(keyed, "key-mallory") == 401
    assert httpx.get(f"{keyed.base_url}/v1/models").status_code == 401  # no key at all


def test_a_keys_sessions_are_its_own(keyed: Server) -> None:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Remember the harbour. " * 10}],
        "max_tokens": 2,
        "user": "notes",
    }
    with _http(keyed, KEYS["alice"]) as alice, _http(keyed, KEYS["bob"]) as bob:
        assert alice.post("/v1/chat/completions", json=body).status_code == 200
        assert any(s["id"] == "notes" for s in alice.get("/v1/sessions").json()["data"])
        assert not any(s["id"] == "notes" for s in bob.get("/v1/sessions").json()["data"])
        assert bob.get("/v1/sessions/notes").status_code == 404
        assert bob.delete("/v1/sessions/notes").status_code == 404
        assert alice.get("/v1/sessions/notes").status_code == 200  # bob deleted nothing


def test_the_key_file_rotates_on_sighup(keyed: Server, key_file: Path) -> None:
    key_file.write_text("carol: key-carol-2\n")
    os.kill(keyed.process.pid, signal.SIGHUP)
    deadline = time.monotonic() + 30
    while _status(keyed, "key-carol-2") != 200:
        assert time.monotonic() < deadline, "the new key was never accepted"
        time.sleep(0.1)
    assert _status(keyed, "key-carol-1") == 401  # the old one is gone
    assert _status(keyed, KEYS["alice"]) == 200  # keys from the config stay
    key_file.write_text("this line has no key\n")  # a broken file keeps the keys in use
    os.kill(keyed.process.pid, signal.SIGHUP)
    time.sleep(0.5)
    assert _status(keyed, "key-carol-2") == 200
    assert keyed.process.poll() is None


def test_a_bad_key_file_stops_the_start(tmp_path: Path) -> None:
    from roost.cli import main

    bad = tmp_path / "keys.txt"
    bad.write_text("alice key-without-colon\n")
    assert main(["models", "--api-key-file", str(bad)]) == 2


def test_the_log_names_the_key_never_the_key_nor_the_prompt(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    log_path = tmp_path_factory.mktemp("log") / "stderr.log"
    secret, prompt = "key-dave-s3cret", "the purple elephant counts to forty-two"
    body = {"model": MODEL, "messages": [{"role": "user", "content": prompt}], "max_tokens": 2}
    config = f"parallel: 1\napi_keys:\n  dave: {secret}\n"
    with log_path.open("wb") as stderr:
        servers = start_config_server(
            tmp_path_factory, config, "--log-level", "info", stderr=stderr
        )
        server = next(servers)
        with _http(server, secret) as http:
            assert http.post("/v1/chat/completions", json=body).status_code == 200
            stream = http.post("/v1/completions", json={**body, "prompt": prompt, "stream": True})
            assert stream.status_code == 200
        assert httpx.get(f"{server.base_url}/v1/models").status_code == 401
        servers.close()  # stops the server: its log is complete
    log = log_path.read_text()
    assert '"POST /v1/chat/completions" 200' in log and "key=dave" in log, log
    assert '"POST /v1/completions" 200' in log, log
    assert '"GET /v1/models" 401' in log and "key=-" in log, log
    assert secret not in log and "purple elephant" not in log, log
