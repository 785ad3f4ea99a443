"""Grammars as llama.cpp itself reads them: which texts a parsed grammar lets through."""

from __future__ import annotations

import ctypes
import math

import llama_cpp
import pytest

from roost.chat.constraints import schema_grammar
from roost.errors import GrammarError
from roost.llama.gbnf import alternatives, regex_grammar
from roost.llama.grammar import Grammar
from roost.llama.model import LlamaModel
from roost.llama.regex_gbnf import MAX_REPEAT


def _allows(sampler: object, token: int) -> bool:
    data = (llama_cpp.llama_token_data * 1)(llama_cpp.llama_token_data(token, 0.0, 0.0))
    candidates = llama_cpp.llama_token_data_array(data, 1, -1, False)
    llama_cpp.llama_sampler_apply(sampler, ctypes.byref(candidates))
    return not math.isinf(data[0].logit)


def _accepts(model: LlamaModel, grammar: Grammar, text: str) -> bool:
    """Whether llama.cpp's grammar sampler lets `text` through token by token, then ends."""
    sampler = grammar.sampler()
    try:
        for token in model.tokenize(text, add_special=False, parse_special=False):
            if not _allows(sampler, token):
                return False
            llama_cpp.llama_sampler_accept(sampler, token)
        return _allows(sampler, min(model.eog_ids))
    finally:
        llama_cpp.llama_sampler_free(sampler)


VALUES = ["a", "ab", "abc", "abd", "b", "x y", 'q"uote', "back\\slash", "1", "12", "ü"]


def test_alternatives_accept_exactly_their_texts(local_model: LlamaModel) -> None:
    grammar = Grammar(local_model, f"root ::= {alternatives(VALUES)}\n")
    assert all(_accepts(local_model, grammar, text) for text in VALUES)
    for other in ["", "abcd", "ac", "c", "x", "1 2", "123", "u", "back"]:
        assert not _accepts(local_model, grammar, other), other


def test_alternatives_share_prefixes() -> None:
    # one parse stack per open branch: a shared prefix is written once
    assert alternatives(["ab", "a", "b"]) == '("a" ("b")? | "b")'
    assert alternatives(["value 10", "value 11"]) == '"value 1" ("0" | "1")'
    assert alternatives([""]) == '""'


def test_an_enum_is_a_prefix_tree(local_model: LlamaModel) -> None:
    values = [f"item number {i}" for i in range(1000)]
    text = schema_grammar({"enum": values})
    assert text.count("item number") == 1  # flat, every value was spelled out
    grammar = Grammar(local_model, text)
    assert _accepts(local_model, grammar, '"item number 417"')
    assert not _accepts(local_model, grammar, '"item number 1000"')


def test_length_bounded_strings_share_one_rule(local_model: LlamaModel) -> None:
    # the converter spelled out maxLength nested groups for every property: 6 MB for 800
    properties = {f"p{i}": {"type": "string", "maxLength": 1000} for i in range(200)}
    text = schema_grammar({"type": "object", "properties": properties, "required": ["p0"]})
    assert len(text) < 100_000  # 1.6 MB before
    short = schema_grammar({"type": "string", "minLength": 2, "maxLength": 3})
    grammar = Grammar(local_model, short)
    assert [_accepts(local_model, grammar, f'"{"x" * n}"') for n in range(5)] == [
        False,
        False,
        True,
        True,
        False,
    ]
    # a minLength alone is capped like any string without maxLength (it was unbounded)
    longer = Grammar(local_model, schema_grammar({"type": "string", "minLength": 2}))
    assert _accepts(local_model, longer, f'"{"x" * 256}"')
    assert not _accepts(local_model, longer, f'"{"x" * 257}"')


def test_repetition_bounds_stay_exact(local_model: LlamaModel) -> None:
    # llama.cpp reads a bound above 2000 as none, and nested groups that deep overflowed its
    # parser's stack (a maxLength of 20000 killed the server): larger maxima are lowered to
    # MAX_REPEAT, where what the grammar allows still validates, and larger minima refused
    for text, quote in (
        (schema_grammar({"type": "string", "maxLength": 20000}), '"'),
        (regex_grammar("a{0,3000}"), ""),
    ):
        grammar = Grammar(local_model, text)
        assert _accepts(local_model, grammar, quote + "a" * MAX_REPEAT + quote)
        assert not _accepts(local_model, grammar, quote + "a" * (MAX_REPEAT + 1) + quote)
    for make in (
        lambda: schema_grammar({"type": "string", "minLength": MAX_REPEAT + 1}),
        lambda: schema_grammar({"type": "array", "minItems": MAX_REPEAT + 1}),
        lambda: regex_grammar("a{3000}"),
        lambda: regex_grammar("(" * 3000 + "a" + ")" * 3000),
    ):
        with pytest.raises(GrammarError):
            make()
    items = schema_grammar({"type": "array", "items": {"enum": [1]}, "maxItems": 5000})
    grammar = Grammar(local_model, items)
    assert _accepts(local_model, grammar, "[" + ", ".join(["1"] * MAX_REPEAT) + "]")
    assert not _accepts(local_model, grammar, "[" + ", ".join(["1"] * (MAX_REPEAT + 1)) + "]")


def test_llama_cpp_rejects_a_broken_grammar(local_model: LlamaModel) -> None:
    with pytest.raises(GrammarError):
        Grammar(local_model, "root ::= ( unclosed\n")
