"""Faults and pressure: a full KV cache, a failed decode, a prompt longer than the batch beside
running streams, a shutdown with requests in flight, two models generating at once.

Every output is forced to run to max_tokens (end tokens banned) and greedy, so no assertion
depends on what the model happens to say. A request's output under load is compared with the
same request run alone, token by token and logprob by logprob; "alone" runs under a second API
key, whose requests never reuse the first key's cache or saved states, so the reference is
computed from nothing.

Exact comparison needs arithmetic that does not depend on how tokens were batched. llama.cpp's
does, three ways (measured on the embedded model, llama-cpp-python 0.3.36):
- flash attention (on by default) computes a chunk of 64 or more rows with another CPU kernel
  than a smaller one: a prompt's logits move by up to ~0.5;
- without flash attention, a one-token decode differs from a longer chunk, and a split-cache
  batch holding several sequences is computed otherwise than each alone (up to ~0.6): so
  --no-flash-attn does not help;
- with two threads, a one-row decode over 256 or more KV cells is computed otherwise than a
  decode of several rows (the threads share the work differently): beside another sequence,
  a long one's next logits differ from its logits alone by up to ~0.6; with one, not at all.
With flash attention, one thread and every decode under 64 rows, the logits are bit-identical
however a sequence's tokens are chunked, whatever shares the batch and wherever its cells sit
(split or unified; the one exception, a unified cache's cells out of position order after a
preemption, is test 1's). So the servers whose outputs are compared keep the default flash
attention and run one thread and batches under 64 rows: the scheduling under test is the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import struct
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from roost.config import load_settings
from roost.engine.client import EngineClient, RequestStream
from roost.engine.params import SamplingParams
from roost.engine.sequence import Event, FinishReason
from roost.engine.session_files import MAGIC
from roost.llama.batch import Batch
from roost.llama.context import DecodeError, KVCacheFull
from roost.llama.model import LlamaModel
from tests.conftest import MODEL, Server, start_server

KEYS = {"load": "key-load", "alone": "key-alone"}  # two owners: neither reuses the other's cache
KEYS_CONFIG = "api_keys: {load: key-load, alone: key-alone}\n"
SMALL_BATCH = "32"  # every decode under flash attention's 64-row kernel switch (see above)
EXACT = ("--threads", "1", "--batch-size", SMALL_BATCH)  # bit-identical logits (see above)
DEADLINE = 300  # seconds a test waits for anything before it fails (never a timing claim)


# -- servers and requests -----------------------------------------------------------------------


@contextlib.contextmanager
def _server(tmp_path: Path, *flags: str, config: str = "", **kwargs: Any) -> Iterator[Server]:
    """A server of its own with the two API keys (and `config`) in its roost.yaml; its stderr
    goes to tmp_path / "stderr.log"."""
    config_file = tmp_path / "roost.yaml"
    config_file.write_text(KEYS_CONFIG + config)
    with (tmp_path / "stderr.log").open("wb") as log:
        servers = start_server(*flags, "--config", str(config_file), stderr=log, **kwargs)
        server = next(servers)
        server.api_key = KEYS["load"]  # for server.http()
        try:
            yield server
        finally:
            servers.close()


def _http(server: Server, key: str = "load") -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {KEYS[key]}"}
    return httpx.AsyncClient(base_url=server.base_url, timeout=DEADLINE, headers=headers)


def _body(prompt: str, max_tokens: int, bias: dict[str, int], **fields: Any) -> dict[str, Any]:
    """A greedy completion that runs to max_tokens, with its tokens' logprobs."""
    return {
        "model": MODEL,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
        "logit_bias": bias,
        "logprobs": 2,  # the chosen token's and the two best
        **fields,
    }


async def _complete(http: httpx.AsyncClient, body: dict[str, Any]) -> dict[str, Any]:
    reply = await http.post("/v1/completions", json=body)
    assert reply.status_code == 200, reply.text
    return reply.json()


def _alone(server: Server, body: dict[str, Any]) -> dict[str, Any]:
    """The request by itself, computed from nothing (the other key's cache is not reused)."""

    async def run() -> dict[str, Any]:
        async with _http(server, "alone") as http:
            return await _complete(http, body)

    return asyncio.run(run())


def _assert_same_output(
    got: dict[str, Any],
    alone: dict[str, Any],
    what: str,
    exact_until: int | None = None,
    tolerance: float = 0.0,
) -> None:
    """Two completion choices hold the same tokens with the same logprobs: exactly, or from
    token `exact_until` on within `tolerance`, where they may also part at a near-tie (the
    reference's logprobs of the two tokens within `tolerance`; nothing after it compares)."""
    a, b = got["logprobs"], alone["logprobs"]
    pairs = list(zip(a["tokens"], a["token_logprobs"], strict=True))
    reference = list(zip(b["tokens"], b["token_logprobs"], b["top_logprobs"], strict=True))
    assert len(pairs) == len(reference), f"{what}: {len(pairs)} tokens, {len(reference)} alone"
    exact_until = len(pairs) if exact_until is None else exact_until
    for i, ((token, logprob), (alone_token, alone_logprob, top)) in enumerate(
        zip(pairs, reference, strict=True)
    ):
        where = f"{what}: token {i} is {token!r} ({logprob}), alone {alone_token!r} ({top})"
        if i < exact_until:
            assert (token, logprob) == (alone_token, alone_logprob), where
        elif token == alone_token:
            assert abs(logprob - alone_logprob) <= tolerance, where
        else:
            assert alone_logprob - top.get(token, -1e9) <= tolerance, where
            return
    assert got["text"] == alone["text"]


def _wait_idle(server: Server) -> None:
    with server.http() as http:
        deadline = time.monotonic() + DEADLINE
        while http.get("/health").json()["generation_status"] != "idle":
            assert time.monotonic() < deadline, "the server never went back to idle"
            time.sleep(0.1)


# -- 1. a full KV cache -------------------------------------------------------------------------

KV_CELLS = 512
KV_PROMPTS = [
    "The lighthouse keeper climbed the stairs and looked out over the sea.",
    "A recipe for bread, with flour, water, salt and a little yeast.",
    "Notes on the migration of birds across the northern mountains.",
    "The committee met on Tuesday to discuss the new library building.",
]
KV_MAX_TOKENS = 160
# Once the cache is full the engine preempts, and the sequences that go on write their new
# tokens into freed cells below their earlier ones: flash attention then sums a sequence's
# cells in another order than alone, and its logprobs drift (up to ~0.15 seen here). A
# corrupted cache (a state restored to the wrong positions, another sequence's cells read)
# moves them by whole nats and changes confident tokens.
KV_DRIFT = 0.5


def test_a_full_kv_cache_preempts_and_every_request_completes(
    tmp_path: Path, eog_bias: dict[str, int]
) -> None:
    """Four requests of ~175 tokens each on a unified cache of 512 cells: the engine preempts
    the newest (its state swapped out to the sessions' RAM tier) and resumes it when there is
    room (from that state, or computed again where llama.cpp finds no contiguous cells to
    load it into: "saved state not restored" in the log). Every request gets all its tokens:
    those it gets alone, bit for bit until the cache is full, within KV_DRIFT after."""
    flags = ("--kv-unified", "--ctx-size", str(KV_CELLS), "--parallel", "4")
    with _server(tmp_path, *flags, *EXACT) as server:
        bodies = [_body(prompt, KV_MAX_TOKENS, eog_bias) for prompt in KV_PROMPTS]

        async def together() -> list[dict[str, Any]]:
            async with _http(server) as http:
                return await asyncio.gather(*(_complete(http, body) for body in bodies))

        replies = asyncio.run(together())
        # the premise: together they need far more cells than there are, each alone fits
        assert sum(r["usage"]["total_tokens"] for r in replies) > KV_CELLS * 1.3
        assert max(r["usage"]["total_tokens"] for r in replies) < KV_CELLS
        for reply in replies:
            assert reply["choices"][0]["finish_reason"] == "length"
            assert reply["usage"]["completion_tokens"] == KV_MAX_TOKENS
        # a preempted request was swapped out and brought back: the store counts the restore
        # it planned (nothing else was ever saved on this fresh server: no idle cache was
        # displaced, the four prompts share no prefix)
        with server.http() as http:
            hits = http.get("/v1/sessions").json()["hits"]
        assert hits["ram"] >= 1, hits
        _wait_idle(server)
        # tokens each sequence generated before the four filled the cache (a few to spare:
        # one may have been admitted a step after the others)
        num_prompt = sum(r["usage"]["prompt_tokens"] for r in replies)
        until_full = (KV_CELLS - num_prompt) // len(replies) - 4
        for body, reply in zip(bodies, replies, strict=True):
            alone = _alone(server, body)
            _assert_same_output(
                reply["choices"][0], alone["choices"][0], body["prompt"], until_full, KV_DRIFT
            )
    log = (tmp_path / "stderr.log").read_text()
    assert "Traceback" not in log, log


# -- 2. a failed decode, and a full KV cache found by llama.cpp ---------------------------------


@contextlib.asynccontextmanager
async def _engine(**settings: Any) -> AsyncIterator[EngineClient]:
    """An engine on the embedded model (tests/test_engine_direct.py's, its threads a setting);
    closed, with its model, afterwards."""
    config = load_settings(None, **settings).resolved_models()[0]
    model = await asyncio.to_thread(LlamaModel, config.path)
    client = await asyncio.to_thread(EngineClient, config, model, asyncio.get_running_loop())
    try:
        yield client
    finally:
        await asyncio.to_thread(client.close)
        model.close()


async def _read(stream: RequestStream, count: int | None = None) -> list[Event]:
    """The next `count` events of a stream, or all of them (to its end)."""
    events: list[Event] = []

    async def read() -> None:
        async for event in stream:
            events.append(event)
            if len(events) == count:
                return

    await asyncio.wait_for(read(), DEADLINE)
    return events


def _greedy(client: EngineClient, max_tokens: int) -> SamplingParams:
    """Greedy with the end tokens banned (to max_tokens on any machine), with logprobs."""
    bias = dict.fromkeys(client.model.eog_ids, -100.0)
    return SamplingParams(max_tokens=max_tokens, temperature=0, logit_bias=bias, num_logprobs=0)


def _tokens(events: list[Event]) -> list[tuple[int, float]]:
    return [(lp.token, lp.logprob) for event in events for lp in event.logprobs]


@dataclass
class _FailedDecode:
    num_failures: int = 0
    finishes: list[tuple[FinishReason | None, str | None]] = field(default_factory=list)
    cells: list[tuple[int, int]] = field(default_factory=list)  # (slot tokens, llama pos max)
    is_idle: bool = False
    num_in_flight_after: int = -1
    next_events: list[Event] = field(default_factory=list)
    num_in_flight_at_end: int = -1


async def _failed_decode_scenario() -> _FailedDecode:
    result = _FailedDecode()
    async with _engine(parallel=2, ctx_size=1024, threads=2) as client:
        engine = client.engine
        streams = [
            client.submit_group(client.model.tokenize(text), [_greedy(client, 200)])[0]
            for text in ("Once upon a time", "The weather today")
        ]
        firsts = [await _read(stream, 2) for stream in streams]  # both are generating now
        owners = {stream.request_id for stream in streams}
        seq_ids = [slot.seq_id for slot in engine.cache.slots if slot.owner in owners]
        assert len(seq_ids) == 2
        decode = engine.ctx.decode

        def fail_once(batch: Batch) -> None:
            if not result.num_failures:
                result.num_failures += 1
                raise DecodeError("llama_decode returned -3")
            decode(batch)

        # the runner's next execute() fails in its decode, after it filled the batch
        engine.ctx.decode = fail_once  # type: ignore[method-assign]
        rests = [await _read(stream) for stream in streams]
        for first, rest in zip(firsts, rests, strict=True):
            last = (first + rest)[-1]
            result.finishes.append((last.finish_reason, last.error))
        # the engine thread waits on its inbox now: its cache is safe to read
        result.cells = [
            (len(engine.cache.slots[i].tokens), engine.ctx.seq_pos_max(i)) for i in seq_ids
        ]
        scheduler = engine.scheduler
        result.is_idle = not scheduler.running and not scheduler.waiting
        result.is_idle &= all(slot.is_idle for slot in engine.cache.slots)
        result.num_in_flight_after = client.num_in_flight
        # the engine goes on: a new request runs to its end
        prompt = client.model.tokenize("Once upon a time")
        result.next_events = await _read(client.submit_group(prompt, [_greedy(client, 8)])[0])
        result.num_in_flight_at_end = client.num_in_flight
    return result


def test_a_failed_decode_fails_its_requests_and_frees_their_cells() -> None:
    result = asyncio.run(_failed_decode_scenario())
    assert result.num_failures == 1
    # both running requests were in the failed batch: each ends with the decode's error
    assert result.finishes == [(FinishReason.ERROR, "llama_decode returned -3")] * 2
    assert result.num_in_flight_after == 0 and result.is_idle
    # no cell is held for the failed sequences, in the bookkeeping nor in llama.cpp
    assert result.cells == [(0, -1), (0, -1)]
    last = result.next_events[-1]
    assert last.finish_reason is FinishReason.LENGTH and last.error is None
    assert sum(len(e.token_ids) for e in result.next_events) == 8
    assert result.num_in_flight_at_end == 0


KV_FULL_PROMPTS = ("Once upon a time, in a small village by the sea,", "The weather today is")
KV_FULL_TOKENS = 40


async def _kv_full_scenario() -> tuple[int, int, int, list[list[Event]], list[list[Event]]]:
    """Two greedy requests; a decode of theirs finds no room in the KV cache (llama.cpp says
    so before it computes anything): both are requeued, computed again, and go on. Then each
    runs alone, under another owner (nothing reused)."""
    async with _engine(parallel=2, ctx_size=1024, threads=1, batch_size=int(SMALL_BATCH)) as client:
        engine = client.engine
        params = _greedy(client, KV_FULL_TOKENS)
        prompts = [client.model.tokenize(text) for text in KV_FULL_PROMPTS]
        streams = [client.submit_group(prompt, [params])[0] for prompt in prompts]
        firsts = [await _read(stream, 3) for stream in streams]
        decode = engine.ctx.decode
        failures: list[int] = []

        def full_once(batch: Batch) -> None:
            if not failures:
                failures.append(batch.num_tokens)
                raise KVCacheFull("no KV cache slot for the batch")
            decode(batch)

        engine.ctx.decode = full_once  # type: ignore[method-assign]
        together = [first + await _read(s) for first, s in zip(firsts, streams, strict=True)]
        num_decoded = engine.runner.num_decoded
        # each request decodes its prompt and its tokens but the last, once: more is a redo
        num_once = sum(len(prompt) + KV_FULL_TOKENS - 1 for prompt in prompts)
        alone = [
            await _read(client.submit_group(prompt, [params], tenant="alone")[0])
            for prompt in prompts
        ]
        return len(failures), num_decoded, num_once, together, alone


def test_a_kv_full_decode_requeues_its_requests_and_they_resume() -> None:
    num_failures, num_decoded, num_once, together, alone = asyncio.run(_kv_full_scenario())
    assert num_failures == 1
    assert num_decoded > num_once  # the requeued sequences were computed again
    for events, reference in zip(together, alone, strict=True):
        assert events[-1].finish_reason is FinishReason.LENGTH and events[-1].error is None
        assert sum(len(e.token_ids) for e in events) == KV_FULL_TOKENS
        assert _tokens(events) == _tokens(reference)


# -- 3. a prompt longer than the batch, beside running decodes ----------------------------------

LONG_PROMPT = "The old harbour town kept its ledgers in a stone house by the quay. " * 36
LONG_BATCH = "63"  # the largest batch under flash attention's 64-row kernel switch
STREAM_TOKENS = 200


async def _read_sse(response: httpx.Response, generating: asyncio.Event) -> list[dict[str, Any]]:
    """Every chunk of an SSE stream ({"done": True} for [DONE]); `generating` is set at the
    third."""
    chunks: list[dict[str, Any]] = []
    async for line in response.aiter_lines():
        if line == "data: [DONE]":
            chunks.append({"done": True})
        elif line.startswith("data: "):
            chunks.append(json.loads(line.removeprefix("data: ")))
            if len(chunks) == 3:
                generating.set()
    return chunks


def test_a_prompt_longer_than_the_batch_runs_beside_decodes(
    tmp_path: Path, eog_bias: dict[str, int]
) -> None:
    """A ~610-token prompt is prefilled in chunks of up to 62 tokens, each sharing its decode
    with the running stream's next token. Both complete, and the long prompt's greedy answer
    is the one it gets alone (in chunks of 63, with nothing beside it), logprobs included.

    The batch is 63, not 64: at 64 the prompt alone would be decoded in 64-row chunks, beside
    the stream in 63-row ones, and flash attention's two kernels differ by design (up to ~0.5
    in the logits). Turning flash attention off instead does not help: llama.cpp then computes
    a split-cache batch holding two sequences otherwise than one sequence alone (~0.6). One
    thread: see the module's docstring."""
    flags = ("--batch-size", LONG_BATCH, "--parallel", "2", "--ctx-size", "4096", "--threads", "1")
    with _server(tmp_path, *flags) as server:
        long_body = _body(LONG_PROMPT, 5, eog_bias)

        async def scenario() -> tuple[list[dict[str, Any]], dict[str, Any], bool]:
            stream_body = {
                "model": MODEL,
                "prompt": "Once upon a time",
                "max_tokens": STREAM_TOKENS,
                "logit_bias": eog_bias,
                "stream": True,
                "stream_options": {"include_usage": True},
            }
            async with (
                _http(server) as http,
                http.stream("POST", "/v1/completions", json=stream_body) as response,
            ):
                assert response.status_code == 200
                generating = asyncio.Event()
                reader = asyncio.create_task(_read_sse(response, generating))
                await asyncio.wait_for(generating.wait(), DEADLINE)
                long_reply = await _complete(http, long_body)
                is_beside = not reader.done()  # the stream ran all along
                chunks = await asyncio.wait_for(reader, DEADLINE)
            return chunks, long_reply, is_beside

        chunks, long_reply, is_beside = asyncio.run(scenario())
        assert is_beside
        assert chunks[-1] == {"done": True}
        assert chunks[-2]["usage"]["completion_tokens"] == STREAM_TOKENS
        finishes = [c["choices"][0]["finish_reason"] for c in chunks[:-2]]
        assert finishes[-1] == "length" and not any(finishes[:-1])
        usage = long_reply["usage"]
        assert usage["prompt_tokens"] > 9 * int(LONG_BATCH)  # ten chunks at least (~610 tokens)
        assert usage["completion_tokens"] == 5
        assert long_reply["choices"][0]["finish_reason"] == "length"
        alone = _alone(server, long_body)
        assert alone["usage"]["prompt_tokens"] == usage["prompt_tokens"]
        assert alone["usage"]["prompt_tokens_details"]["cached_tokens"] == 0  # from nothing
        _assert_same_output(long_reply["choices"][0], alone["choices"][0], "the long prompt")


# -- 4. shutdown with requests in flight --------------------------------------------------------


@dataclass
class _Outcome:
    status: int | None = None
    chunks: int = 0  # data lines read
    ending: str = ""  # "done" ([DONE] read), "cut" (the body ended early) or the error's name
    body: str = ""  # a non-200 answer
    last: str = ""  # the last data line before [DONE]


async def _stream_until_it_ends(
    http: httpx.AsyncClient, body: dict[str, Any], generating: asyncio.Event | None = None
) -> _Outcome:
    outcome = _Outcome()
    try:
        async with http.stream("POST", "/v1/completions", json=body) as response:
            outcome.status = response.status_code
            if response.status_code != 200:
                outcome.body = (await response.aread()).decode()
                outcome.ending = "answered"
                return outcome
            async for line in response.aiter_lines():
                if line == "data: [DONE]":
                    outcome.ending = "done"
                    return outcome
                if line.startswith("data: "):
                    outcome.chunks += 1
                    outcome.last = line
                    if outcome.chunks == 3 and generating is not None:
                        generating.set()
            outcome.ending = "cut"
    except httpx.TransportError as exc:  # the connection closed under the read
        outcome.ending = type(exc).__name__
    return outcome


def _saved_tokens(sessions_dir: Path) -> list[list[int]]:
    """The tokens of each state saved to disk (a file: MAGIC, a 4-byte length, a JSON header,
    the state)."""
    saved = []
    for path in sessions_dir.glob("*/*.kv"):
        data = path.read_bytes()
        (length,) = struct.unpack_from("<I", data, len(MAGIC))
        start = len(MAGIC) + 4
        saved.append(json.loads(data[start : start + length])["tokens"])
    return saved


def test_shutdown_with_requests_in_flight(tmp_path: Path, eog_bias: dict[str, int]) -> None:
    """SIGTERM while two streams generate and a third request waits for a sequence: the
    server exits, every client read returns, nothing crashes, and the cached sequences are
    saved as sessions on the way out.

    uvicorn stops accepting; the requests in flight get `shutdown_grace` (5 s) to finish,
    then the engines end the rest: a stream with an error event (503's code
    server_shutting_down) and [DONE], a waiting request with a 503. The lifespan then closes
    the registry: each engine stops and saves its sequences, the session store writes them to
    disk. uvicorn then raises SIGTERM again with the default handler, so the exit status is
    -SIGTERM, as for any process that honours it."""
    sessions_dir = tmp_path / "sessions"
    flags = ("--parallel", "2", "--max-waiting", "1", "--log-level", "info")
    with _server(tmp_path, *flags, sessions={"dir": str(sessions_dir)}) as server:

        async def scenario() -> tuple[list[_Outcome], _Outcome, int | None, list[list[int]]]:
            body = {
                "model": MODEL,
                "prompt": "Once upon a time",
                "max_tokens": 1500,
                "logit_bias": eog_bias,
                "stream": True,
            }
            prompts = [f"Story {i}:" for i in range(2)]
            async with _http(server) as http:
                prompt_tokens = []
                for prompt in prompts:
                    reply = await http.post("/tokenize", json={"model": MODEL, "prompt": prompt})
                    prompt_tokens.append(reply.json()["tokens"])
                started = [asyncio.Event(), asyncio.Event()]
                running = [
                    asyncio.create_task(
                        _stream_until_it_ends(http, {**body, "prompt": prompt}, event)
                    )
                    for prompt, event in zip(prompts, started, strict=True)
                ]
                await asyncio.wait_for(asyncio.gather(*(e.wait() for e in started)), DEADLINE)
                # one more fits in the queue (--max-waiting 1), not two: whichever of these
                # arrives second is refused at once, the other is the one waiting
                candidates = {
                    asyncio.create_task(_stream_until_it_ends(http, body)) for _ in range(2)
                }
                refused, [waiting] = await asyncio.wait(
                    candidates, timeout=DEADLINE, return_when=asyncio.FIRST_COMPLETED
                )
                [refusal] = [task.result() for task in refused]
                assert refusal.status == 503 and "queue_full" in refusal.body, refusal
                server.process.send_signal(signal.SIGTERM)
                try:  # a deadline, not a timing claim: a hung shutdown fails here
                    code = await asyncio.to_thread(server.process.wait, 60)
                except subprocess.TimeoutExpired:
                    code = None
                # every read returns: the process is gone, so its sockets are closed
                outcomes = await asyncio.wait_for(asyncio.gather(*running, waiting), 30)
            return outcomes[:2], outcomes[2], code, prompt_tokens

        streams, queued, code, prompt_tokens = asyncio.run(scenario())
    log = (tmp_path / "stderr.log").read_text()
    assert code is not None, "the server did not exit within 60 s of SIGTERM"
    assert code == -signal.SIGTERM, (code, log)
    assert "Application shutdown complete." in log, log  # the lifespan's close ran to its end
    for outcome in streams:  # each had streamed, then was told why it ends, then [DONE]
        assert outcome.status == 200 and outcome.chunks >= 3
        assert outcome.ending == "done", outcome
        assert '"code": "server_shutting_down"' in outcome.last, outcome
    assert queued.status == 503 and "server_shutting_down" in queued.body, queued
    assert "Traceback" not in log and "timeout graceful shutdown exceeded" not in log, log
    for crash in ("Segmentation fault", "Fatal Python error", "core dumped"):
        assert crash not in log
    for failure in ("saving sequence", "writing session state failed", "did not stop within"):
        assert failure not in log, log
    # both generating sequences were saved at shutdown, and written to disk: their prompt
    # and what they had generated (the waiting request may have started once the others were
    # cancelled, and been saved too, or displaced one of them after saving it)
    saved = _saved_tokens(sessions_dir)
    for prompt in prompt_tokens:
        assert any(t[: len(prompt)] == prompt and len(t) >= len(prompt) + 2 for t in saved), (
            prompt,
            [t[:8] for t in saved],
        )


# -- 5. two models generating at once ---------------------------------------------------------

TWO_MODELS = (
    f"batch_size: {SMALL_BATCH}\n"
    "parallel: 3\n"
    "ctx_size: 1536\n"
    "models:\n"  # a thread each: exact outputs (see above), two engines on two cores
    "  - {name: model-a, threads: 1}\n"
    "  - {name: model-b, threads: 1}\n"
)
PROMPTS_BY_MODEL = {
    "model-a": ["Once upon a time", "The weather today", "My favourite fruit is"],
    "model-b": ["In the beginning", "Dear diary,", "The recipe calls for"],
}
MULTI_TOKENS = 40


async def _stream_text(
    http: httpx.AsyncClient, body: dict[str, Any], order: list[str]
) -> tuple[str, str, int]:
    """A streamed completion: (its text, its finish_reason, its completion tokens); `order`
    gets "first" when its first text arrives, "last" when its end does."""
    body = {**body, "stream": True, "stream_options": {"include_usage": True}}
    del body["logprobs"]
    text, finish, num_tokens = "", "", -1
    async with http.stream("POST", "/v1/completions", json=body) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line.removeprefix("data: "))
            if chunk.get("usage"):
                num_tokens = chunk["usage"]["completion_tokens"]
            for choice in chunk["choices"]:
                if not text and choice["text"]:
                    order.append("first")
                text += choice["text"]
                if choice["finish_reason"]:
                    finish = choice["finish_reason"]
                    order.append("last")
    return text, finish, num_tokens


def test_two_models_generate_at_once_without_cross_talk(
    tmp_path: Path, eog_bias: dict[str, int]
) -> None:
    """Three streams on each of two models (one engine each, on the same GGUF): every stream
    gets all its tokens, and each is what its model answers to its prompt alone. The six
    prompts differ, so an event or a cache cell crossing from one engine to the other shows."""
    with _server(tmp_path, config=TWO_MODELS) as server:
        requests = [
            (model, _body(prompt, MULTI_TOKENS, eog_bias, model=model))
            for model, prompts in PROMPTS_BY_MODEL.items()
            for prompt in prompts
        ]

        order: list[str] = []

        async def together() -> list[tuple[str, str, int]]:
            async with _http(server) as http:
                streams = (_stream_text(http, body, order) for _, body in requests)
                return await asyncio.gather(*streams)

        results = asyncio.run(together())
        # all six were generating at once: each had its first text before any had its end
        assert order == ["first"] * 6 + ["last"] * 6, order
        _wait_idle(server)
        for (model, body), (text, finish, num_tokens) in zip(requests, results, strict=True):
            assert (finish, num_tokens) == ("length", MULTI_TOKENS), (model, body["prompt"])
            alone = _alone(server, body)
            assert alone["model"] == model
            assert text == alone["choices"][0]["text"], (model, body["prompt"])
