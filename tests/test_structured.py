"""Structured outputs: response_format and vLLM's guided_* fields, enforced by a grammar."""

from __future__ import annotations

import json
import re
from typing import Any

import jsonschema
import openai
import pytest

from roost.llama.model import LlamaModel
from tests.conftest import MODEL, Server
from tests.forcing import banning

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 40},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "role": {"type": "string", "enum": ["admin", "user", "guest"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 3},
    },
    "required": ["name", "age", "role"],
    "additionalProperties": False,
}
ASK = [{"role": "user", "content": "Describe a user of a web site as JSON."}]


def _kind(kind: str) -> dict[str, Any]:
    return {"type": "object", "properties": {"kind": {"const": kind}}, "required": ["kind"]}


def _nested(depth: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "integer"}
    for _ in range(depth):
        schema = {"type": "object", "properties": {"x": schema}}
    return schema


def _constrained(
    client: openai.OpenAI, prompt: str, max_tokens: int, seed: int, **constraint: object
) -> openai.types.Completion:
    """A completion sampled at temperature 1 under one constraint field (`guided_regex`, ...)."""
    return client.completions.create(
        model=MODEL,
        prompt=prompt,
        max_tokens=max_tokens,
        seed=seed,
        temperature=1.0,
        extra_body=constraint,
    )


def _assert_schema_replies(
    client: openai.OpenAI,
    json_schema: dict[str, Any],
    num_seeds: int,
    max_tokens: int,
    **extra: object,
) -> None:
    """At temperature 1, every seed's reply stops by itself and validates. `max_tokens` must
    exceed the longest output the schema allows, in bytes (a token is at least one byte)."""
    response_format = {"type": "json_schema", "json_schema": json_schema}
    for seed in range(num_seeds):
        reply = client.chat.completions.create(
            model=MODEL,
            messages=ASK,
            response_format=response_format,  # type: ignore[arg-type]
            temperature=1.0,
            seed=seed,
            max_tokens=max_tokens,
            extra_body=extra,
        )
        assert reply.choices[0].finish_reason == "stop"
        content = json.loads(reply.choices[0].message.content or "")
        jsonschema.validate(content, json_schema["schema"])


def test_json_schema_output_always_validates(client: openai.OpenAI) -> None:
    # at most 40 + 3 * 12 characters of strings, 6 bytes each when escaped: under 600 bytes
    _assert_schema_replies(client, {"name": "person", "schema": PERSON, "strict": True}, 8, 600)


def test_json_object_output_is_a_json_object(
    client: openai.OpenAI, local_model: LlamaModel
) -> None:
    def reply(seed: int, **extra: object) -> tuple[str | None, str]:
        out = client.chat.completions.create(
            model=MODEL,
            messages=ASK,
            response_format={"type": "json_object"},
            temperature=0.7,
            seed=seed,
            max_tokens=120,
            extra_body=extra,
        )
        return out.choices[0].finish_reason, out.choices[0].message.content or ""

    # any object is allowed, so the model may write on until max_tokens: without a quote
    # (no member can begin) one request must close its object at once, and stop by itself
    finish, content = reply(0, logit_bias=banning(local_model, b'"'))
    assert finish == "stop" and json.loads(content) == {}
    for seed in range(4):
        finish, content = reply(seed)
        if finish == "stop":  # a length cut leaves JSON unfinished
            assert isinstance(json.loads(content), dict)
        else:
            assert content.startswith("{")


def test_response_format_on_completions(client: openai.OpenAI, local_model: LlamaModel) -> None:
    # the parity table asks for JSON mode on /v1/completions too, as vLLM serves it
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    fmt = {"type": "json_schema", "json_schema": {"name": "flag", "schema": schema}}
    bias = banning(local_model, b",")  # the object admits more members: it ends after "ok"
    for seed in range(3):
        out = _constrained(
            client, "Answer in JSON:", 60, seed, response_format=fmt, logit_bias=bias
        )
        assert out.choices[0].finish_reason == "stop"
        jsonschema.validate(json.loads(out.choices[0].text), schema)


def test_guided_choice_and_regex_on_completions(client: openai.OpenAI) -> None:
    choices = ["positive", "negative", "neutral"]
    for seed in range(4):
        review = "The review 'great product!' is"
        out = _constrained(client, review, 10, seed, guided_choice=choices)
        assert out.choices[0].text in choices
        code = _constrained(client, "A product code:", 20, seed, guided_regex="[A-Z]{3}-[0-9]{2,4}")
        assert re.fullmatch(r"[A-Z]{3}-[0-9]{2,4}", code.choices[0].text)


def test_one_parsed_grammar_serves_every_choice(
    client: openai.OpenAI, local_model: LlamaModel
) -> None:
    # the n choices sample from copies of one parsed grammar, each with its own parse state
    choices = ["north", "north east", "north west", "south", "south east"]
    out = client.completions.create(
        model=MODEL,
        prompt="Which way is the wind blowing?",
        max_tokens=10,
        n=4,
        seed=3,
        temperature=1.0,
        extra_body={"guided_choice": choices},
    )
    assert [c.finish_reason for c in out.choices] == ["stop"] * 4
    assert all(c.text in choices for c in out.choices), [c.text for c in out.choices]
    schema = {"type": "object", "properties": PERSON["properties"], "required": ["name"]}
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": schema}}
    # the object admits more members: each ends after "name" (at most 40 characters)
    replies = client.chat.completions.create(
        model=MODEL,
        messages=ASK,
        response_format=fmt,  # type: ignore[arg-type]
        n=3,
        seed=5,
        temperature=1.0,
        max_tokens=300,
        logit_bias=banning(local_model, b","),
    )
    for choice in replies.choices:
        assert choice.finish_reason == "stop"
        jsonschema.validate(json.loads(choice.message.content or ""), schema)


@pytest.mark.parametrize(
    "pattern",
    [
        r"\d{3}-\d{4}",
        r"[a-z]{3,8}@[a-z]{3,8}\.(com|org)",
        r"\(\w{2,5}\) \S{1,6}",
        r"-?\d{1,3}(\.\d{1,2})?",
        r"[^\s,]{2,6}(, [^\s,]{2,6}){1,2}",
    ],
)
def test_guided_regex_escapes_and_classes(client: openai.OpenAI, pattern: str) -> None:
    # escapes (\d \w \s \. \( ...) are translated by roost, not by the JSON-schema converter;
    # 80 tokens hold the longest match of each (18 four-byte characters and separators)
    for seed in range(3):
        out = _constrained(client, "Example:", 80, seed, guided_regex=pattern)
        assert out.choices[0].finish_reason == "stop"
        assert re.fullmatch(pattern, out.choices[0].text), out.choices[0].text


def test_schema_patterns_with_escapes_validate(
    client: openai.OpenAI, local_model: LlamaModel
) -> None:
    schema = {
        "type": "object",
        "properties": {
            "phone": {"type": "string", "pattern": r"^\d{3}-\d{4}$"},
            "site": {"type": "string", "pattern": r"^[a-z]{2,8}\.(com|org)$"},
            "quote": {"type": "string", "pattern": r'^[^"]{1,6}"[a-z]{1,4}$'},
        },
        "required": ["phone", "site", "quote"],
    }
    # the object admits more members: it ends after the three it requires
    bias = banning(local_model, b",")
    _assert_schema_replies(client, {"name": "contact", "schema": schema}, 4, 160, logit_bias=bias)


def test_guided_json_on_chat_streams_valid_json(
    client: openai.OpenAI, local_model: LlamaModel
) -> None:
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    chunks = client.chat.completions.create(
        model=MODEL,
        messages=ASK,
        stream=True,
        max_tokens=50,
        logit_bias=banning(local_model, b","),
        extra_body={"guided_json": schema},
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    jsonschema.validate(json.loads(text), schema)


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {"type": "number", "minimum": 1}},
                }
            },
            "response_format.json_schema.schema",
        ),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {"type": 7}},
                }
            },
            "response_format.json_schema.schema",
        ),
        ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
        ({"guided_json": "{not json"}, "guided_json"),
        ({"guided_regex": "(?=lookahead)x"}, "guided_regex"),
        ({"guided_regex": "a{3000}"}, "guided_regex"),  # llama.cpp would drop the bound
        ({"guided_regex": "a\\x00b"}, "guided_regex"),  # llama.cpp aborted the process
        ({"guided_json": _nested(100)}, "guided_json"),  # jsonschema's recursion: was a 500
        ({"guided_regex": "(" * 3000 + "a" + ")" * 3000}, "guided_regex"),  # was a 500
        ({"guided_regex": r"(a)\1"}, "guided_regex"),
        ({"guided_regex": "(?i)abc"}, "guided_regex"),
        ({"guided_regex": "[unclosed"}, "guided_regex"),
        ({"guided_grammar": "root ::= 'a'"}, "guided_grammar"),
        ({"guided_choice": ["a"], "guided_regex": "b"}, "guided_regex"),
        (
            {"guided_choice": ["a"], "tools": [{"type": "function", "function": {"name": "f"}}]},
            "tools",
        ),
    ],
)
def test_unsupported_or_invalid_constraints_are_400(
    server: Server, extra: dict, param: str
) -> None:
    body = {"model": MODEL, "messages": ASK, "max_tokens": 5, **extra}
    with server.http() as http:
        resp = http.post("/v1/chat/completions", json=body)
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["param"] == param


@pytest.mark.parametrize(
    "schema",
    [
        {"enum": ["a\\b", "c"]},  # a backslash was written into GBNF unescaped: "a\b" (backspace)
        {"const": "line\nbreak\ttab"},
        {"enum": ['say "hi"', "x"]},  # a quote made llama.cpp reject a valid schema
        {"type": "integer", "enum": [7, 100], "minimum": 0, "maximum": 10},  # range ∩ enum: 7
        {"type": "integer", "minimum": 0, "maximum": 5, "exclusiveMaximum": 1},  # the tighter: 0
        {"type": ["string", "null"], "maxLength": 2},  # keywords kept on a type list
        {  # pydantic's one-schema allOf wrapper around a $ref
            "type": "object",
            "properties": {"c": {"allOf": [{"$ref": "#/$defs/Color"}], "description": "fav"}},
            "required": ["c"],
            "$defs": {"Color": {"enum": ["red", "blue"]}},
        },
        {"type": "object", "properties": {"a\\b": {"type": "integer"}}, "required": ["a\\b"]},
        {"enum": ["ab", "a", "abc", 1, 12, None, {"k": "a"}]},  # values that prefix others
        # the keywords beside an enum narrow it (the enum alone gave "a", 1)
        {"type": ["string", "null"], "enum": ["a", 1, "abc", 2], "minLength": 2},
        {"oneOf": [{"enum": ["x", "y"]}, {"enum": ["x"]}]},  # "x" is in both: not one of
        {"anyOf": [{"enum": ["aaa", "b"]}, {"enum": ["ccc"]}], "maxLength": 1},  # gave "ccc"
        {  # an enum beside a $ref, and one inside an allOf beside maxLength
            "type": "object",
            "properties": {
                "a": {"enum": ["yy", "y"], "$ref": "#/$defs/short"},
                "b": {"allOf": [{"enum": ["x", "yy"]}], "maxLength": 1},  # gave {}
            },
            "required": ["a", "b"],
            "$defs": {"short": {"maxLength": 1}},
        },
        {  # pydantic's discriminated union: OpenAPI's `discriminator` constrains nothing
            "oneOf": [{"$ref": "#/$defs/A"}, {"$ref": "#/$defs/B"}],
            "discriminator": {"propertyName": "kind", "mapping": {"a": "#/$defs/A"}},
            "$defs": {name: _kind(name.lower()) for name in ("A", "B")},
        },
        {  # keywords beside anyOf move into its branches
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "anyOf": [{"required": ["a"]}, {"required": ["b"]}],
        },
    ],
)
def test_schemas_with_escapes_bounds_and_wrappers_validate(
    client: openai.OpenAI, local_model: LlamaModel, schema: dict[str, Any]
) -> None:
    bias = banning(local_model, b",")  # open objects end once they hold what they require
    for seed in range(2):
        out = _constrained(client, "JSON:", 40, seed, guided_json=schema, logit_bias=bias)
        assert out.choices[0].finish_reason == "stop", out.choices[0].text
        jsonschema.validate(json.loads(out.choices[0].text), schema)


def test_a_huge_max_length_is_served(server: Server) -> None:
    # its grammar was 20,000 nested groups: llama.cpp's parser overflowed and the server died
    schema = {"type": "string", "maxLength": 20000}
    body = {"model": MODEL, "prompt": "JSON:", "max_tokens": 5, "guided_json": schema}
    with server.http() as http:
        assert http.post("/v1/completions", json=body).status_code == 200
        assert http.get("/health").status_code == 200


@pytest.mark.parametrize(
    "schema",
    [
        {"allOf": [{"type": "string"}, {"maxLength": 3}]},  # became "{}" before
        {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a", "b"]},
        {"type": "string", "minLength": 5, "maxLength": 2},
        {"type": "array", "minItems": 3, "maxItems": 1},
        {"enum": []},
        {"const": "a", "enum": ["b"]},  # no value is both
        {"$ref": "#/$defs/s", "maxLength": 2, "$defs": {"s": {"minLength": 5}}},  # was dropped
        {"allOf": [{"minLength": 1}, {"maxLength": 3}]},  # was merged as objects: {}
        {"type": "string", "minLength": 5000},
        {"type": "array", "items": {"type": "integer"}, "minItems": 5000},
    ],
)
def test_schemas_a_grammar_cannot_honour_are_400(server: Server, schema: dict) -> None:
    body = {"model": MODEL, "prompt": "JSON:", "max_tokens": 5, "guided_json": schema}
    with server.http() as http:
        resp = http.post("/v1/completions", json=body)
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["param"] == "guided_json"
