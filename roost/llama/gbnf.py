"""GBNF, the llama backend's constraint language: JSON-schema rules through llama-cpp-python's
converter, literals, prefix-tree alternatives and regular expressions (regex_gbnf.py)."""

from __future__ import annotations

import json
from collections.abc import Callable
from itertools import groupby
from pathlib import Path
from typing import Any

from llama_cpp.llama_grammar import (
    PRIMITIVE_RULES,
    RESERVED_NAMES,
    SchemaConverter,
    _build_repetition,
)

from roost.errors import GrammarError
from roost.llama.regex_gbnf import RegexError, regex_expression, regex_to_gbnf

_ROOST_DIR = Path(__file__).resolve().parent.parent  # the roost package
MAX_FREE_STRING = 256  # characters of a string whose schema sets no maxLength
_BOUNDED_STRING = f'string ::= "\\"" char{{0,{MAX_FREE_STRING}}} "\\"" space'
_JSON_CHAR = (
    r'char ::= [^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F] [0-9a-fA-F] '
    r"[0-9a-fA-F] [0-9a-fA-F])"
)


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


def schema_rules(
    schemas: dict[str, dict[str, Any]], prepare: Callable[[Any], Any]
) -> tuple[str, dict[str, str]]:
    """GBNF rules for several JSON schemas in one namespace: (rules text, key → rule name).
    `prepare` rewrites each schema into one the converter enforces whole (chat/schema.py)."""
    converter = _Converter(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)
    names: dict[str, str] = {}
    try:
        for i, (key, schema) in enumerate(schemas.items()):
            resolved = converter.resolve_refs(prepare(schema), f"schema-{i}")
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
