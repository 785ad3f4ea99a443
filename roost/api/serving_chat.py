"""POST /v1/chat/completions: the request to chat/, its answers to a response or SSE chunks."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from fastapi import Request
from fastapi.responses import Response

from roost.api.logprobs import chat_logprobs
from roost.api.protocol.base import Usage, new_id
from roost.api.protocol.chat import (
    ChatChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChoiceLogprobs,
    ChunkChoice,
    Delta,
    DeltaFunction,
    DeltaToolCall,
    FunctionCall,
    ResponseMessage,
    ServerToolCall,
    ToolCallOut,
)
from roost.api.sessions import session_of
from roost.api.streaming import DONE, sse, stream_response, until_disconnect
from roost.chat.tools import ToolCall
from roost.chat.turn import Piece, Turn, collect_all, start_turn
from roost.engine.backend import Vocabulary
from roost.engine.registry import ModelRegistry
from roost.streams import merge


async def create_chat_completion(
    body: ChatCompletionRequest, registry: ModelRegistry, request: Request
) -> Response | ChatCompletion:
    served = registry.get(body.model)
    served.check_generates()
    settings = request.app.state.settings
    turn = await start_turn(
        served,
        body.to_chat_request(
            served.vocab.num_vocab, served.defaults, session_of(request, body.user)
        ),
        request.app.state.server_tools,
        settings.tool_timeout,
        settings.tool_max_rounds,
    )
    response_id, created = new_id("chatcmpl"), int(time.time())
    if body.stream:
        frames = _chunks(body, turn, response_id, created)
        return await stream_response(request, turn.first_streams, frames)
    try:
        collected = await until_disconnect(request, collect_all(turn.answers))
    finally:
        await turn.aclose()
    vocab = served.vocab if body.logprobs else None
    return ChatCompletion(
        id=response_id,
        created=created,
        model=body.model,
        choices=[_choice(i, answer, vocab) for i, answer in enumerate(collected)],
        usage=Usage.of(turn.usage),
        server_tool_calls=[
            ServerToolCall(
                id=e.call.id, name=e.call.name, arguments=e.call.arguments, result=e.result
            )
            for e in turn.executed
        ]
        or None,
    )


def _choice(index: int, answer: Piece, vocab: Vocabulary | None) -> ChatChoice:
    """A whole answer as a choice; `vocab` is given when logprobs were asked for."""
    calls = answer.tool_calls
    message = ResponseMessage(  # beside calls, the newline a model writes before them is no answer
        content=None if calls and not answer.text.strip() else answer.text,
        tool_calls=[_call_out(c) for c in calls] or None,
    )
    logprobs = None
    if vocab is not None:
        logprobs = ChoiceLogprobs(content=chat_logprobs(vocab, answer.logprobs))
    return ChatChoice(
        index=index, message=message, finish_reason=answer.finish_reason, logprobs=logprobs
    )


def _call_out(call: ToolCall) -> ToolCallOut:
    return ToolCallOut(id=call.id, function=FunctionCall(name=call.name, arguments=call.arguments))


@dataclass(frozen=True)
class ContentChunks:
    """The hot path of streaming: a content delta framed without building pydantic models
    (it is most of the chunks); the JSON equals ChatCompletionChunk's, a test checks."""

    head: str

    @classmethod
    def start(cls, response_id: str, created: int, model: str) -> ContentChunks:
        fixed = {"id": response_id, "object": "chat.completion.chunk", "created": created}
        head = json.dumps({**fixed, "model": model}, ensure_ascii=False, separators=(",", ":"))
        return cls(head[:-1])

    def frame(self, index: int, text: str) -> str:
        content = json.dumps(text, ensure_ascii=False)
        return (
            f'data: {self.head},"choices":[{{"index":{index},"delta":{{"content":{content}}},'
            '"finish_reason":null,"logprobs":null}],"usage":null,"system_fingerprint":null}\n\n'
        )


async def _chunks(
    body: ChatCompletionRequest, turn: Turn, response_id: str, created: int
) -> AsyncIterator[str]:
    vocab, answers = turn.served.vocab, turn.answers

    def chunk(
        index: int | None, delta: Delta, finish: str | None = None, usage: Usage | None = None
    ) -> str:
        choices = []
        if index is not None:
            choices = [ChunkChoice(index=index, delta=delta, finish_reason=finish)]
        return sse(
            ChatCompletionChunk(
                id=response_id, created=created, model=body.model, choices=choices, usage=usage
            )
        )

    fast = ContentChunks.start(response_id, created, body.model)
    for index in range(len(answers)):
        yield chunk(index, Delta(role="assistant", content=""))
    try:
        async for index, piece in merge(answers):
            if piece.text and not body.logprobs:
                yield fast.frame(index, piece.text)
            elif piece.text or piece.logprobs:
                frame = ChunkChoice(index=index, delta=Delta(content=piece.text))
                if body.logprobs:
                    frame.logprobs = ChoiceLogprobs(content=chat_logprobs(vocab, piece.logprobs))
                yield sse(
                    ChatCompletionChunk(
                        id=response_id, created=created, model=body.model, choices=[frame]
                    )
                )
            for call_no, call in enumerate(piece.tool_calls):
                yield chunk(index, Delta(tool_calls=[_first_fragment(call_no, call)]))
                fragment = DeltaToolCall(
                    index=call_no, function=DeltaFunction(arguments=call.arguments)
                )
                yield chunk(index, Delta(tool_calls=[fragment]))
            if piece.finish_reason is not None:
                yield chunk(index, Delta(), piece.finish_reason)
    finally:
        await turn.aclose()
    if body.stream_options and body.stream_options.include_usage:
        yield chunk(None, Delta(), usage=Usage.of(turn.usage))
    yield DONE


def _first_fragment(index: int, call: ToolCall) -> DeltaToolCall:
    return DeltaToolCall(
        index=index,
        id=call.id,
        type="function",
        function=DeltaFunction(name=call.name, arguments=""),
    )
