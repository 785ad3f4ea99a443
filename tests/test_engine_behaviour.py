"""Continuous batching as a client sees it: concurrency, queueing, disconnects, prefix reuse."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from tests.conftest import MODEL, Server, start_server


def _stream_tokens(client: openai.OpenAI, prompt: str, bias: dict[str, int], n: int) -> tuple:
    usage, reason = None, None
    for chunk in client.completions.create(
        model=MODEL,
        prompt=prompt,
        max_tokens=n,
        stream=True,
        logit_bias=bias,
        stream_options={"include_usage": True},
    ):
        if chunk.choices and chunk.choices[0].finish_reason:
            reason = chunk.choices[0].finish_reason
        if chunk.usage:
            usage = chunk.usage
    return reason, usage


def test_eight_concurrent_streams_complete_in_full(
    client: openai.OpenAI, eog_bias: dict[str, int]
) -> None:
    prompts = [f"Story number {i}: once upon a time" for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda p: _stream_tokens(client, p, eog_bias, 48), prompts))
    for reason, usage in results:
        assert reason == "length"
        assert usage is not None and usage.completion_tokens == 48


def test_prefix_reuse_reports_cached_tokens(client: openai.OpenAI) -> None:
    system = "You are a meticulous assistant. " + " ".join(f"Rule {i}: be kind." for i in range(60))
    first = client.chat.completions.create(
        model=MODEL,
        max_tokens=4,
        messages=[{"role": "system", "content": system}, {"role": "user", "content": "Hi"}],
    )
    second = client.chat.completions.create(
        model=MODEL,
        max_tokens=4,
        messages=[{"role": "system", "content": system}, {"role": "user", "content": "Hello!"}],
    )
    assert first.usage is not None and second.usage is not None
    cached = second.usage.prompt_tokens_details.cached_tokens  # type: ignore[union-attr]
    assert cached >= 300
    assert cached < second.usage.prompt_tokens


@pytest.fixture(scope="module")
def single_slot() -> Iterator[Server]:
    yield from start_server("--parallel", "1", "--max-waiting", "0", "--ctx-size", "2048")


def _wait_idle(server: Server, attempts: int = 50) -> bool:
    for _ in range(attempts):
        if httpx.get(f"{server.base_url}/health").json()["generation_status"] == "idle":
            return True
        time.sleep(0.1)
    return False


def test_disconnect_frees_the_sequence(single_slot: Server, eog_bias: dict[str, int]) -> None:
    body = {
        "model": MODEL,
        "prompt": "Count forever:",
        "max_tokens": 1900,
        "stream": True,
        "logit_bias": eog_bias,
    }
    with (
        httpx.Client(base_url=single_slot.base_url, timeout=60) as http,
        http.stream("POST", "/v1/completions", json=body) as resp,
    ):
        lines = resp.iter_lines()
        for _ in range(3):
            next(lines)
    # 1,900 tokens would take far longer than this wait; only cancellation makes it idle
    assert _wait_idle(single_slot)
    out = single_slot.client().completions.create(model=MODEL, prompt="Hi", max_tokens=3)
    assert out.choices[0].finish_reason in ("stop", "length")


def test_full_queue_is_503_with_retry_after(single_slot: Server, eog_bias: dict[str, int]) -> None:
    body = {
        "model": MODEL,
        "prompt": "Busy:",
        "max_tokens": 1900,
        "stream": True,
        "logit_bias": eog_bias,
    }
    with httpx.Client(base_url=single_slot.base_url, timeout=60) as http:
        with http.stream("POST", "/v1/completions", json=body) as resp:
            assert resp.status_code == 200
            lines = resp.iter_lines()  # kept: dropping the iterator closes the connection
            assert next(lines).startswith("data: {")
            busy = http.post(
                "/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 1}
            )
        assert busy.status_code == 503, busy.text
        assert busy.headers["Retry-After"]
        assert busy.json()["error"]["code"] == "queue_full"
    assert _wait_idle(single_slot)


@pytest.fixture(scope="module")
def impatient() -> Iterator[Server]:
    yield from start_server(
        "--parallel", "1", "--max-waiting", "8", "--max-queue-wait", "1", "--ctx-size", "2048"
    )


def test_a_request_that_cannot_start_in_time_is_503_queue_timeout(
    impatient: Server, eog_bias: dict[str, int]
) -> None:
    busy = {"model": MODEL, "prompt": "Busy:", "max_tokens": 600, "logit_bias": eog_bias}
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    waiting = [
        ("/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": 2}),
        ("/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": 2, "stream": True}),
        ("/v1/chat/completions", {**chat, "stream": True}),
        ("/v1/chat/completions", {**chat, "n": 2}),
    ]
    with httpx.Client(base_url=impatient.base_url, timeout=60) as http:
        with http.stream("POST", "/v1/completions", json={**busy, "stream": True}) as resp:
            assert resp.status_code == 200
            lines = resp.iter_lines()
            assert next(lines).startswith("data: {")  # the only sequence is taken
            with ThreadPoolExecutor(len(waiting)) as pool:
                refused = list(pool.map(lambda req: http.post(req[0], json=req[1]), waiting))
            # the running request loses nothing: it streams all its tokens to the end
            texts = [line for line in lines if line.startswith("data: {")]
        assert '"finish_reason":"length"' in texts[-1].replace(" ", "")
        for reply in refused:  # a stream too: its status waited for the request to start
            assert reply.status_code == 503, reply.text
            assert reply.headers["Retry-After"]
            assert reply.headers["content-type"].startswith("application/json")
            assert reply.json()["error"]["code"] == "queue_timeout"
        assert _wait_idle(impatient)
        # nothing of the refused requests is left queued: the next one starts at once
        after = http.post("/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 2})
        assert after.status_code == 200, after.text


def test_more_choices_than_the_server_holds_is_400_not_503(single_slot: Server) -> None:
    # 1 slot + 0 waiting: n=2 could never be queued, so a retryable 503 would loop forever
    with httpx.Client(base_url=single_slot.base_url, timeout=60) as http:
        for path, body in (
            ("/v1/completions", {"prompt": "x", "n": 2}),
            ("/v1/completions", {"prompt": ["x", "y"]}),
            ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "n": 2}),
        ):
            resp = http.post(path, json={"model": MODEL, "max_tokens": 1, **body})
            assert resp.status_code == 400, resp.text
            assert resp.json()["error"]["param"] == "n"


@pytest.fixture(scope="module")
def unified_small() -> Iterator[Server]:
    yield from start_server("--parallel", "4", "--ctx-size", "512", "--kv-unified")


def test_unified_cache_preempts_and_still_delivers_everything(
    unified_small: Server, eog_bias: dict[str, int]
) -> None:
    # four requests need ~850 cells of a 512-cell cache: the newest must be preempted and
    # resumed, and every request still delivers all of its tokens
    client = unified_small.client()
    prompts = [f"Tale {i}: a dragon" for i in range(4)]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda p: _stream_tokens(client, p, eog_bias, 200), prompts))
    for reason, usage in results:
        assert reason == "length"
        assert usage is not None and usage.completion_tokens == 200
    # a preempted request was swapped out to the RAM tier and restored, not computed again
    with unified_small.http() as http:
        assert http.get("/v1/sessions").json()["hits"]["ram"] >= 1


def test_per_request_context_is_the_cache_share(client: openai.OpenAI) -> None:
    # the default test server splits 4096 cells over 4 sequences: 1024 tokens per request
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=MODEL, prompt="hi", max_tokens=1100)
    assert "1024" in info.value.message
