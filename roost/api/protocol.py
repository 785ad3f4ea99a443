"""OpenAI request and response models. Unknown request fields are accepted and ignored."""

from __future__ import annotations

import json
import time
import uuid
from typing import Annotated, Any, Literal

from jsonschema import Draft202012Validator, SchemaError
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_serializer,
    model_validator,
)

from roost.api.errors import InvalidRequest
from roost.chat.constraints import ConstraintKind, ToolSpec
from roost.engine.params import SamplingParams
from roost.llama.grammar import Grammar
from roost.llama.sampler import SamplerSpec

Probability = Annotated[float, Field(ge=0.0, le=1.0)]
Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]
MAX_STOPS = 16


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


class Request(BaseModel):
    # strict: "3" is not a max_tokens nor 1 a stream flag (OpenAI answers 400 invalid_type);
    # a JSON integer still fills a float field
    model_config = ConfigDict(extra="ignore", strict=True)

    @model_validator(mode="before")
    @classmethod
    def _null_is_default(cls, data: Any) -> Any:
        # OpenAI's fields are nullable and clients send explicit nulls ("n": null,
        # "logprobs": null); null means "not given", not an invalid value
        if isinstance(data, dict):
            return {key: value for key, value in data.items() if value is not None}
        return data


class StreamOptions(Request):
    include_usage: bool = False


class JsonSchemaFormat(Request):
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class ResponseFormat(Request):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class SamplingRequest(Request):
    """Fields shared by chat and completions; `to_sampling_params` is the one conversion."""

    model: str
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: Probability | None = None
    top_k: int | None = Field(default=None, ge=-1)
    min_p: Probability | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    repetition_penalty: float | None = Field(default=None, gt=0.0, le=10.0)
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = None
    n: int = Field(default=1, ge=1, le=128)
    response_format: ResponseFormat | None = None
    # vLLM's structured-output extras
    guided_json: dict[str, Any] | str | None = None
    guided_choice: list[str] | None = Field(default=None, min_length=1)
    guided_regex: str | None = None
    guided_grammar: str | None = None
    # vLLM's sampling extras
    ignore_eos: bool = False
    min_tokens: int = Field(default=0, ge=0)
    stop_token_ids: list[int] | None = None
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > MAX_STOPS:
            raise ValueError(f"at most {MAX_STOPS} stop sequences")
        return value

    def requested_max_tokens(self) -> int | None:
        return self.max_tokens

    def unsupported(self) -> dict[str, bool]:
        """Fields a later release will honour; accepting them silently would mislead."""
        return {"guided_grammar": self.guided_grammar is not None}

    def output_constraint(self) -> tuple[ConstraintKind, Any, str] | None:
        """At most one of the constraint fields: (kind, value, the field's name)."""
        found = [c for c in self._constraints() if c[1] is not None]
        if len(found) > 1:
            names = ", ".join(c[2] for c in found)
            raise InvalidRequest(f"only one output constraint at a time ({names})", found[1][2])
        if not found:
            return None
        kind, value, param = found[0]
        if kind is ConstraintKind.JSON_SCHEMA:
            value = _checked_schema(value, param)
        return kind, value, param

    def _constraints(self) -> list[tuple[ConstraintKind, Any, str]]:
        found = [
            (ConstraintKind.JSON_SCHEMA, self.guided_json, "guided_json"),
            (ConstraintKind.CHOICE, self.guided_choice, "guided_choice"),
            (ConstraintKind.REGEX, self.guided_regex, "guided_regex"),
        ]
        fmt = self.response_format
        if fmt is None or fmt.type == "text":
            return found
        if fmt.type == "json_object":
            return [(ConstraintKind.JSON_OBJECT, True, "response_format"), *found]
        if fmt.json_schema is None:
            raise InvalidRequest("json_schema is required", param="response_format.json_schema")
        schema = fmt.json_schema.schema_
        return [(ConstraintKind.JSON_SCHEMA, schema, "response_format.json_schema.schema"), *found]

    def check_supported(self) -> None:
        for name, is_set in self.unsupported().items():
            if is_set:
                raise InvalidRequest(f"'{name}' is not supported by this server yet", param=name)

    def logprob_counts(self) -> tuple[int | None, int | None]:
        """(top alternatives per generated token, per prompt token); None: not wanted."""
        return None, None

    def to_sampling_params(
        self, num_vocab: int, max_tokens: int | None, grammar: Grammar | None = None
    ) -> SamplingParams:
        """Precedence: request value → OpenAI default (model configs add no overrides yet)."""
        stops = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        sampler = SamplerSpec(
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            top_k=max(self.top_k or 0, 0),
            min_p=self.min_p or 0.0,
            seed=self.seed,
            presence_penalty=self.presence_penalty or 0.0,
            frequency_penalty=self.frequency_penalty or 0.0,
            repetition_penalty=self.repetition_penalty or 1.0,
            logit_bias=self._token_biases(num_vocab),
            grammar=grammar,
        )
        if max_tokens is not None and self.min_tokens > max_tokens:
            raise InvalidRequest("min_tokens may not exceed max_tokens", param="min_tokens")
        stop_ids = frozenset(self.stop_token_ids or ())
        if any(not 0 <= t < num_vocab for t in stop_ids):
            raise InvalidRequest(f"token ids must be in [0, {num_vocab})", param="stop_token_ids")
        num_logprobs, num_prompt_logprobs = self.logprob_counts()
        return SamplingParams(
            num_logprobs=num_logprobs,
            num_prompt_logprobs=num_prompt_logprobs,
            max_tokens=max_tokens,
            stop=stops,
            sampler=sampler,
            stop_token_ids=stop_ids,
            ignore_eos=self.ignore_eos,
            min_tokens=self.min_tokens,
            include_stop_str_in_output=self.include_stop_str_in_output,
            skip_special_tokens=self.skip_special_tokens,
        )

    def _token_biases(self, num_vocab: int) -> dict[int, float]:
        biases: dict[int, float] = {}
        for key, bias in (self.logit_bias or {}).items():
            try:
                token = int(key)
            except ValueError:
                token = -1
            if not 0 <= token < num_vocab:
                raise InvalidRequest(
                    f"logit_bias key '{key}' is not a token id of this model", param="logit_bias"
                )
            biases[token] = bias
        return biases


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


class ChatMessage(Request):
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


def _checked_schema(value: Any, param: str) -> dict[str, Any]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise InvalidRequest("the JSON schema is not valid JSON", param=param) from None
    if not isinstance(value, dict):
        raise InvalidRequest("a JSON schema must be an object", param=param)
    if (problem := _schema_problem(value)) is not None:
        raise InvalidRequest(f"invalid JSON schema: {problem}", param=param)
    return value


def _schema_problem(schema: dict[str, Any]) -> str | None:
    """Why `schema` is not a valid JSON schema; None if it is one."""
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        return str(exc.message)
    except RecursionError:  # jsonschema recurses once per level
        return "the schema is nested too deeply"
    return None


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
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    tools: list[ToolDefinition] | None = None
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
            if (problem := _schema_problem(parameters)) is not None:
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


class CompletionRequest(SamplingRequest):
    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool = False
    logprobs: int | None = Field(default=None, ge=0, le=5)
    best_of: int | None = Field(default=None, ge=1, le=128)
    suffix: str | None = None

    def unsupported(self) -> dict[str, bool]:
        return {**super().unsupported(), "suffix": bool(self.suffix)}

    def num_candidates(self) -> int:
        """Choices generated per prompt: best_of of them, of which the n best are returned."""
        best_of = self.best_of or self.n
        if best_of < self.n:
            raise InvalidRequest("best_of must be at least n", param="best_of")
        if self.stream and best_of > self.n:
            raise InvalidRequest("best_of cannot be used with stream", param="best_of")
        return best_of

    def logprob_counts(self) -> tuple[int | None, int | None]:
        # best_of ranks candidates by mean logprob: it needs them even when not returned
        ranking = 0 if self.num_candidates() > self.n else None
        num = self.logprobs if self.logprobs is not None else ranking
        return num, self.logprobs if self.echo else None


# -- responses ------------------------------------------------------------------------------


class PromptTokensDetails(BaseModel):
    cached_tokens: int = 0


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    prompt_tokens_details: PromptTokensDetails = Field(default_factory=PromptTokensDetails)

    def add(self, prompt: int, completion: int, cached: int) -> None:
        self.prompt_tokens += prompt
        self.completion_tokens += completion
        self.total_tokens = self.prompt_tokens + self.completion_tokens
        self.prompt_tokens_details.cached_tokens += cached


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


class CompletionLogprobs(BaseModel):
    tokens: list[str] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)
    text_offset: list[int] = Field(default_factory=list)


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: str | None
    logprobs: CompletionLogprobs | None = None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


class TokenizeRequest(Request):
    """vLLM's /tokenize: a prompt, or chat messages rendered with the model's template."""

    model: str
    prompt: str | None = None
    messages: list[ChatMessage] | None = Field(default=None, min_length=1)
    add_special_tokens: bool = True
    add_generation_prompt: bool = True


class TokenizeResponse(BaseModel):
    tokens: list[int]
    count: int
    max_model_len: int


class DetokenizeRequest(Request):
    model: str
    tokens: list[int]


class DetokenizeResponse(BaseModel):
    prompt: str


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "roost"
    # roost's extension: devices, CPU features, threads, KV cache, repacking, GPU layers
    roost: dict[str, Any] | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# -- /v1/embeddings ---------------------------------------------------------------------------

MAX_EMBEDDING_INPUTS = 2048  # OpenAI's limit on inputs per request


class EmbeddingRequest(Request):
    """OpenAI's embeddings request: a text, texts, token ids, or lists of token ids."""

    model: str
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)


class EmbeddingData(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str  # str: base64 of little-endian float32 bytes


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingData]
    model: str
    usage: EmbeddingUsage
