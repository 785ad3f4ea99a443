"""POST /v1/completions."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from fastapi import Request

from roost.api.protocol import Completion, CompletionChoice, CompletionRequest, Usage, new_id
from roost.api.registry import ModelRegistry, ServedModel
from roost.api.serving import (
    DONE,
    add_usage,
    check_event,
    collect,
    merge,
    sse,
    stream_response,
    submit_all,
    until_disconnect,
)
from roost.engine.client import RequestStream


def prompt_token_lists(body: CompletionRequest, served: ServedModel) -> list[list[int]]:
    """One token list per choice: a string, a list of strings, token ids, or lists of ids."""
    prompt = body.prompt
    if isinstance(prompt, str):
        lists = [served.text_tokens(prompt)]
    elif prompt and all(isinstance(p, str) for p in prompt):
        lists = [served.text_tokens(p) for p in prompt]  # type: ignore[arg-type]
    elif prompt and all(isinstance(p, int) for p in prompt):
        lists = [list(prompt)]  # type: ignore[arg-type]
    else:
        lists = [list(p) for p in prompt]  # type: ignore[arg-type, union-attr]
    if not lists:
        lists = [[]]
    for i, tokens in enumerate(lists):
        served.check_tokens(tokens, "prompt" if len(lists) == 1 else f"prompt[{i}]")
    return lists


async def create_completion(
    body: CompletionRequest, registry: ModelRegistry, request: Request
) -> object:
    served = registry.get(body.model)
    body.check_supported()
    prompts = prompt_token_lists(body, served)
    longest = max(len(p) for p in prompts)
    max_tokens = served.max_new_tokens(longest, body.requested_max_tokens(), "prompt")
    grammar = served.output_grammar(body.output_constraint())
    params = body.to_sampling_params(served.client.model.num_vocab, max_tokens, grammar)
    streams = submit_all(served, prompts, params)
    response_id, created = new_id("cmpl"), int(time.time())
    if body.stream:
        return stream_response(streams, lambda: _chunks(body, streams, response_id, created))
    try:
        result = await until_disconnect(request, collect(streams))
    finally:
        for stream in streams:
            stream.cancel()
    choices = [
        CompletionChoice(index=i, text=text, finish_reason=reason)
        for i, (text, reason) in enumerate(zip(result.texts, result.finish_reasons, strict=True))
    ]
    return Completion(
        id=response_id, created=created, model=body.model, choices=choices, usage=result.usage
    )


async def _chunks(
    body: CompletionRequest, streams: list[RequestStream], response_id: str, created: int
) -> AsyncIterator[str]:
    def chunk(choices: list[CompletionChoice], usage: Usage | None = None) -> str:
        return sse(
            Completion(
                id=response_id, created=created, model=body.model, choices=choices, usage=usage
            )
        )

    usage = Usage()
    async for index, event in merge(streams):
        check_event(event)
        reason = event.finish_reason.value if event.finish_reason else None
        if reason is not None:
            add_usage(usage, event)
        if event.text or reason is not None:
            yield chunk([CompletionChoice(index=index, text=event.text, finish_reason=reason)])
    if body.stream_options and body.stream_options.include_usage:
        yield chunk([], usage)
    yield DONE
