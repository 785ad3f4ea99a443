"""POST /v1/chat/completions: the request, the response and the stream chunk models."""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_serializer

from roost.api.protocol.base import Request, SamplingRequest, Usage, schema_problem
from roost.chat.constraints import ToolSpec
from roost.chat.tool_plan import ToolChoice
from roost.chat.turn import ChatRequest
from roost.config import SamplingDefaults
from roost.engine.sessions import SessionRef
from roost.errors import InvalidRequest

MAX_MESSAGES = 4096  # a history longer than any context; the body limit bounds the rest
MAX_TOOLS = 128  # OpenAI's limit


class TextPart(Request):
    type: Literal["text"]
    text: str


class RefusalPart(Request):
    """An assistant's refusal, sent back in the history as OpenAI allows."""

    type: Literal["refusal"]
    refusal: str


class ContentPart(Request):
    type: str


class FunctionCall(BaseModel):
    name: str
    arguments: str


class MessageToolCall(Request):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


def _content_rule(schema: dict[str, Any]) -> None:
    """The JSON schema says what `text` enforces: only an assistant message may go without
    content (it may only call tools)."""
    schema["if"] = {"properties": {"role": {"const": "assistant"}}}
    schema["else"] = {"required": ["content"], "properties": {"content": {"not": {"type": "null"}}}}


class ChatMessage(Request):
    model_config = ConfigDict(json_schema_extra=_content_rule)

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart | RefusalPart | ContentPart] | None = None
    name: str | None = None
    tool_calls: list[MessageToolCall] | None = None
    tool_call_id: str | None = None

    def text(self, index: int) -> str:
        param = f"messages[{index}].content"
        if self.content is None and self.role != "assistant":  # an assistant may only call
            raise InvalidRequest(f"a '{self.role}' message needs content", param=param)
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        parts = enumerate(self.content)
        return "".join(self._part_text(part, f"{param}[{i}]") for i, part in parts)

    def _part_text(self, part: TextPart | RefusalPart | ContentPart, param: str) -> str:
        if isinstance(part, TextPart):
            return part.text
        if isinstance(part, RefusalPart):
            if self.role == "assistant":
                return part.refusal
            raise InvalidRequest("'refusal' parts belong to assistant messages", param=param)
        if part.type in ("text", "refusal"):  # it matched neither model: its field is missing
            raise InvalidRequest(f"a '{part.type}' part needs a '{part.type}' field", param=param)
        raise InvalidRequest(
            f"content part type '{part.type}' is not supported by this model", param=param
        )


class FunctionDefinition(Request):
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolDefinition(Request):
    type: Literal["function"]
    function: FunctionDefinition


class ToolChoiceFunction(Request):
    name: str


class NamedToolChoice(Request):
    type: Literal["function"]
    function: ToolChoiceFunction


class ChatCompletionRequest(SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    tools: list[ToolDefinition] | None = Field(default=None, max_length=MAX_TOOLS)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool = True

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def logprob_counts(self) -> tuple[int | None, int | None]:
        if not self.logprobs:
            if self.top_logprobs is not None:
                raise InvalidRequest("top_logprobs requires logprobs: true", param="top_logprobs")
            return None, None
        return self.top_logprobs or 0, None

    def tool_specs(self) -> list[ToolSpec]:
        """The client's tools, each schema checked (an invalid one is a 400 naming it)."""
        specs = []
        for i, tool in enumerate(self.tools or []):
            function = tool.function
            parameters = function.parameters or {"type": "object", "properties": {}}
            if parameters.get("type", "object") != "object":  # arguments are a JSON object
                raise InvalidRequest(
                    f"the parameters of tool '{function.name}' must be an object schema",
                    param=f"tools[{i}].function.parameters",
                )
            if (problem := schema_problem(parameters)) is not None:
                raise InvalidRequest(
                    f"invalid JSON schema for tool '{function.name}': {problem}",
                    param=f"tools[{i}].function.parameters",
                )
            specs.append(ToolSpec(function.name, function.description, parameters))
        return specs

    def check_tool_messages(self) -> None:
        """Every `tool` message answers a call made by an earlier assistant message."""
        call_ids: set[str] = set()
        for i, message in enumerate(self.messages):
            call_ids.update(call.id for call in message.tool_calls or [])
            if message.role == "tool" and message.tool_call_id not in call_ids:
                raise InvalidRequest(
                    "a 'tool' message must answer a tool call of an earlier assistant message "
                    f"(no call with id '{message.tool_call_id}')",
                    param=f"messages[{i}].tool_call_id",
                )

    def to_chat_request(
        self, num_vocab: int, defaults: SamplingDefaults, session: SessionRef
    ) -> ChatRequest:
        """What chat/ needs to answer this request, every field checked."""
        self.check_supported()
        self.check_tool_messages()
        constraint = self.output_constraint()
        tools = self.tool_specs()
        messages = self.template_messages()
        params = self.to_sampling_params(num_vocab, defaults)
        choice = self.tool_choice
        if isinstance(choice, NamedToolChoice):
            tool_choice = ToolChoice(function=choice.function.name)
        else:
            tool_choice = ToolChoice(mode=choice)
        return ChatRequest(
            messages,
            params,
            self.requested_max_tokens(),
            self.n,
            tools,
            tool_choice,
            self.parallel_tool_calls,
            constraint,
            session,
        )

    def template_messages(self) -> list[dict[str, Any]]:
        rendered = []
        for i, message in enumerate(self.messages):
            role = "system" if message.role == "developer" else message.role
            item: dict[str, Any] = {"role": role, "content": message.text(i)}
            if message.name is not None:
                item["name"] = message.name
            if message.tool_calls:
                item["tool_calls"] = [call.model_dump() for call in message.tool_calls]
            if message.tool_call_id is not None:
                item["tool_call_id"] = message.tool_call_id
            rendered.append(item)
        return rendered


class ToolCallOut(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None = None
    tool_calls: list[ToolCallOut] | None = None


class ServerToolCall(BaseModel):
    """roost extension: a server-side tool call made while answering, with its result."""

    id: str
    name: str
    arguments: str
    result: str


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class ChatTokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    content: list[ChatTokenLogprob] | None
    refusal: list[ChatTokenLogprob] | None = None


class ChatChoice(BaseModel):
    index: int
    message: ResponseMessage
    finish_reason: str | None
    logprobs: ChoiceLogprobs | None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatChoice]
    usage: Usage
    system_fingerprint: str | None = None
    server_tool_calls: list[ServerToolCall] | None = None


class _Sparse(BaseModel):
    """Serialised without null fields, as OpenAI sends stream deltas."""

    @model_serializer(mode="wrap")
    def _drop_none(self, handler: Any) -> dict[str, Any]:
        return {k: v for k, v in handler(self).items() if v is not None}


class DeltaFunction(_Sparse):
    name: str | None = None
    arguments: str | None = None


class DeltaToolCall(_Sparse):
    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: DeltaFunction


class Delta(_Sparse):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[DeltaToolCall] | None = None


class ChunkChoice(BaseModel):
    index: int
    delta: Delta
    finish_reason: str | None = None
    logprobs: ChoiceLogprobs | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None
