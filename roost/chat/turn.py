"""One turn of a conversation: render the prompt, generate, split tool calls out of the text,
run the server tools the model calls and generate again, up to the round limit."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any

from roost.chat.constraints import Constraint, ToolSpec, compile_constraint
from roost.chat.generation import TokenCounts, check_event, submit_all
from roost.chat.prompt import max_new_tokens, render
from roost.chat.server_tools import ServerTool, run_server_tool
from roost.chat.tool_plan import ToolChoice, ToolPlan, plan_tools
from roost.chat.tool_prompt import fallback_messages, native_messages
from roost.chat.tool_stream import ToolCallStream
from roost.chat.tools import ParsedOutput, ToolCall, ToolCallParser, find_marker
from roost.engine.client import RequestStream
from roost.engine.logprobs import TokenLogprob
from roost.engine.params import CompiledGrammar, SamplingParams
from roost.engine.registry import ServedModel
from roost.engine.sessions import SessionRef
from roost.engine.stop import held_tail_len
from roost.errors import InvalidRequest
from roost.streams import cancel_and_wait


@dataclass(frozen=True)
class ChatRequest:
    """A chat request as chat/ sees it: plain data, built by the API layer."""

    messages: list[dict[str, Any]]  # OpenAI messages as the template expects them
    params: SamplingParams  # max_tokens: requested or the model's default (None: no limit)
    max_tokens: int | None = None  # as requested: checked against the context
    n: int = 1
    tools: list[ToolSpec] = field(default_factory=list)
    tool_choice: ToolChoice = field(default_factory=ToolChoice)
    parallel_tool_calls: bool = True
    constraint: Constraint | None = None  # response_format / guided_*
    session: SessionRef = field(default_factory=SessionRef)


@dataclass
class Piece:
    """One unit of a chat answer, shared by the streaming and non-streaming writers."""

    text: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    finish_reason: str | None = None
    logprobs: list[TokenLogprob] = field(default_factory=list)


@dataclass(frozen=True)
class ExecutedCall:
    """A server tool the model called while answering, with its result."""

    call: ToolCall
    result: str


@dataclass
class Turn:
    """State of one chat request across server-tool rounds; `answers` yield each choice."""

    served: ServedModel
    request: ChatRequest
    plan: ToolPlan | None
    tool_timeout: float
    max_rounds: int
    output_grammar: CompiledGrammar | None  # every round's output
    usage: TokenCounts = field(default_factory=TokenCounts)
    executed: list[ExecutedCall] = field(default_factory=list)
    answers: list[AsyncIterator[Piece]] = field(default_factory=list)
    first_streams: list[RequestStream] = field(default_factory=list)  # the first round's

    @property
    def server_tools(self) -> dict[str, ServerTool]:
        return self.plan.server_tools if self.plan else {}

    async def aclose(self) -> None:
        for answer in self.answers:
            await answer.aclose()  # type: ignore[attr-defined]
        for stream in self.first_streams:  # an answer closed before it began holds its own
            stream.cancel()


async def start_turn(
    served: ServedModel,
    request: ChatRequest,
    server_tools: dict[str, ServerTool],
    tool_timeout: float,
    max_rounds: int,
) -> Turn:
    """Everything up to the queued first round: bad input and a full queue fail here."""
    grammar = await compile_constraint(served, request.constraint)
    # constrained output is the answer itself: tools are then not offered
    offered = server_tools if grammar is None else {}
    plan = await asyncio.to_thread(
        plan_tools,
        served,
        request.tools,
        request.tool_choice,
        request.parallel_tool_calls,
        offered,
    )
    if grammar is not None and plan is not None:
        raise InvalidRequest(
            "tools cannot be combined with response_format or guided_* output constraints; "
            "send tool_choice 'none' or drop the constraint",
            param="tools",
        )
    turn = Turn(served, request, plan, tool_timeout, max_rounds, grammar)
    # n choices share the prompt's evaluation
    first_rounds = await _start_rounds(turn, request.messages, 0, request.n)
    turn.first_streams = [first.stream for first in first_rounds]
    turn.answers = [
        _answer(turn, request.messages, first, is_first=j == 0)
        for j, first in enumerate(first_rounds)
    ]
    return turn


async def _prompt(turn: Turn, messages: list[dict[str, Any]]) -> list[int]:
    plan, served = turn.plan, turn.served
    if plan is None:
        return await render(served, messages)
    if plan.is_native:
        tools = [spec.as_openai() for spec in plan.specs]
        return await render(served, native_messages(messages), tools=tools)
    return await render(served, fallback_messages(messages, plan.specs))


@dataclass
class Round:
    """One generation request of a turn, already queued in the engine."""

    stream: RequestStream
    splitter: ToolCallStream | None


async def _start_rounds(
    turn: Turn, messages: list[dict[str, Any]], round_no: int, n: int = 1, in_session: bool = True
) -> list[Round]:
    served, plan, params = turn.served, turn.plan, turn.request.params
    prompt = await _prompt(turn, messages)
    # a configured default max_tokens is not checked: the context's end stops it instead
    max_new_tokens(served, len(prompt), turn.request.max_tokens, "messages")
    # a forced tool_choice applies to the model's first answer, not to what follows tool results
    grammar = plan.forced_grammar if plan and round_no == 0 else turn.output_grammar
    params = replace(params, grammar=grammar)
    # a session keeps the first choice's state: the other choices' later rounds are anonymous
    session = turn.request.session if in_session else replace(turn.request.session, key=None)
    streams = await submit_all(served, [prompt], params, n, session)
    if plan is None:
        return [Round(stream, None) for stream in streams]
    # a call of a function nobody offered is not one the client could run: it stays content
    names = {spec.name for spec in plan.specs}
    return [Round(stream, ToolCallStream(plan.parser, names)) for stream in streams]


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


async def _answer(
    turn: Turn, messages: list[dict[str, Any]], current: Round, is_first: bool = True
) -> AsyncIterator[Piece]:
    """Generate, run server tools the model calls, and generate again, up to max_rounds."""
    plan = turn.plan
    for round_no in range(turn.max_rounds + 1):
        if round_no:
            [current] = await _start_rounds(turn, messages, round_no, in_session=is_first)
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
                    turn.usage.add(event)
                    finish = event.finish_reason.value
        finally:
            current.stream.cancel()
        parsed = splitter.finish() if splitter else ParsedOutput(None, [])
        held_text = parsed.content
        # a forced call ends only once complete: unparsed, a stop string cut it as max_tokens can
        is_forced = plan is not None and round_no == 0 and plan.forced_grammar is not None
        if plan and (finish == "length" or is_forced):
            parsed = without_cut_call(parsed, plan.parser)
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
    turn.executed += [ExecutedCall(c, r) for c, r in zip(calls, results, strict=True)]
    assistant = {
        "role": "assistant",
        "content": content or "",
        "tool_calls": [_call_message(c) for c in calls],
    }
    answers = [
        {"role": "tool", "tool_call_id": c.id, "name": c.name, "content": r}
        for c, r in zip(calls, results, strict=True)
    ]
    return [assistant, *answers]


def _call_message(call: ToolCall) -> dict[str, Any]:
    """A call as the history's assistant message holds it (OpenAI's shape)."""
    function = {"name": call.name, "arguments": call.arguments}
    return {"id": call.id, "type": "function", "function": function}


def without_cut_call(parsed: ParsedOutput, parser: ToolCallParser) -> ParsedOutput:
    """A call cut short by max_tokens cannot parse; neither its markup nor the start of a
    marker (held back while streaming, "<tool_") may become content."""
    content = parsed.content or ""
    cut = find_marker(content, parser.start_markers)
    if cut is None:
        cut = len(content) - held_tail_len(content, parser.start_markers)
    return ParsedOutput(content[:cut], parsed.tool_calls)


async def collect(pieces: AsyncIterator[Piece]) -> Piece:
    """A whole answer as one piece."""
    answer = Piece()
    async for piece in pieces:
        answer.text += piece.text
        answer.tool_calls += piece.tool_calls
        answer.logprobs += piece.logprobs
        answer.finish_reason = piece.finish_reason or answer.finish_reason
    return answer


async def collect_all(answers: list[AsyncIterator[Piece]]) -> list[Piece]:
    """Every choice's answer; one failing (or a cancel) stops the others before they close."""
    tasks = [asyncio.ensure_future(collect(answer)) for answer in answers]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        await cancel_and_wait(tasks)
