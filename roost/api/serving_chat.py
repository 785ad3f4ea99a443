"""POST /v1/chat/completions: template → engine → (tool calls, server tool rounds) → response."""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from fastapi.responses import Response

from roost.api.errors import InvalidRequest
from roost.api.logprobs import chat_logprobs
from roost.api.protocol import (
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
    Usage,
    new_id,
)
from roost.api.registry import ModelRegistry, ServedModel
from roost.api.serving import (
    DONE,
    add_usage,
    cancel_and_wait,
    check_event,
    merge,
    sse,
    stream_response,
    submit_all,
    until_disconnect,
)
from roost.chat.constraints import ToolSpec, forced_call_grammar
from roost.chat.server_tools import ServerTool, run_server_tool
from roost.chat.tool_prompt import fallback_messages, native_messages
from roost.chat.tools import (
    PARSERS,
    ParsedOutput,
    ToolCall,
    ToolCallParser,
    ToolCallStream,
    find_marker,
    partial_marker_len,
)
from roost.chat.tools import parser_for_template as _parser_for_template
from roost.engine.client import RequestStream
from roost.engine.logprobs import TokenLogprob
from roost.llama.grammar import Grammar, GrammarError
from roost.llama.model import LlamaModel


@dataclass(frozen=True)
class ToolPlan:
    """How this request offers tools to the model and reads calls back."""

    specs: list[ToolSpec]
    parser: ToolCallParser
    is_native: bool  # the model's template renders `tools` itself
    forced_grammar: Grammar | None  # tool_choice required / named: first turn only
    allow_many: bool
    server_tools: dict[str, ServerTool]  # those offered: a client tool of the same name wins


@dataclass
class Piece:
    """One unit of a chat answer, shared by the streaming and non-streaming writers."""

    text: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    finish_reason: str | None = None
    logprobs: list[TokenLogprob] = field(default_factory=list)


@dataclass
class Turn:
    """State of one chat request across server-tool rounds."""

    body: ChatCompletionRequest
    served: ServedModel
    plan: ToolPlan | None
    tool_timeout: float
    max_rounds: int
    output_grammar: Grammar | None  # response_format / guided_*: every round's output
    usage: Usage = field(default_factory=Usage)
    executed: list[ServerToolCall] = field(default_factory=list)

    @property
    def server_tools(self) -> dict[str, ServerTool]:
        return self.plan.server_tools if self.plan else {}


async def create_chat_completion(
    body: ChatCompletionRequest, registry: ModelRegistry, request: Request
) -> Response | ChatCompletion:
    served = registry.get(body.model)
    body.check_supported()
    body.check_tool_messages()
    settings = request.app.state.settings
    server_tools: dict[str, ServerTool] = request.app.state.server_tools
    # llama.cpp may take seconds to parse a large grammar: never on the event loop
    grammar = await asyncio.to_thread(served.output_grammar, body.output_constraint())
    # constrained output is the answer itself: tools are then not offered
    offered = server_tools if grammar is None else {}
    plan = await asyncio.to_thread(_plan_tools, body, served, offered)
    if grammar is not None and plan is not None:
        raise InvalidRequest(
            "tools cannot be combined with response_format or guided_* output constraints; "
            "send tool_choice 'none' or drop the constraint",
            param="tools",
        )
    turn = Turn(
        body,
        served,
        plan,
        settings.tool_timeout,
        settings.tool_max_rounds,
        grammar,
    )
    messages = body.template_messages()
    # n choices share the prompt's evaluation; bad input and a full queue fail here
    first_rounds = _start_rounds(turn, messages, 0, body.n)
    answers = [_answer(turn, messages, first) for first in first_rounds]
    response_id, created = new_id("chatcmpl"), int(time.time())
    if body.stream:
        frames = _chunks(turn, answers, response_id, created)
        return stream_response([], lambda: frames)
    try:
        collected = await until_disconnect(request, _collect_all(answers))
    finally:
        for answer in answers:
            await answer.aclose()
    model = served.client.model
    return ChatCompletion(
        id=response_id,
        created=created,
        model=body.model,
        choices=[_choice(i, c, model if body.logprobs else None) for i, c in enumerate(collected)],
        usage=turn.usage,
        server_tool_calls=turn.executed or None,
    )


def _choice(index: int, answer: Piece, model: LlamaModel | None) -> ChatChoice:
    """A whole answer as a choice; `model` is given when logprobs were asked for."""
    calls = answer.tool_calls
    message = ResponseMessage(  # beside calls, the newline a model writes before them is no answer
        content=None if calls and not answer.text.strip() else answer.text,
        tool_calls=[_call_out(c) for c in calls] or None,
    )
    logprobs = None
    if model is not None:
        logprobs = ChoiceLogprobs(content=chat_logprobs(model, answer.logprobs))
    return ChatChoice(
        index=index, message=message, finish_reason=answer.finish_reason, logprobs=logprobs
    )


def _plan_tools(
    body: ChatCompletionRequest, served: ServedModel, server_tools: dict[str, ServerTool]
) -> ToolPlan | None:
    client_specs, choice = body.tool_specs(), body.tool_choice
    if choice == "none":
        return None  # no tools offered, none parsed
    names = [spec.name for spec in client_specs]
    if len(set(names)) != len(names):
        raise InvalidRequest("tool names must be unique", param="tools")
    offered = {name: tool for name, tool in server_tools.items() if name not in names}
    specs = client_specs + [tool.spec for tool in offered.values()]
    if not specs:
        if choice not in (None, "auto"):
            raise InvalidRequest("tool_choice requires tools", param="tool_choice")
        return None
    is_native = served.template.supports_tools
    parser = _parser_for_template(served.template.source) if is_native else PARSERS["hermes"]
    forced = _forced_specs(choice, specs)
    grammar = None
    if forced:
        try:
            # a small model, once forced, may call again and again: one call per offered tool
            # (named: exactly one) is the bound; parallel_tool_calls false means one
            many = body.parallel_tool_calls and choice == "required"
            text = forced_call_grammar(forced, parser.name, len(forced) if many else 1)
            grammar = Grammar(served.client.model, text)
        except GrammarError as exc:
            raise InvalidRequest(str(exc), param="tools") from exc
    return ToolPlan(specs, parser, is_native, grammar, body.parallel_tool_calls, offered)


def _forced_specs(choice: object, specs: list[ToolSpec]) -> list[ToolSpec]:
    if choice == "required":
        return specs
    if choice is None or isinstance(choice, str):
        return []
    name = choice.function.name  # type: ignore[attr-defined]
    named = [spec for spec in specs if spec.name == name]
    if not named:
        raise InvalidRequest(f"tool_choice names an unknown function '{name}'", "tool_choice")
    return named


def _prompt(turn: Turn, messages: list[dict[str, Any]]) -> list[int]:
    plan = turn.plan
    if plan is None:
        return turn.served.chat_tokens(messages)
    if plan.is_native:
        tools = [spec.as_openai() for spec in plan.specs]
        return turn.served.chat_tokens(native_messages(messages), tools=tools)
    return turn.served.chat_tokens(fallback_messages(messages, plan.specs))


class HeldLogprobs:
    """Logprobs travel with their text: while the tool-call splitter holds back any of an
    event's text (a possible call marker), that event's logprobs wait too."""

    def __init__(self) -> None:
        self._fed = self._passed = 0  # characters given to the splitter, and let through
        self._waiting: deque[tuple[int, list[TokenLogprob]]] = deque()  # (text end, logprobs)

    def pass_on(self, fed: str, logprobs: list[TokenLogprob], passed: str) -> list[TokenLogprob]:
        """The logprobs whose text has all been let through once `passed` is."""
        self._fed += len(fed)
        self._passed += len(passed)
        if logprobs:
            self._waiting.append((self._fed, logprobs))
        out: list[TokenLogprob] = []
        while self._waiting and self._waiting[0][0] <= self._passed:
            out += self._waiting.popleft()[1]
        return out

    def rest(self) -> list[TokenLogprob]:
        return [lp for _, logprobs in self._waiting for lp in logprobs]


@dataclass
class Round:
    """One generation request of a turn, already queued in the engine."""

    stream: RequestStream
    splitter: ToolCallStream | None


def _start_rounds(
    turn: Turn, messages: list[dict[str, Any]], round_no: int, n: int = 1
) -> list[Round]:
    body, served, plan = turn.body, turn.served, turn.plan
    prompt = _prompt(turn, messages)
    limit = served.max_new_tokens(len(prompt), body.requested_max_tokens(), "messages")
    # a forced tool_choice applies to the model's first answer, not to what follows tool results
    grammar = plan.forced_grammar if plan and round_no == 0 else turn.output_grammar
    params = body.to_sampling_params(served.client.model.num_vocab, limit, grammar)
    streams = submit_all(served, [prompt], params, n)
    if plan is None:
        return [Round(stream, None) for stream in streams]
    # a call of a function nobody offered is not one the client could run: it stays content
    names = {spec.name for spec in plan.specs}
    return [Round(stream, ToolCallStream(plan.parser, names)) for stream in streams]


async def _answer(
    turn: Turn, messages: list[dict[str, Any]], current: Round
) -> AsyncIterator[Piece]:
    """Generate, run server tools the model calls, and generate again, up to max_rounds."""
    plan = turn.plan
    for round_no in range(turn.max_rounds + 1):
        if round_no:
            [current] = _start_rounds(turn, messages, round_no)
        finish, splitter, said = "stop", current.splitter, ""
        held = HeldLogprobs()
        try:
            async for event in current.stream:
                check_event(event)
                text, logprobs = event.text, event.logprobs
                if splitter:
                    text = splitter.feed(event.text)
                    logprobs = held.pass_on(event.text, logprobs, text)
                said += text
                if text or logprobs:
                    yield Piece(text=text, logprobs=logprobs)
                if event.finish_reason is not None:
                    add_usage(turn.usage, event)
                    finish = event.finish_reason.value
        finally:
            current.stream.cancel()
        parsed = splitter.finish() if splitter else ParsedOutput(None, [])
        held_text = parsed.content
        # a forced call ends only once complete: unparsed, a stop string cut it as max_tokens can
        is_forced = plan is not None and round_no == 0 and plan.forced_grammar is not None
        if plan and (finish == "length" or is_forced):
            parsed = _without_cut_call(parsed, plan.parser)
        if parsed.content:  # the held logprobs only if every held token became this content
            whole = not parsed.tool_calls and parsed.content == held_text
            yield Piece(text=parsed.content, logprobs=held.rest() if whole else [])
        calls = parsed.tool_calls if plan is None or plan.allow_many else parsed.tool_calls[:1]
        server_calls = [c for c in calls if c.name in turn.server_tools]
        if server_calls and len(server_calls) == len(calls) and round_no < turn.max_rounds:
            content = said + (parsed.content or "")
            messages = messages + await _run_server_calls(turn, content, server_calls)
            continue
        client_calls = [c for c in calls if c.name not in turn.server_tools]
        if client_calls:
            yield Piece(tool_calls=client_calls, finish_reason="tool_calls")
        else:
            yield Piece(finish_reason=finish)
        return


async def _run_server_calls(
    turn: Turn, content: str | None, calls: list[ToolCall]
) -> list[dict[str, Any]]:
    """Execute calls concurrently; returns the assistant + tool messages for the next round."""
    results = await asyncio.gather(
        *(run_server_tool(turn.server_tools[c.name], c.arguments, turn.tool_timeout) for c in calls)
    )
    turn.executed += [
        ServerToolCall(id=c.id, name=c.name, arguments=c.arguments, result=r)
        for c, r in zip(calls, results, strict=True)
    ]
    assistant = {
        "role": "assistant",
        "content": content or "",
        "tool_calls": [_call_out(c).model_dump() for c in calls],
    }
    answers = [
        {"role": "tool", "tool_call_id": c.id, "name": c.name, "content": r}
        for c, r in zip(calls, results, strict=True)
    ]
    return [assistant, *answers]


def _without_cut_call(parsed: ParsedOutput, parser: ToolCallParser) -> ParsedOutput:
    """A call cut short by max_tokens cannot parse; neither its markup nor the start of a
    marker (held back while streaming, "<tool_") may become content."""
    content = parsed.content or ""
    cut = find_marker(content, parser.start_markers)
    if cut is None:
        cut = len(content) - partial_marker_len(content, parser.start_markers)
    return ParsedOutput(content[:cut], parsed.tool_calls)


def _call_out(call: ToolCall) -> ToolCallOut:
    return ToolCallOut(id=call.id, function=FunctionCall(name=call.name, arguments=call.arguments))


async def _collect(pieces: AsyncIterator[Piece]) -> Piece:
    """A whole answer as one piece."""
    answer = Piece()
    async for piece in pieces:
        answer.text += piece.text
        answer.tool_calls += piece.tool_calls
        answer.logprobs += piece.logprobs
        answer.finish_reason = piece.finish_reason or answer.finish_reason
    return answer


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


async def _collect_all(answers: list[AsyncIterator[Piece]]) -> list[Piece]:
    """Every choice's answer; one failing (or a cancel) stops the others before they close."""
    tasks = [asyncio.ensure_future(_collect(answer)) for answer in answers]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        await cancel_and_wait(tasks)


async def _chunks(
    turn: Turn, answers: list[AsyncIterator[Piece]], response_id: str, created: int
) -> AsyncIterator[str]:
    body, model = turn.body, turn.served.client.model

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
                    frame.logprobs = ChoiceLogprobs(content=chat_logprobs(model, piece.logprobs))
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
        for answer in answers:
            await answer.aclose()
    if body.stream_options and body.stream_options.include_usage:
        yield chunk(None, Delta(), usage=turn.usage)
    yield DONE


def _first_fragment(index: int, call: ToolCall) -> DeltaToolCall:
    return DeltaToolCall(
        index=index,
        id=call.id,
        type="function",
        function=DeltaFunction(name=call.name, arguments=""),
    )
