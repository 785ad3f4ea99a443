"""The engine driven directly (no HTTP): request lifecycle guarantees."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest

from roost.config import load_settings
from roost.engine.client import EngineClient, RequestStream
from roost.engine.kv_cache import KVCache
from roost.engine.params import SamplingParams
from roost.engine.runner import Runner
from roost.engine.scheduler import Chunk, Plan
from roost.engine.sequence import Sequence
from roost.llama.batch import Batch
from roost.llama.context import ContextParams, LlamaContext, StateMismatch
from roost.llama.model import LlamaModel
from roost.llama.sampler import Sampler, SamplerSpec


@contextlib.asynccontextmanager
async def _engine(**settings: Any) -> AsyncIterator[EngineClient]:
    """An engine on the embedded model (2 threads); closed, with its model, afterwards."""
    config = load_settings(None, threads=2, **settings).resolved_models()[0]
    model = await asyncio.to_thread(LlamaModel, config.path)
    client = await asyncio.to_thread(EngineClient, config, model, asyncio.get_running_loop())
    try:
        yield client
    finally:
        await asyncio.to_thread(client.close)
        model.close()


async def _scenario() -> tuple[int, int, list[int]]:
    async with _engine(parallel=1, ctx_size=512) as client:
        params = SamplingParams(max_tokens=300, temperature=0)
        prompt = client.model.tokenize("Once upon a time")
        _submit(client, prompt, params)  # dropped unread, like a response body never started
        gc.collect()
        await asyncio.sleep(0)  # the release is counted on the loop
        after_drop = client.num_in_flight
        # the only sequence must be free again: a new request gets it and runs to its end
        short = _to_the_end(client.model, 5)
        events = [event async for event in _submit(client, prompt, short)]
        assert events[-1].error is None
        return after_drop, client.num_in_flight, [len(e.token_ids) for e in events]


def test_dropped_stream_frees_its_request() -> None:
    after_drop, after_next, token_counts = asyncio.run(_scenario())
    assert after_drop == 0 and after_next == 0
    assert sum(token_counts) == 5


async def _finalized_on_another_thread() -> tuple[int, int]:
    async with _engine(parallel=1, ctx_size=512) as client:
        params = _to_the_end(client.model, 3)
        stream = _submit(client, client.model.tokenize("Hello"), params)

        seen: list[int] = []

        def collect_elsewhere() -> None:  # what a garbage collection on another thread does
            stream._release()
            seen.append(client.num_in_flight)

        # joined from the loop's own thread, so the loop runs nothing meanwhile
        worker = threading.Thread(target=collect_elsewhere)
        worker.start()
        worker.join()
        seen_there = seen[0]
        await asyncio.sleep(0)
        return seen_there, client.num_in_flight


def test_a_stream_finalized_on_another_thread_is_counted_on_the_loop() -> None:
    seen_there, after = asyncio.run(_finalized_on_another_thread())
    assert seen_there == 1  # the worker thread changed nothing
    assert after == 0  # the loop did


def _to_the_end(model: LlamaModel, max_tokens: int) -> SamplingParams:
    """Greedy with the end tokens banned: a request runs to its max_tokens on any machine."""
    bias = dict.fromkeys(model.eog_ids, -100.0)
    return SamplingParams(max_tokens=max_tokens, temperature=0, logit_bias=bias)


def _submit(client: EngineClient, prompt: list[int], params: SamplingParams) -> RequestStream:
    return client.submit_group(prompt, [params])[0]


class _FailingGrammar:
    """A grammar whose sampler cannot be built (llama.cpp's parse happens before a request
    reaches the engine): the engine must fail that one request and go on."""

    def sampler(self) -> Any:
        raise RuntimeError("no grammar sampler")


async def _failure_scenario() -> tuple[list[str | None], int]:
    async with _engine(parallel=1, ctx_size=512) as client:
        prompt = client.model.tokenize("Hello")
        broken = SamplingParams(max_tokens=5, grammar=_FailingGrammar())
        failed = [event async for event in _submit(client, prompt, broken)]
        fine = _to_the_end(client.model, 4)
        served = [event async for event in _submit(client, prompt, fine)]
        return [e.error for e in failed], sum(len(e.token_ids) for e in served)


def test_a_failing_request_does_not_stop_the_engine() -> None:
    # the request fails cleanly, the next one is served
    errors, num_served = asyncio.run(_failure_scenario())
    assert len(errors) == 1 and errors[0]
    assert num_served == 4


async def _group_scenario(parallel: int, n: int, kv_unified: bool = False) -> tuple[int, list[str]]:
    async with _engine(parallel=parallel, ctx_size=2048, kv_unified=kv_unified) as client:
        prompt = client.model.tokenize("Tell me everything about the ocean. " * 12)
        params = _to_the_end(client.model, 4)
        before = client.engine.runner.num_decoded

        async def text(stream: object) -> str:
            return "".join([event.text async for event in stream])  # type: ignore[attr-defined]

        texts = await asyncio.gather(*map(text, client.submit_group(prompt, [params] * n)))
        return client.engine.runner.num_decoded - before - n * 4, list(texts)


@pytest.mark.parametrize("kv_unified", [False, True])
def test_a_group_evaluates_its_prompt_once(kv_unified: bool) -> None:
    # split cache: whole-stream copies; unified: the followers share the leader's cells
    num_prompt_decoded, texts = asyncio.run(_group_scenario(4, 4, kv_unified))
    num_prompt = 12 * 8  # well over 90 tokens: four evaluations would show
    assert num_prompt_decoded < num_prompt * 1.5
    assert len(set(texts)) == 1 and texts[0]


def test_a_group_larger_than_the_slots_still_completes() -> None:
    # followers that find no free slot run alone later (reusing the cached prompt prefix)
    _, texts = asyncio.run(_group_scenario(parallel=1, n=3))
    assert len(texts) == 3 and all(texts)


async def _failed_leader_scenario() -> tuple[str | None, list[int]]:
    async with _engine(parallel=2, ctx_size=1024) as client:
        prompt = client.model.tokenize("Hello there")
        broken = SamplingParams(max_tokens=3, grammar=_FailingGrammar())
        fine = _to_the_end(client.model, 3)
        leader, *followers = client.submit_group(prompt, [broken, fine, fine])
        failed = [event async for event in leader]
        served = [[e async for e in follower] for follower in followers]
        return failed[-1].error, [sum(len(e.token_ids) for e in events) for events in served]


def test_followers_of_a_failed_leader_compute_their_prompt() -> None:
    error, num_tokens = asyncio.run(_failed_leader_scenario())
    assert error and num_tokens == [3, 3]


def test_runner_fills_the_batch_in_sequence_id_order(local_model: LlamaModel) -> None:
    # llama.cpp runs a split-cache batch out of stream order 1.5-2x slower: the runner sorts
    ctx = LlamaContext(local_model, ContextParams(1024, 512, 4, 2))
    cache = KVCache(4, compact=True)
    runner = Runner(ctx, cache, 512)
    decoded: list[list[int]] = []
    decode = ctx.decode

    def spy(batch: Batch) -> None:
        decoded.append([batch.raw.seq_id[i][0] for i in range(batch.num_tokens)])
        decode(batch)

    ctx.decode = spy  # type: ignore[method-assign]
    try:
        plan = Plan()
        seqs = []
        for seq_id, text in zip([3, 0, 2, 1], ["a cat", "the sea", "red", "hi there"], strict=True):
            seq = Sequence(
                str(seq_id), local_model.tokenize(text), SamplingParams(), lambda _: None, 512
            )
            seq.slot = cache.slots[seq_id]
            seq.sampler = Sampler(local_model, SamplerSpec(temperature=0))
            plan.chunks.append(Chunk(seq, 0, len(seq.tokens)))
            seqs.append(seq)
        samples = runner.execute(plan)
        assert decoded == [sorted(decoded[0])]
        assert sorted(sample.seq.request_id for sample in samples) == ["0", "1", "2", "3"]
        for seq in seqs:  # each sequence's KV holds exactly its own prompt
            assert seq.slot is not None and seq.sampler is not None
            assert ctx.seq_pos_max(seq.slot.seq_id) == len(seq.tokens) - 1
            assert seq.slot.tokens == seq.tokens  # and the cache's bookkeeping says so
            seq.sampler.close()
    finally:
        runner.close()
        ctx.close()


async def _copied_prefix_scenario(prime: bool) -> tuple[list[int], int, list[int]]:
    """Two requests finish on sequence ids 0 and 1 (if `prime`); a third shares the second's
    prompt."""
    greedy = SamplingParams(max_tokens=8, temperature=0)
    async with _engine(parallel=2, ctx_size=2048) as client:

        async def run(prompt: list[int]) -> tuple[list[int], int]:
            events = [event async for event in _submit(client, prompt, greedy)]
            return [t for e in events for t in e.token_ids], events[-1].num_cached_tokens

        first = client.model.tokenize("The history of the lighthouse at the end of the pier. " * 3)
        second = client.model.tokenize("A recipe for bread, with flour, water and salt. " * 3)
        if prime:
            await asyncio.gather(run(first), run(second))
        slots = {tuple(slot.tokens[:5]): slot.seq_id for slot in client.engine.cache.slots}
        tokens, cached = await run(second + client.model.tokenize(" And then"))
        return tokens, cached, [slots.get(tuple(first[:5]), -1), slots.get(tuple(second[:5]), -1)]


def test_a_prefix_cached_on_a_higher_id_is_copied_to_the_lowest_free() -> None:
    # split cache: running sequences stay on the lowest ids; the cached prefix moves with them
    tokens, cached, held_by = asyncio.run(_copied_prefix_scenario(prime=True))
    assert held_by == [0, 1]  # the reused prefix lives on sequence 1, the request runs on 0
    assert cached > 20
    fresh, fresh_cached, _ = asyncio.run(_copied_prefix_scenario(prime=False))
    assert fresh_cached == 0
    assert tokens == fresh  # greedy output from the copied KV equals a full computation


async def _schedule_fails_once_scenario() -> tuple[str | None, int, int]:
    async with _engine(parallel=1, ctx_size=512) as client:
        scheduler = client.engine.scheduler
        real_schedule = scheduler.schedule
        calls = []

        def fail_once() -> Plan:
            calls.append(1)
            if len(calls) == 1:
                raise RuntimeError("scheduler bug")
            return real_schedule()

        scheduler.schedule = fail_once  # type: ignore[method-assign]
        prompt = client.model.tokenize("Hello there")
        params = _to_the_end(client.model, 3)
        failed = [event async for event in _submit(client, prompt, params)]
        # the engine went back to waiting (not spinning on the error), and serves the next one
        num_calls_after_failure = len(calls)
        served = [event async for event in _submit(client, prompt, params)]
        return failed[-1].error, num_calls_after_failure, sum(len(e.token_ids) for e in served)


def test_a_failing_scheduler_fails_its_requests_instead_of_spinning() -> None:
    error, num_calls, num_tokens = asyncio.run(_schedule_fails_once_scenario())
    assert error == "scheduler bug"
    assert num_calls == 1  # before the fix the engine thread retried the same schedule forever
    assert num_tokens == 3


async def _stuck_close_scenario() -> tuple[bool, bool, bool]:
    async with _engine(parallel=1, ctx_size=512) as client:
        engine = client.engine
        execute = engine.runner.execute
        started = asyncio.Event()
        loop = asyncio.get_running_loop()

        def slow_execute(plan: Plan) -> list[Any]:
            loop.call_soon_threadsafe(started.set)
            time.sleep(1.5)  # a long decode, still running when close() gives up waiting
            return execute(plan)

        engine.runner.execute = slow_execute  # type: ignore[method-assign]
        params = _to_the_end(client.model, 1)
        stream = _submit(client, client.model.tokenize("Hello"), params)
        await started.wait()
        stopped = await asyncio.to_thread(engine.close, 0.2)
        context_kept = engine.ctx.ptr is not None
        await asyncio.to_thread(engine._thread.join)  # the decode ends, then STOP is read
        del stream
        return stopped, context_kept, engine.close()


def test_close_keeps_the_context_of_an_engine_still_decoding() -> None:
    stopped, context_kept, stopped_later = asyncio.run(_stuck_close_scenario())
    assert not stopped and context_kept  # freeing it would crash the running decode
    assert stopped_later


def test_a_saved_sequence_state_restores_into_another_sequence(local_model: LlamaModel) -> None:
    ctx = LlamaContext(local_model, ContextParams(1024, 512, 2, 2))
    batch = Batch(512)

    def next_token(seq_id: int, token: int, pos: int) -> int:
        batch.clear()
        batch.add(token, pos, seq_id, True)
        ctx.decode(batch)
        return int(np.argmax(ctx.logits(0)))

    try:
        prompt = local_model.tokenize("The lighthouse keeper climbed the stairs")
        batch.clear()
        for pos, token in enumerate(prompt[:-1]):
            batch.add(token, pos, 0, False)
        ctx.decode(batch)
        state = np.empty(ctx.seq_state_size(0), np.uint8)
        assert ctx.seq_state_get(0, state) == state.size
        ctx.seq_state_set(1, state, len(prompt) - 1)
        assert ctx.seq_pos_max(1) == len(prompt) - 2
        # the restored sequence continues exactly as the original does
        last = prompt[-1]
        assert next_token(1, last, len(prompt) - 1) == next_token(0, last, len(prompt) - 1)
        # state that does not hold what it should is refused, and leaves the sequence empty
        ctx.seq_remove(1)
        with pytest.raises(StateMismatch):
            ctx.seq_state_set(1, state, len(prompt) + 3)
        assert ctx.seq_pos_max(1) == -1
    finally:
        batch.close()
        ctx.close()
