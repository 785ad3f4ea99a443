"""The fields chat and completions share, their one conversion into SamplingParams, and the
pieces every endpoint's models use. Unknown request fields are accepted and ignored."""

from __future__ import annotations

import json
import uuid
from typing import Annotated, Any, Literal, TypeVar

from jsonschema import Draft202012Validator, SchemaError
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from roost.chat.constraints import Constraint, ConstraintKind
from roost.chat.generation import TokenCounts
from roost.config import SamplingDefaults
from roost.engine.params import SamplingParams
from roost.errors import InvalidRequest

Probability = Annotated[float, Field(ge=0.0, le=1.0)]
Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]
MAX_STOPS = 16
MAX_LOGIT_BIAS = 300  # entries: OpenAI's limit


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
        # "logprobs": null); null means "not given", not an invalid value. A number without a
        # fraction (16.0) is an integer, as JSON Schema counts it; a float field takes it too
        if isinstance(data, dict):
            return {key: _integral(value) for key, value in data.items() if value is not None}
        return data


def _integral(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


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
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = Field(
        default=None, max_length=MAX_LOGIT_BIAS
    )
    n: int = Field(default=1, ge=1, le=128)
    response_format: ResponseFormat | None = None
    # vLLM's structured-output extras
    guided_json: dict[str, Any] | str | None = None
    guided_choice: list[str] | None = Field(default=None, min_length=1)
    guided_regex: str | None = None
    guided_grammar: str | None = None
    user: str | None = None  # names a session to resume (X-Session-ID wins)
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

    def output_constraint(self) -> Constraint | None:
        """At most one of the constraint fields, its value checked."""
        found = [c for c in self._constraints() if c[1] is not None]
        if len(found) > 1:
            names = ", ".join(c[2] for c in found)
            raise InvalidRequest(f"only one output constraint at a time ({names})", found[1][2])
        if not found:
            return None
        kind, value, param = found[0]
        if kind is ConstraintKind.JSON_SCHEMA:
            value = _checked_schema(value, param)
        return Constraint(kind, value, param)

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
        self, num_vocab: int, defaults: SamplingDefaults | None = None
    ) -> SamplingParams:
        """The one conversion. Precedence: the request's value → the model's `defaults` from
        the config → OpenAI's default. `max_tokens` is as requested (checked against the
        prompt later); the grammar is added once compiled."""
        unset = SamplingDefaults()
        d = defaults or unset
        stop = self.stop if "stop" in self.model_fields_set else d.stop
        stops = (stop,) if isinstance(stop, str) else tuple(stop or ())
        max_tokens = self.requested_max_tokens() or d.max_tokens
        if max_tokens is not None and self.min_tokens > max_tokens:
            raise InvalidRequest("min_tokens may not exceed max_tokens", param="min_tokens")
        stop_ids = frozenset(self.stop_token_ids or ())
        if any(not 0 <= t < num_vocab for t in stop_ids):
            raise InvalidRequest(f"token ids must be in [0, {num_vocab})", param="stop_token_ids")
        num_logprobs, num_prompt_logprobs = self.logprob_counts()
        return SamplingParams(
            max_tokens=max_tokens,
            stop=stops,
            temperature=_first(self.temperature, d.temperature, 1.0),
            top_p=_first(self.top_p, d.top_p, 1.0),
            top_k=max(_first(self.top_k, d.top_k, 0), 0),
            min_p=_first(self.min_p, d.min_p, 0.0),
            seed=_first(self.seed, d.seed, None),
            presence_penalty=_first(self.presence_penalty, d.presence_penalty, 0.0),
            frequency_penalty=_first(self.frequency_penalty, d.frequency_penalty, 0.0),
            repetition_penalty=_first(self.repetition_penalty, d.repetition_penalty, 1.0),
            logit_bias=self._token_biases(num_vocab),
            stop_token_ids=stop_ids,
            ignore_eos=self.ignore_eos,
            min_tokens=self.min_tokens,
            include_stop_str_in_output=self.include_stop_str_in_output,
            skip_special_tokens=self.skip_special_tokens,
            num_logprobs=num_logprobs,
            num_prompt_logprobs=num_prompt_logprobs,
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


def _checked_schema(value: Any, param: str) -> dict[str, Any]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise InvalidRequest("the JSON schema is not valid JSON", param=param) from None
    if not isinstance(value, dict):
        raise InvalidRequest("a JSON schema must be an object", param=param)
    if (problem := schema_problem(value)) is not None:
        raise InvalidRequest(f"invalid JSON schema: {problem}", param=param)
    return value


def schema_problem(schema: dict[str, Any]) -> str | None:
    """Why `schema` is not a valid JSON schema; None if it is one."""
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        return str(exc.message)
    except RecursionError:  # jsonschema recurses once per level
        return "the schema is nested too deeply"
    return None


class PromptTokensDetails(BaseModel):
    cached_tokens: int = 0


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    prompt_tokens_details: PromptTokensDetails = Field(default_factory=PromptTokensDetails)

    @classmethod
    def of(cls, counts: TokenCounts) -> Usage:
        return cls(
            prompt_tokens=counts.prompt,
            completion_tokens=counts.completion,
            total_tokens=counts.prompt + counts.completion,
            prompt_tokens_details=PromptTokensDetails(cached_tokens=counts.cached),
        )


V = TypeVar("V")


def _first(value: V | None, default: V | None, fallback: V) -> V:
    """The request's value, else the configured default, else OpenAI's."""
    if value is not None:
        return value
    return default if default is not None else fallback
