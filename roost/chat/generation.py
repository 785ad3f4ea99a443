"""Prompts into a model's engine, events back: n choices per prompt, all queued or none."""

from __future__ import annotations

from dataclasses import dataclass, replace

from roost.engine.client import RequestStream
from roost.engine.params import SamplingParams
from roost.engine.registry import ServedModel
from roost.engine.sequence import Event, FinishReason
from roost.engine.sessions import SessionRef
from roost.errors import (
    EngineFailure,
    InvalidRequest,
    QueueFull,
    QueueTimeout,
    SessionBusy,
    ShuttingDown,
)


def choice_params(params: SamplingParams, n: int) -> list[SamplingParams]:
    """n choices of one prompt; with a seed, choice j draws with seed + j (distinct, repeatable)."""
    if params.seed is None:
        return [params] * n
    return [replace(params, seed=params.seed + j) for j in range(n)]


async def submit_all(
    served: ServedModel,
    prompts: list[list[int]],
    params: SamplingParams,
    n: int = 1,
    session: SessionRef | None = None,
) -> list[RequestStream]:
    """Queue n choices per prompt (stream i * n + j); all or none (a full queue cancels all).
    A named session applies to a single prompt (of several, none resumes it)."""
    session = session or SessionRef()
    key = session.key if len(prompts) == 1 else None
    capacity = served.client.config.max_in_flight
    if len(prompts) * n > capacity:  # could never be queued: retrying a 503 would not help
        raise InvalidRequest(
            f"{len(prompts)} prompt(s) x {n} choices need {len(prompts) * n} sequences; this "
            f"model holds at most {capacity} at once (parallel + max_waiting)",
            param="n",
        )
    client = served.client
    if len(prompts) == 1:
        await client.prepare(key, session.tenant, prompts[0])
    streams: list[RequestStream] = []
    admission = client.admission()  # the request starts when any of its sequences does
    try:
        for prompt in prompts:
            choices = choice_params(params, n)
            streams += client.submit_group(
                prompt, choices, key, session.tenant, session.param, admission
            )
    except (QueueFull, SessionBusy):
        for stream in streams:
            stream.cancel()
        raise
    return streams


async def started(streams: list[RequestStream]) -> None:
    """Wait until the request is admitted (a stream holds its HTTP status until then); one
    that ended before it started raises its error (QueueTimeout: max_queue_wait passed)."""
    first = await streams[0].admission.started
    if first is not None:
        check_event(first)


def check_event(event: Event) -> None:
    """An event that reports a failed generation becomes a typed error."""
    if event.finish_reason is FinishReason.ERROR:
        raise EngineFailure(f"generation failed: {event.error or 'engine error'}")
    if event.finish_reason is FinishReason.QUEUE_TIMEOUT:
        raise QueueTimeout()
    if event.finish_reason is FinishReason.SHUTDOWN:
        raise ShuttingDown()


@dataclass
class TokenCounts:
    """Tokens a request used, summed over its choices and rounds (OpenAI's `usage`)."""

    prompt: int = 0
    completion: int = 0
    cached: int = 0  # prompt tokens served from the prefix cache

    def add(self, event: Event) -> None:
        """Count a finished sequence (its final event)."""
        self.prompt += event.num_prompt_tokens
        self.completion += event.num_output_tokens
        self.cached += event.num_cached_tokens
