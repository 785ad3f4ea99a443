"""Output constraints as grammars: response_format and guided_* fields, and forced tool calls
(tool_choice required or named), which then always parse and validate."""

from __future__ import annotations

import asyncio
import enum
import json
from dataclasses import dataclass, field
from typing import Any

from roost.chat.schema import enforceable
from roost.engine.params import CompiledGrammar
from roost.engine.registry import ServedModel
from roost.errors import GrammarError, InvalidRequest
from roost.llama.gbnf import alternatives, literal, regex_grammar, schema_rules


@dataclass(frozen=True)
class ToolSpec:
    """A function the model may call: name, description and a JSON schema for its arguments."""

    name: str
    description: str | None = None
    parameters: dict[str, Any] = field(default_factory=lambda: {"type": "object", "properties": {}})

    def as_openai(self) -> dict[str, Any]:
        function: dict[str, Any] = {"name": self.name, "parameters": self.parameters}
        if self.description:
            function["description"] = self.description
        return {"type": "function", "function": function}


@dataclass(frozen=True)
class CallFormat:
    """How a parser family writes calls: each call is prefix + JSON + suffix."""

    prefix: str = ""
    suffix: str = ""
    separator: str = "\n"
    open: str = ""
    close: str = ""


CALL_FORMATS: dict[str, CallFormat] = {
    "hermes": CallFormat(prefix="<tool_call>\n", suffix="\n</tool_call>"),
    "mistral": CallFormat(separator=", ", open="[TOOL_CALLS][", close="]"),
    "llama3_json": CallFormat(separator="; "),
    "json": CallFormat(),
}


def forced_call_grammar(tools: list[ToolSpec], parser_name: str, max_calls: int) -> str:
    """GBNF accepting 1..max_calls well-formed calls of `tools`, arguments matching schemas."""
    fmt = CALL_FORMATS[parser_name]
    object_schemas = {t.name: _object_schema(t.parameters) for t in tools}
    rules, names = schema_rules(object_schemas, enforceable)
    alternatives = []
    for tool in tools:
        head = literal(f'{fmt.prefix}{{"name": {json.dumps(tool.name)}, "arguments": ')
        alternatives.append(f"{head} {names[tool.name]} {literal('}' + fmt.suffix)}")
    call = " | ".join(f"({alt})" for alt in alternatives)
    repeat = f"({literal(fmt.separator)} call){{0,{max_calls - 1}}}" if max_calls > 1 else ""
    root = " ".join(p for p in (_opt(fmt.open), "call", repeat, _opt(fmt.close)) if p)
    return f"root ::= {root}\ncall ::= {call}\n{rules}\n"


class ConstraintKind(enum.Enum):
    """What a request asks its output to be (response_format and vLLM's guided_* fields)."""

    JSON_OBJECT = "json_object"
    JSON_SCHEMA = "json_schema"
    CHOICE = "choice"
    REGEX = "regex"


def output_grammar(kind: ConstraintKind, value: Any) -> str:
    """GBNF for an output constraint; raises GrammarError when it cannot be enforced."""
    if kind is ConstraintKind.JSON_OBJECT:
        return schema_grammar({"type": "object"})
    if kind is ConstraintKind.JSON_SCHEMA:
        return schema_grammar(value)
    if kind is ConstraintKind.CHOICE:
        return f"root ::= {alternatives(value)}\n"
    return regex_grammar(value)


@dataclass(frozen=True)
class Constraint:
    """What a request asks its output to match, and the request field that asked."""

    kind: ConstraintKind
    value: Any
    param: str


async def compile_constraint(
    served: ServedModel, constraint: Constraint | None
) -> CompiledGrammar | None:
    """The grammar for a request's output constraint, parsed by llama.cpp in a worker thread
    (a large one takes seconds); a 400 naming the field if it cannot be enforced."""
    if constraint is None:
        return None

    def build() -> CompiledGrammar:
        try:
            return served.compile_grammar(output_grammar(constraint.kind, constraint.value))
        except GrammarError as exc:
            raise InvalidRequest(
                f"{exc}; this constraint is not supported", param=constraint.param
            ) from exc

    return await asyncio.to_thread(build)


def schema_grammar(schema: dict[str, Any]) -> str:
    """A grammar whose only outputs are JSON documents valid against `schema`."""
    rules, names = schema_rules({"doc": schema}, enforceable)
    return f"root ::= {names['doc']}\n{rules}\n"


def _opt(text: str) -> str:
    return literal(text) if text else ""


def _object_schema(schema: dict[str, Any]) -> dict[str, Any]:
    # arguments are always a JSON object, whatever the schema leaves open
    return schema if schema.get("type") == "object" else {**schema, "type": "object"}
