"""JSON schemas in the form a grammar enforces whole (plain Python, no backend).

Structured outputs promise that the output validates. A grammar converter drops keywords it
cannot express, so a schema is first rewritten into an equivalent one it can (listed values
narrowed, keywords beside a union moved into its branches, small integer ranges as enums), and
refused with GrammarError where a rule would be lost."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import jsonschema
import referencing.exceptions
from jsonschema import Draft202012Validator

from roost.errors import GrammarError
from roost.llama.regex_gbnf import MAX_REPEAT

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
