"""Named sessions resume from saved state: hot, from RAM, from disk, after a restart or a
kill -9; bad session files are skipped; budgets, deletion, concurrency and odd ids."""

from __future__ import annotations

import contextlib
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from tests.conftest import MODEL, Server, start_server

SYSTEM = "You are a patient assistant who answers questions about the sea. " * 12
# one sequence: every other conversation takes it, so a return never finds its state hot
FLAGS = ("--parallel", "1", "--ctx-size", "2048")


def _chat(
    http: httpx.Client,
    messages: list[dict[str, str]],
    session: str | None = None,
    headers: dict[str, str] | None = None,
    **fields: Any,
) -> httpx.Response:
    body: dict[str, Any] = {"model": MODEL, "messages": messages, "max_tokens": 3, **fields}
    if session is not None:
        body["user"] = session
    return http.post("/v1/chat/completions", json=body, headers=headers or {})


def _usage(response: httpx.Response) -> tuple[int, int]:
    assert response.status_code == 200, response.text
    usage = response.json()["usage"]
    return usage["prompt_tokens"], usage["prompt_tokens_details"]["cached_tokens"]


def _conversation(topic: str) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": f"Tell me about {topic}, in detail please."},
    ]


def _turn(http: httpx.Client, session: str, messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """One turn; returns the history with the answer and a new question."""
    reply = _chat(http, messages, session)
    _usage(reply)
    answer = reply.json()["choices"][0]["message"]["content"] or ""
    return [
        *messages,
        {"role": "assistant", "content": answer},
        {"role": "user", "content": "Go on."},
    ]


def _displace(http: httpx.Client, *topics: str) -> None:
    """Other conversations take the only sequence."""
    for topic in topics:
        _usage(
            _chat(http, [{"role": "user", "content": f"A different question on {topic}. " * 20}])
        )


def _sessions(http: httpx.Client) -> dict[str, Any]:
    listing = http.get("/v1/sessions")
    assert listing.status_code == 200
    return listing.json()


def _tier(http: httpx.Client, session: str) -> str | None:
    found = [s for s in _sessions(http)["data"] if s["id"] == session]
    return found[0]["tier"] if found else None


@pytest.fixture(scope="module")
def ram_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("ram")
    yield from start_server(*FLAGS, sessions={"dir": str(folder), "sync": "evict"})


def test_a_session_resumes_from_ram(ram_server: Server) -> None:
    with ram_server.http() as http:
        history = _turn(http, "ram-1", _conversation("tides"))
        _displace(http, "volcanoes")
        assert _tier(http, "ram-1") == "ram"
        num_prompt, num_cached = _usage(_chat(http, history, "ram-1"))
    # everything but the new user message (and the two tokens always recomputed)
    assert num_cached >= num_prompt - 30
    assert num_cached > 100


def test_the_full_history_resent_is_the_same_prompt_as_a_fresh_one(ram_server: Server) -> None:
    with ram_server.http() as http:
        history = _turn(http, "fresh", _conversation("reefs"))
        history = _turn(http, "fresh", history)
        _displace(http, "deserts")
        resumed, cached = _usage(_chat(http, history, "fresh"))
        fresh, _fresh_cached = _usage(_chat(http, history))  # no session, nothing of it hot
        tokenized = http.post("/tokenize", json={"model": MODEL, "messages": history}).json()[
            "count"
        ]
    assert resumed == fresh == tokenized  # nothing duplicated, nothing lost
    assert cached > 100


def test_an_anonymous_conversation_resumes_from_ram(ram_server: Server) -> None:
    with ram_server.http() as http:
        history = _conversation("whales")
        first = _chat(http, history)
        answer = first.json()["choices"][0]["message"]["content"] or ""
        history += [{"role": "assistant", "content": answer}, {"role": "user", "content": "More."}]
        _displace(http, "mountains")
        num_prompt, num_cached = _usage(_chat(http, history))
    assert num_cached > 100 and num_cached >= num_prompt - 40


def test_two_requests_on_one_session_conflict(ram_server: Server) -> None:
    body = {
        "model": MODEL,
        "messages": _conversation("storms"),
        "max_tokens": 200,
        "ignore_eos": True,
        "stream": True,
        "user": "busy",
    }
    with ram_server.http() as http, http.stream("POST", "/v1/chat/completions", json=body) as first:
        assert first.status_code == 200
        lines = first.iter_lines()  # kept: a dropped line iterator closes the response
        next(lines)  # the request is running
        second = _chat(http, _conversation("storms"), "busy")
        assert second.status_code == 409, second.text
        assert second.json()["error"]["code"] == "session_busy"
        other = _chat(http, _conversation("storms"), "not-busy")
        assert other.status_code in (200, 503)  # another session is no conflict


def test_n_choices_keep_the_first_choices_state(ram_server: Server) -> None:
    with ram_server.http() as http:
        reply = _chat(http, _conversation("fish"), "choices", n=2, temperature=1.0)
        _usage(reply)
        [session] = [s for s in _sessions(http)["data"] if s["id"] == "choices"]
        prompt_tokens = reply.json()["usage"]["prompt_tokens"]
        # the prompt and the first choice's tokens but its last (sampled, not yet decoded)
        assert prompt_tokens <= session["tokens"] <= prompt_tokens + 3


@pytest.mark.parametrize(
    ("session", "status"),
    [("x" * 10_000, 400), ("sitzung-äöü-会话-🐳", 200), ("../../etc/passwd", 200), ("", 200)],
)
def test_odd_session_ids(ram_server: Server, session: str, status: int) -> None:
    with ram_server.http() as http:
        reply = _chat(http, _conversation("sand"), session)
        assert reply.status_code == status, reply.text
        if status == 400:
            assert reply.json()["error"]["param"] == "user"
            return
        if not session:  # as OpenAI's empty `user`: no session at all
            assert all(s["id"] != "" for s in _sessions(http)["data"])
            return
        assert _tier(http, session) is not None
        assert http.get(f"/v1/sessions/{quote(session, safe='')}").status_code == 200


def test_the_header_names_the_session(ram_server: Server) -> None:
    with ram_server.http() as http:
        reply = _chat(http, _conversation("kelp"), "body", headers={"X-Session-ID": "header"})
        _usage(reply)
        ids = {s["id"] for s in _sessions(http)["data"]}
    assert "header" in ids and "body" not in ids


def test_delete_removes_every_tier(ram_server: Server) -> None:
    with ram_server.http() as http:
        _turn(http, "doomed", _conversation("eels"))
        assert _tier(http, "doomed") == "hot"
        assert http.delete("/v1/sessions/doomed").json()["deleted"] is True
        assert _tier(http, "doomed") is None
        assert http.get("/v1/sessions/doomed").status_code == 404
        assert http.delete("/v1/sessions/doomed").status_code == 404
        # the next request of that name starts from nothing of its own
        _displace(http, "rivers")


def test_a_session_on_a_model_that_is_not_served(ram_server: Server) -> None:
    with ram_server.http() as http:
        body = {"model": "no-such-model", "messages": _conversation("ice"), "user": "lost"}
        reply = http.post("/v1/chat/completions", json=body)
    assert reply.status_code == 404 and reply.json()["error"]["code"] == "model_not_found"


# -- the disk tier ----------------------------------------------------------------------------


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.kv") if not p.is_symlink())


def test_a_session_resumes_from_disk_after_a_restart(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    folder = tmp_path_factory.mktemp("disk")
    settings = {"dir": str(folder), "sync": "evict"}
    with _server(settings) as server, server.http() as http:
        history = _turn(http, "restart", _conversation("harbours"))
        history = _turn(http, "restart", history)
    # the server stopped: its hot and RAM states went to disk
    assert _files(folder)
    with _server(settings) as server, server.http() as http:
        assert _tier(http, "restart") == "disk"
        num_prompt, num_cached = _usage(_chat(http, history, "restart"))
        hits = _sessions(http)["hits"]
    assert num_cached > 100 and num_cached >= num_prompt - 30
    assert hits["disk"] >= 1


def test_sync_turn_survives_kill_9(tmp_path_factory: pytest.TempPathFactory) -> None:
    folder = tmp_path_factory.mktemp("kill")
    settings = {"dir": str(folder), "sync": "turn"}
    with _server(settings) as server, server.http() as http:
        history = _turn(http, "crash", _conversation("lighthouses"))
        os.kill(server.process.pid, signal.SIGKILL)  # right after the answer
        server.process.wait(10)
    with _server(settings) as server, server.http() as http:
        num_prompt, num_cached = _usage(_chat(http, history, "crash"))
    assert num_cached > 100 and num_cached >= num_prompt - 30


def test_delete_removes_ram_and_disk_copies(tmp_path_factory: pytest.TempPathFactory) -> None:
    folder = tmp_path_factory.mktemp("delete")
    settings = {"dir": str(folder), "sync": "turn"}
    with _server(settings) as server, server.http() as http:
        _turn(http, "kept", _conversation("buoys"))
        _turn(http, "gone", _conversation("wrecks"))
        _displace(http, "forests")  # "gone" leaves the sequence: in RAM and (sync) on disk
        assert _tier(http, "gone") == "ram" and len(_files(folder)) == 2
        assert http.delete("/v1/sessions/gone").status_code == 200
        assert _tier(http, "gone") is None
        assert len(_files(folder)) == 1
    with _server(settings) as server, server.http() as http:  # nothing of it comes back
        ids = {s["id"] for s in _sessions(http)["data"]}
    assert ids == {"kept"}


def test_bad_session_files_are_skipped_and_deleted(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    folder = tmp_path_factory.mktemp("bad")
    settings = {"dir": str(folder), "sync": "turn"}
    with _server(settings) as server, server.http() as http:
        for name in ("good", "corrupt", "short", "foreign"):
            _turn(http, name, _conversation(f"{name} boats"))
        listing = {s["id"]: s for s in _sessions(http)["data"]}
    assert set(listing) >= {"good", "corrupt", "short", "foreign"}
    by_key = {_header(p)["key"].split("\x00=")[1]: p for p in _files(folder)}
    _flip_last_byte(by_key["corrupt"])
    by_key["short"].write_bytes(by_key["short"].read_bytes()[:-100])
    _rewrite_header(by_key["foreign"], lambda h: h["identity"].update(model="another"))
    secret = tmp_path_factory.mktemp("outside") / "secret.kv"
    secret.write_bytes(by_key["good"].read_bytes())
    planted = by_key["good"].parent / ("0" * 64 + ".kv")
    planted.symlink_to(secret)
    with _server(settings) as server, server.http() as http:
        # headers are checked at start; a payload's checksum when it is read
        ids = {s["id"] for s in _sessions(http)["data"]}
        assert ids == {"good", "corrupt"}
        history = _conversation("corrupt boats")
        _, num_cached = _usage(
            _chat(http, [*history, {"role": "user", "content": "Hi"}], "corrupt")
        )
        assert num_cached == 0  # computed: the corrupt state was not loaded
        _, num_cached = _usage(
            _chat(http, [*_conversation("good boats"), {"role": "user", "content": "Hi"}], "good")
        )
        assert num_cached > 100  # while the good one was
    assert not planted.exists() and not planted.is_symlink() and secret.exists()
    for name in ("short", "foreign"):
        assert not by_key[name].exists()


def test_other_context_parameters_do_not_load_a_state(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    folder = tmp_path_factory.mktemp("params")
    settings = {"dir": str(folder), "sync": "turn"}
    with _server(settings) as server, server.http() as http:
        _turn(http, "shape", _conversation("anchors"))
    assert _files(folder)
    with _server(settings, "--no-flash-attn") as server, server.http() as http:
        assert _tier(http, "shape") is None
    assert not _files(folder)


@pytest.fixture(scope="module")
def state_bytes(ram_server: Server) -> int:
    """The bytes of one saved turn of a conversation (they all have about the same length)."""
    with ram_server.http() as http:
        _turn(http, "measure", _conversation("measuring ships"))
        _displace(http, "sizes")
        [found] = [s for s in _sessions(http)["data"] if s["id"] == "measure"]
    assert found["tier"] == "ram"
    return int(found["bytes"])


def test_the_disk_budget_keeps_the_most_recent(
    tmp_path_factory: pytest.TempPathFactory, state_bytes: int
) -> None:
    folder = tmp_path_factory.mktemp("budget")
    # RAM off, and disk room for two of these states, not three
    budget = int(state_bytes * 2.5)
    settings = {"dir": str(folder), "sync": "turn", "ram_bytes": 0, "disk_bytes": budget}
    with _server(settings) as server, server.http() as http:
        for name in ("old", "middle", "new"):
            _turn(http, name, _conversation(f"{name} ships"))
        tiers = {s["id"]: s["tier"] for s in _sessions(http)["data"]}
        on_disk = _files(folder)
    assert "old" not in tiers and tiers["middle"] == "disk"  # least recently used went first
    assert len(on_disk) == 2
    with _server(settings) as server, server.http() as http:  # RAM off: resumed from the file
        history = [*_conversation("middle ships"), {"role": "user", "content": "Hi"}]
        _, num_cached = _usage(_chat(http, history, "middle"))
    assert num_cached > 100


def test_a_ram_budget_sends_the_oldest_to_disk(
    tmp_path_factory: pytest.TempPathFactory, state_bytes: int
) -> None:
    folder = tmp_path_factory.mktemp("ramdisk")
    settings = {"dir": str(folder), "sync": "evict", "ram_bytes": int(state_bytes * 1.5)}
    with _server(settings) as server, server.http() as http:
        history = _turn(http, "first", _conversation("canals"))
        _turn(http, "second", _conversation("ports"))
        _displace(http, "clouds")  # second leaves the sequence: RAM now holds second only
        tiers = {s["id"]: s["tier"] for s in _sessions(http)["data"]}
        assert tiers["first"] == "disk" and tiers["second"] == "ram"
        num_prompt, num_cached = _usage(_chat(http, history, "first"))
    assert num_cached > 100 and num_cached >= num_prompt - 30


# -- helpers ----------------------------------------------------------------------------------


@contextlib.contextmanager
def _server(sessions: dict[str, Any], *flags: str) -> Iterator[Server]:
    """A server for one block, stopped with SIGTERM (gracefully) at its end."""
    yield from start_server(*FLAGS, *flags, sessions=sessions)


def _header(path: Path) -> dict[str, Any]:
    data = path.read_bytes()
    length = int.from_bytes(data[8:12], "little")
    return json.loads(data[12 : 12 + length])


def _rewrite_header(path: Path, change: Any) -> None:
    data = path.read_bytes()
    length = int.from_bytes(data[8:12], "little")
    header = json.loads(data[12 : 12 + length])
    change(header)
    head = json.dumps(header, separators=(",", ":")).encode()
    path.write_bytes(data[:8] + len(head).to_bytes(4, "little") + head + data[12 + length :])


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
