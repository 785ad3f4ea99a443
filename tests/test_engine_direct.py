"""The engine driven directly (no HTTP): request lifecycle guarantees."""

from __future__ import annotations

import asyncio
import gc

from roost.config import load_settings
from roost.engine.client import EngineClient
from roost.engine.params import SamplingParams
from roost.llama.model import LlamaModel
from roost.llama.sampler import SamplerSpec


async def _scenario() -> tuple[int, int, list[int]]:
    config = load_settings(None, parallel=1, ctx_size=512, threads=2).resolved_models()[0]
    model = await asyncio.to_thread(LlamaModel, config.path)
    client = await asyncio.to_thread(EngineClient, config, model, asyncio.get_running_loop())
    try:
        params = SamplingParams(max_tokens=300, sampler=SamplerSpec(temperature=0))
        prompt = client.model.tokenize("Once upon a time")
        client.submit(prompt, params)  # dropped unread, like a response body never started
        gc.collect()
        after_drop = client.num_in_flight
        # the only sequence must be free again: a new request gets it and completes
        short = SamplingParams(max_tokens=5, sampler=SamplerSpec(temperature=0))
        events = [event async for event in client.submit(prompt, short)]
        return after_drop, client.num_in_flight, [len(e.token_ids) for e in events]
    finally:
        await asyncio.to_thread(client.close)
        model.close()


def test_dropped_stream_frees_its_request() -> None:
    after_drop, after_next, token_counts = asyncio.run(_scenario())
    assert after_drop == 0 and after_next == 0
    assert sum(token_counts) <= 5


async def _failure_scenario() -> tuple[list[str | None], int]:
    config = load_settings(None, parallel=1, ctx_size=512, threads=2).resolved_models()[0]
    model = await asyncio.to_thread(LlamaModel, config.path)
    client = await asyncio.to_thread(EngineClient, config, model, asyncio.get_running_loop())
    try:
        prompt = client.model.tokenize("Hello")
        broken = SamplingParams(max_tokens=5, sampler=SamplerSpec(grammar="root ::= ( unclosed"))
        failed = [event async for event in client.submit(prompt, broken)]
        fine = SamplingParams(max_tokens=4, sampler=SamplerSpec(temperature=0))
        served = [event async for event in client.submit(prompt, fine)]
        return [e.error for e in failed], sum(len(e.token_ids) for e in served)
    finally:
        await asyncio.to_thread(client.close)
        model.close()


def test_a_failing_request_does_not_stop_the_engine() -> None:
    # llama.cpp really rejects this grammar: the request fails cleanly, the next one is served
    errors, num_served = asyncio.run(_failure_scenario())
    assert len(errors) == 1 and errors[0]
    assert num_served == 4
