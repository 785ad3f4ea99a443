"""JSON schema → GBNF through llama-cpp-python's converter, and grammar validation."""

from __future__ import annotations

import json
from collections import Counter
from itertools import groupby
from pathlib import Path
from typing import Any

import jsonschema
import llama_cpp
import referencing.exceptions
from jsonschema import Draft202012Validator
from llama_cpp.llama_grammar import (
    PRIMITIVE_RULES,
    RESERVED_NAMES,
    SchemaConverter,
    _build_repetition,
)

from roost.llama.model import LlamaModel
from roost.llama.regex_gbnf import MAX_REPEAT, RegexError, regex_expression, regex_to_gbnf

_ROOST_DIR = Path(__file__).resolve().parent.parent  # the roost package


class GrammarError(ValueError):
    """A schema that cannot become a grammar, or a grammar llama.cpp rejects."""


# Keywords the converter would silently drop: a grammar built from them would not guarantee
# that the output validates, so such schemas are refused instead.
_IGNORED = frozenset(
    {
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "multipleOf",
        "uniqueItems",
        "minProperties",
        "maxProperties",
        "not",
        "if",
        "then",
        "else",
        "patternProperties",
        "dependentRequired",
        "dependentSchemas",
        "contains",
        "minContains",
        "maxContains",
        "propertyNames",
        "unevaluatedProperties",
        "unevaluatedItems",
    }
)
_FORMATS = frozenset({"date", "time", "date-time", "uuid"})
_SUBSCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SUBSCHEMA_MAPS = ("properties", "$defs", "definitions")
_ANNOTATIONS = frozenset({"description", "title", "default", "examples", "deprecated"})
# JSON Schema's assertions and applicators; anything else (annotations, `$defs`, OpenAPI's
# `discriminator`, `x-` extensions) constrains no value
_VALIDATION = frozenset(
    {
        "type", "enum", "const", "multipleOf", "maximum", "exclusiveMaximum", "minimum",
        "exclusiveMinimum", "maxLength", "minLength", "pattern", "format", "maxItems",
        "minItems", "uniqueItems", "maxContains", "minContains", "contains", "maxProperties",
        "minProperties", "required", "dependentRequired", "properties", "patternProperties",
        "additionalProperties", "propertyNames", "dependentSchemas", "items", "prefixItems",
        "additionalItems", "unevaluatedItems", "unevaluatedProperties", "allOf", "anyOf",
        "oneOf", "not", "if", "then", "else", "$ref",
    }
)  # fmt: skip
# keywords whose meaning depends on others in the same schema object: not moved across objects
_CONTEXTUAL = frozenset(
    {
        "additionalProperties",
        "patternProperties",
        "unevaluatedProperties",
        "items",
        "prefixItems",
        "unevaluatedItems",
        "additionalItems",
        "$ref",
    }
)
_REPEAT_BOUNDS = frozenset({"minLength", "maxLength", "minItems", "maxItems"})
MAX_ENUMERATED_RANGE = 256
MAX_FREE_STRING = 256  # characters of a string whose schema sets no maxLength
_BOUNDED_STRING = f'string ::= "\\"" char{{0,{MAX_FREE_STRING}}} "\\"" space'
_JSON_CHAR = (
    r'char ::= [^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F] [0-9a-fA-F] '
    r"[0-9a-fA-F] [0-9a-fA-F])"
)


def enforceable(schema: Any, where: str = "", root: Draft202012Validator | None = None) -> Any:
    """The schema in a form the converter enforces whole: listed values narrowed by the rest
    of the schema, keywords beside a union moved into its branches, small integer ranges as
    enums; GrammarError if any rule would be lost. `root`: the whole document's validator."""
    if not isinstance(schema, dict):
        return schema
    if root is None:
        root = Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)
    try:
        allowed = _allowed(schema, root)
    except (jsonschema.exceptions.RefResolutionError, referencing.exceptions.Unresolvable) as exc:
        raise GrammarError(f"cannot check the listed values at '{where or '/'}': {exc}") from exc
    if allowed is not None:
        if not allowed:
            raise GrammarError(f"no listed value satisfies the schema at '{where or '/'}'")
        return {"enum": allowed}  # written alone, whatever else the schema says
    schema = _into_branches(schema, where)
    # the converter drops every keyword on a type list: one branch per type keeps them
    if isinstance(schema.get("type"), list) and "anyOf" not in schema:
        rest = {k: v for k, v in schema.items() if k != "type"}
        schema = {"anyOf": [{**rest, "type": t} for t in schema["type"]]}
    schema = _single_all_of(_integer_range_as_enum(schema), where)
    schema = _bounded_repeats(schema, where)
    _check_satisfiable(schema, where)
    lost = sorted(_IGNORED & schema.keys())
    if schema.get("format") not in (None, *_FORMATS):
        lost.append(f"format {schema['format']}")
    if "pattern" in schema:  # the converter then builds the string from the pattern alone
        lost += sorted({"minLength", "maxLength", "format"} & schema.keys())
    if lost:
        raise GrammarError(f"cannot enforce {', '.join(lost)} at '{where or '/'}'")
    out = dict(schema)
    for key in _SUBSCHEMA_LISTS:
        if isinstance(schema.get(key), list):
            out[key] = [
                enforceable(s, f"{where}/{key}/{i}", root) for i, s in enumerate(schema[key])
            ]
    for key in _SUBSCHEMA_MAPS:
        if isinstance(schema.get(key), dict):
            out[key] = {
                k: enforceable(s, f"{where}/{key}/{k}", root) for k, s in schema[key].items()
            }
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            out[key] = enforceable(schema[key], f"{where}/{key}", root)
    return out


def _allowed(schema: dict[str, Any], root: Draft202012Validator) -> list[Any] | None:
    """The values a schema lists (its enum or const, an allOf part's, or those of a oneOf or
    anyOf whose branches all list values) that the whole schema accepts; None if it lists none.
    Membership is settled by hashing, so jsonschema only checks the other keywords: checking a
    50,000-value enum against itself took minutes."""
    if isinstance(schema.get("enum"), list) or "const" in schema:
        listing = "enum" if "enum" in schema else "const"
        values = list(schema["enum"]) if listing == "enum" else [schema["const"]]
        return _accepted(values, {k: v for k, v in schema.items() if k != listing}, root)
    parts = schema.get("allOf")
    for i, part in enumerate(parts if isinstance(parts, list) else []):
        found = _allowed(part, root) if isinstance(part, dict) else None
        if found is not None:
            rest = {k: v for k, v in schema.items() if k != "allOf"}
            if others := parts[:i] + parts[i + 1 :]:
                rest["allOf"] = others
            return _accepted(found, rest, root)
    for key in ("oneOf", "anyOf"):
        branches = schema.get(key)
        if not isinstance(branches, list) or not branches:
            continue
        each = [_allowed(b, root) if isinstance(b, dict) else None for b in branches]
        if all(values is not None for values in each):
            counts = Counter(_value_key(v) for values in each for v in _unique(values or []))
            union = _unique([v for values in each for v in values or []])
            wanted = [v for v in union if key == "anyOf" or counts[_value_key(v)] == 1]
            return _accepted(wanted, {k: v for k, v in schema.items() if k != key}, root)
    return None


def _accepted(values: list[Any], rest: dict[str, Any], root: Draft202012Validator) -> list[Any]:
    values = _unique(values)
    if not rest.keys() & _VALIDATION:
        return values
    check = root.evolve(schema=rest)  # its $refs resolve against the whole document
    return [value for value in values if check.is_valid(value)]


def _unique(values: list[Any]) -> list[Any]:
    return list({_value_key(value): value for value in values}.values())


def _value_key(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def _into_branches(schema: dict[str, Any], where: str) -> dict[str, Any]:
    """The converter writes a `$ref`, `anyOf` or `oneOf` alone, dropping every keyword beside
    it. Beside a union they move into each branch (A or B, and S, is A and S, or B and S),
    where keys do not collide and no keyword depends on its neighbours; otherwise a 400."""
    union = next((key for key in ("$ref", "anyOf", "oneOf") if key in schema), None)
    if union is None:
        return schema
    beside = {k: v for k, v in schema.items() if k != union and k in _VALIDATION}
    if not beside:
        return schema
    branches = schema[union]
    mergeable = union != "$ref" and all(  # a key both sides hold must agree
        isinstance(b, dict) and all(b[k] == v for k, v in beside.items() if k in b)
        for b in branches
    )
    contextual = {k for b in branches if isinstance(b, dict) for k in b} | beside.keys()
    if not mergeable or contextual & _CONTEXTUAL:
        raise GrammarError(
            f"cannot enforce {', '.join(sorted(beside))} beside {union} at '{where or '/'}'"
        )
    rest = {k: v for k, v in schema.items() if k not in beside}
    return {**rest, union: [{**beside, **b} for b in branches]}


def _integer_range_as_enum(schema: dict[str, Any]) -> dict[str, Any]:
    if schema.get("type") != "integer":
        return schema
    lows = [schema.get("minimum"), _shifted(schema.get("exclusiveMinimum"), 1)]
    highs = [schema.get("maximum"), _shifted(schema.get("exclusiveMaximum"), -1)]
    given = [b for b in (*lows, *highs) if b is not None]
    if not all(isinstance(b, int) and not isinstance(b, bool) for b in given):
        return schema  # a fractional bound: left for enforceable() to refuse
    low = max((b for b in lows if b is not None), default=None)
    high = min((b for b in highs if b is not None), default=None)
    if low is None or high is None or high - low >= MAX_ENUMERATED_RANGE:
        return schema
    if low > high:
        raise GrammarError(f"no integer lies in {low}..{high}")
    bounds = {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "type"}
    rest = {k: v for k, v in schema.items() if k not in bounds}
    return {**rest, "enum": list(range(low, high + 1))}


def _shifted(bound: Any, step: int) -> Any:
    """An exclusive integer bound as the inclusive one (other values pass through)."""
    return bound + step if isinstance(bound, int) and not isinstance(bound, bool) else bound


def _single_all_of(schema: dict[str, Any], where: str) -> dict[str, Any]:
    """The converter merges `allOf` as object properties only: inline the common one-schema
    wrapper (`{"allOf": [{"$ref": ...}], "description": ...}`) and refuse the rest."""
    parts = schema.get("allOf")
    if not isinstance(parts, list):
        return schema
    rest = {k: v for k, v in schema.items() if k != "allOf"}
    if len(parts) == 1 and isinstance(parts[0], dict) and not set(rest) - _ANNOTATIONS:
        return {**rest, **parts[0]}
    if all(isinstance(p, dict) and _is_object_schema(p) for p in parts):
        return schema  # object schemas: the converter merges their properties
    raise GrammarError(f"cannot enforce allOf of non-object schemas at '{where or '/'}'")


def _bounded_repeats(schema: dict[str, Any], where: str) -> dict[str, Any]:
    """maxLength / maxItems above MAX_REPEAT lowered to it (a shorter value still validates);
    a larger minimum cannot be enforced (see regex_gbnf.MAX_REPEAT)."""
    out = schema = {  # 2.0 is a valid minLength too; the converter multiplies with it
        k: int(v) if k in _REPEAT_BOUNDS and isinstance(v, float) and v.is_integer() else v
        for k, v in schema.items()
    }
    for low, high in (("minLength", "maxLength"), ("minItems", "maxItems")):
        if isinstance(schema.get(low), int) and schema[low] > MAX_REPEAT:
            raise GrammarError(f"cannot enforce {low} above {MAX_REPEAT} at '{where or '/'}'")
        if isinstance(schema.get(high), int) and schema[high] > MAX_REPEAT:
            out = {**out, high: MAX_REPEAT}
    return out


def _is_object_schema(schema: dict[str, Any]) -> bool:
    if "type" in schema:
        return bool(schema["type"] == "object")
    return bool({"properties", "required", "additionalProperties"} & schema.keys())


def _check_satisfiable(schema: dict[str, Any], where: str) -> None:
    """Bounds no value can meet, and required names without a schema, which the converter
    would drop (its output would then fail the schema)."""
    for low, high in (("minLength", "maxLength"), ("minItems", "maxItems")):
        bounds = (schema.get(low), schema.get(high))
        if all(isinstance(b, int) for b in bounds) and bounds[0] > bounds[1]:
            raise GrammarError(f"{low} exceeds {high} at '{where or '/'}'")
    properties = schema.get("properties")
    missing = [
        name
        for name in schema.get("required") or []
        if isinstance(properties, dict) and name not in properties
    ]
    if missing:
        raise GrammarError(f"required {missing} have no schema in properties at '{where or '/'}'")


class _Converter(SchemaConverter):  # type: ignore[misc]
    """The converter with string `pattern`s translated by regex_gbnf (its own regex code keeps
    escapes such as `\\d` inside GBNF literals, which llama.cpp rejects), and two rules it
    writes in a form whose cost grows with the schema: enums and length-bounded strings."""

    def visit(self, schema: dict[str, Any], name: str) -> str:
        rule_name = name + "-" if name in RESERVED_NAMES else name or "root"
        # the keys its visit() checks before these two branches, which must keep priority
        if {"$ref", "anyOf", "oneOf", "const"} & schema.keys() or isinstance(
            schema.get("type"), list
        ):
            return str(super().visit(schema, name))
        if "enum" in schema:  # flat, n values are n parse stacks at every token
            texts = [json.dumps(value) for value in schema["enum"]]
            return str(self._add_rule(rule_name, alternatives(texts)))
        if (
            schema.get("type") == "string"
            and {"minLength", "maxLength"} & schema.keys()
            and not {"pattern", "format"} & schema.keys()
        ):  # its own rule spells out maxLength nested groups for every such property
            low = schema.get("minLength", 0)
            high = schema.get("maxLength", max(low, MAX_FREE_STRING))  # capped, as `string` is
            char = self._add_primitive("char", PRIMITIVE_RULES["char"])
            body = f'"\\"" {_build_repetition(char, low, high)} "\\"" space'
            shared = self._add_rule(f"string-{low}-{high}", body)
            return str(self._add_rule(rule_name, shared))
        return str(super().visit(schema, name))

    def _format_literal(self, text: str) -> str:
        # its own escapes only quotes and line breaks: a backslash in an enum, const or
        # property name ("a\\b" as JSON) became a GBNF escape and the output other JSON
        return literal(text)

    def _visit_pattern(self, pattern: str, name: str) -> str:
        try:
            body = regex_expression(pattern, json_string=True)
        except RegexError as exc:
            raise GrammarError(f"pattern {pattern!r}: {exc}") from exc
        return str(self._add_rule(name, f'"\\"" {body} "\\"" space'))


def schema_rules(schemas: dict[str, dict[str, Any]]) -> tuple[str, dict[str, str]]:
    """GBNF rules for several JSON schemas in one namespace: (rules text, key → rule name)."""
    converter = _Converter(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)
    names: dict[str, str] = {}
    try:
        for i, (key, schema) in enumerate(schemas.items()):
            resolved = converter.resolve_refs(enforceable(schema), f"schema-{i}")
            names[key] = converter.visit(resolved, f"schema{i}")
    except GrammarError:
        raise
    except Exception as exc:  # the converter raises many kinds for unsupported schemas
        if _is_roosts_bug(exc):  # not the schema's fault: a 500 with a log line, not a 400
            raise
        raise GrammarError(f"unsupported JSON schema: {exc}") from exc
    return _strict_strings(converter.format_grammar()), names


def _is_roosts_bug(exc: Exception) -> bool:
    """Raised by roost's own code (which says what it refuses with GrammarError), rather than
    by the converter or jsonschema refusing a schema; too deep a schema is the client's."""
    if isinstance(exc, RecursionError):
        return False
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and Path(tb.tb_frame.f_code.co_filename).is_relative_to(_ROOST_DIR)


def _strict_strings(rules: str) -> str:
    # this converter's `char` admits raw control characters, which JSON forbids in strings;
    # and an unbounded string lets a small model ramble until max_tokens cuts the JSON short
    replacements = {"char ::= ": _JSON_CHAR, "string ::= ": _BOUNDED_STRING}
    lines = rules.split("\n")
    for i, line in enumerate(lines):
        for head, rule in replacements.items():
            if line.startswith(head):
                lines[i] = rule
    return "\n".join(lines)


def schema_grammar(schema: dict[str, Any]) -> str:
    """A grammar whose only outputs are JSON documents valid against `schema`."""
    rules, names = schema_rules({"doc": schema})
    return f"root ::= {names['doc']}\n{rules}\n"


def regex_grammar(pattern: str) -> str:
    """A grammar for raw text matching a regular expression (anchored at both ends)."""
    try:
        return regex_to_gbnf(pattern)
    except RegexError as exc:
        raise GrammarError(str(exc)) from exc


def literal(text: str) -> str:
    """A GBNF string literal."""
    if "\x00" in text:  # the grammar reaches llama.cpp as a C string
        raise GrammarError("text with a NUL character cannot be enforced")
    escaped = (
        text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    )
    return f'"{escaped}"'


def alternatives(texts: list[str]) -> str:
    """A GBNF expression matching exactly these texts, written as a prefix tree: llama.cpp keeps
    one parse stack per open alternative and checks every vocabulary token against each, so a
    flat list of 1,000 values cost 0.3 s per token; shared prefixes keep a few open at a time."""
    if not texts:
        raise GrammarError("an empty enum or choice list allows no output")
    try:
        return _prefix_tree(sorted(set(texts)))
    except RecursionError:  # values nested thousands deep ("a", "aa", "aaa", ...): flat
        return " | ".join(literal(text) for text in texts)


def _prefix_tree(suffixes: list[str]) -> str:
    """`suffixes`: sorted and distinct, so an empty one comes first."""
    optional = suffixes[0] == ""
    branches = []
    for _, group in groupby(suffixes[optional:], key=lambda text: text[0]):
        members = list(group)  # sorted: what the first and last share, all share
        first, last = members[0], members[-1]
        size = next(
            (i for i, (a, b) in enumerate(zip(first, last, strict=False)) if a != b), len(first)
        )
        common = first[:size]
        tails = [text[len(common) :] for text in members]
        head = literal(common)
        branches.append(head if tails == [""] else f"{head} {_prefix_tree(tails)}")
    body = " | ".join(branches)
    if not branches:  # the empty text alone
        return '""'
    if optional:
        return f"({body})?"
    return body if len(branches) == 1 else f"({body})"


class Grammar:
    """A GBNF grammar parsed once by llama.cpp. Each sequence's sampler gets a copy: cloning
    takes microseconds where parsing a large grammar takes seconds, so the engine thread, which
    every running sequence waits on, never parses."""

    def __init__(self, model: LlamaModel, text: str) -> None:
        self._ptr = llama_cpp.llama_sampler_init_grammar(model.vocab, text.encode(), b"root")
        if not self._ptr:  # llama.cpp returns NULL for a grammar it rejects
            raise GrammarError("the generated grammar was rejected by llama.cpp")

    def sampler(self) -> llama_cpp.llama_sampler_p:
        """A fresh grammar sampler, owned by the caller."""
        copy = llama_cpp.llama_sampler_clone(self._ptr)
        if not copy:
            raise GrammarError("llama.cpp could not copy the grammar")
        return copy

    def __del__(self) -> None:
        if getattr(self, "_ptr", None):
            llama_cpp.llama_sampler_free(self._ptr)
            self._ptr = None
