"""POST /v1/chat/completions."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from fastapi import Request
from fastapi.responses import Response

from roost.api.protocol import (
    ChatChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChunkChoice,
    Delta,
    ResponseMessage,
    Usage,
    new_id,
)
from roost.api.registry import ModelRegistry
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


async def create_chat_completion(
    body: ChatCompletionRequest, registry: ModelRegistry, request: Request
) -> Response | ChatCompletion:
    served = registry.get(body.model)
    body.check_supported()
    prompt = served.chat_tokens(body.template_messages())
    max_tokens = served.max_new_tokens(len(prompt), body.requested_max_tokens(), "messages")
    params = body.to_sampling_params(served.client.model.num_vocab, max_tokens)
    streams = submit_all(served, [prompt], params)
    response_id, created = new_id("chatcmpl"), int(time.time())
    if body.stream:
        return stream_response(streams, lambda: _chunks(body, streams, response_id, created))
    try:
        result = await until_disconnect(request, collect(streams))
    finally:
        for stream in streams:
            stream.cancel()
    choices = [
        ChatChoice(index=i, message=ResponseMessage(content=text), finish_reason=reason)
        for i, (text, reason) in enumerate(zip(result.texts, result.finish_reasons, strict=True))
    ]
    return ChatCompletion(
        id=response_id, created=created, model=body.model, choices=choices, usage=result.usage
    )


async def _chunks(
    body: ChatCompletionRequest, streams: list[RequestStream], response_id: str, created: int
) -> AsyncIterator[str]:
    def chunk(choices: list[ChunkChoice], usage: Usage | None = None) -> str:
        return sse(
            ChatCompletionChunk(
                id=response_id, created=created, model=body.model, choices=choices, usage=usage
            )
        )

    for index in range(len(streams)):
        yield chunk([ChunkChoice(index=index, delta=Delta(role="assistant", content=""))])
    usage = Usage()
    async for index, event in merge(streams):
        check_event(event)
        if event.text:
            yield chunk([ChunkChoice(index=index, delta=Delta(content=event.text))])
        if event.finish_reason is not None:
            add_usage(usage, event)
            reason = event.finish_reason.value
            yield chunk([ChunkChoice(index=index, delta=Delta(), finish_reason=reason)])
    if body.stream_options and body.stream_options.include_usage:
        yield chunk([], usage)
    yield DONE
