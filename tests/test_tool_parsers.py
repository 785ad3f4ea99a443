"""Tool-call parsers and the streaming splitter, on recorded model-style outputs (no server)."""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from typing import Any

import pytest

from roost.chat.tool_stream import ToolCallStream
from roost.chat.tools import (
    PARSERS,
    ParsedOutput,
    ToolCallParser,
    find_marker,
    parser_for_template,
)


def _parse(parser: ToolCallParser, text: str, names: set[str] | None = None) -> ParsedOutput:
    """A whole output: content stripped (None if empty) and the calls."""
    content, calls = parser.split(text, names)
    return ParsedOutput(content.strip() or None, calls)


@dataclass(frozen=True)
class Case:
    """A recorded output, the calls it holds as (name, arguments), and its expected content."""

    id: str
    family: str
    text: str
    calls: tuple[tuple[str, dict[str, Any]], ...]
    content: str | None


PARIS = ("get_weather", {"city": "Paris", "unit": "celsius"})
TOKYO = ("get_weather", {"city": "Tokyo", "unit": "celsius"})
WEATHER_PARIS = '{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}'
WEATHER_TOKYO = '{"name": "get_weather", "arguments": {"city": "Tokyo", "unit": "celsius"}}'

HERMES = [
    Case("single", "hermes", f"<tool_call>\n{WEATHER_PARIS}\n</tool_call>", (PARIS,), None),
    Case(
        "prose_two_calls",
        "hermes",
        "I'll check both cities for you.\n"
        f"<tool_call>\n{WEATHER_PARIS}\n</tool_call>\n<tool_call>\n{WEATHER_TOKYO}\n</tool_call>",
        (PARIS, TOKYO),
        "I'll check both cities for you.",
    ),
    Case(
        "missing_close",
        "hermes",
        '<tool_call>\n{"name": "search", "arguments": {"query": "roost llama.cpp"}}',
        (("search", {"query": "roost llama.cpp"}),),
        None,
    ),
    Case(
        "string_arguments_tight",
        "hermes",
        '<tool_call>{"name":"add","arguments":"{\\"a\\": 2, \\"b\\": 3}"}</tool_call>',
        (("add", {"a": 2, "b": 3}),),
        None,
    ),
    Case(
        "fenced_parameters",
        "hermes",
        '<tool_call>\n```json\n{"name": "plot", "parameters": {"xs": [1, 2.5], "title": null}}'
        "\n```\n</tool_call>",
        (("plot", {"xs": [1, 2.5], "title": None}),),
        None,
    ),
    Case(
        "trailing_content_unicode",
        "hermes",
        '<tool_call>  {"name": "get_weather", "arguments": {"city": "Zürich"}}  </tool_call>'
        "\nI'm looking it up — one moment.",
        (("get_weather", {"city": "Zürich"}),),
        "I'm looking it up — one moment.",
    ),
    Case(
        "malformed_json",
        "hermes",
        'Sure.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}\n</tool_call>',
        (),
        'Sure.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}\n</tool_call>',
    ),
    Case(
        "arguments_not_object",
        "hermes",
        '<tool_call>{"name": "get_weather", "arguments": "Paris"}</tool_call>',
        (),
        '<tool_call>{"name": "get_weather", "arguments": "Paris"}</tool_call>',
    ),
    Case(
        "no_name",
        "hermes",
        '<tool_call>\n{"arguments": {"city": "Paris"}}\n</tool_call>',
        (),
        '<tool_call>\n{"arguments": {"city": "Paris"}}\n</tool_call>',
    ),
    Case(
        "valid_then_broken",
        "hermes",
        f"<tool_call>\n{WEATHER_PARIS}\n</tool_call>\n<tool_call>\n{{'name': 'x'}}\n</tool_call>",
        (PARIS,),
        "<tool_call>\n{'name': 'x'}\n</tool_call>",
    ),
    Case(
        "angle_brackets_only",
        "hermes",
        "If a < b then use <tool> or <tool_ca and </tool_call> literally.",
        (),
        "If a < b then use <tool> or <tool_ca and </tool_call> literally.",
    ),
    Case(  # max_tokens cut the closing tag: its start is no content
        "cut_close",
        "hermes",
        f"<tool_call>\n{WEATHER_PARIS}\n</tool_c",
        (PARIS,),
        None,
    ),
]

LLAMA3 = [
    Case(
        "python_tag",
        "llama3_json",
        '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris", "unit": "celsius"}}',
        (PARIS,),
        None,
    ),
    Case(
        "bare_object",
        "llama3_json",
        '{"name": "get_weather", "parameters": {"city": "Paris", "unit": "celsius"}}',
        (PARIS,),
        None,
    ),
    Case(
        "prose_then_object",
        "llama3_json",
        'Let me look that up.\n\n{"name": "search", "parameters": {"query": "tallest tower"}}',
        (("search", {"query": "tallest tower"}),),
        "Let me look that up.",
    ),
    Case(
        "semicolon_separated",
        "llama3_json",
        '{"name": "get_time", "parameters": {}}; {"name": "add", "arguments": {"a": 1, "b": 2}}',
        (("get_time", {}), ("add", {"a": 1, "b": 2})),
        None,
    ),
    Case(
        "newline_tags",
        "llama3_json",
        f"<|python_tag|>{WEATHER_PARIS}\n<|python_tag|>{WEATHER_TOKYO}\n",
        (PARIS, TOKYO),
        None,
    ),
    Case(
        "nested_non_call",
        "llama3_json",
        'The config is {"debug": true, "job": {"name": "x", "parameters": {}}}.',
        (),
        'The config is {"debug": true, "job": {"name": "x", "parameters": {}}}.',
    ),
    Case(
        "braces_in_prose",
        "llama3_json",
        "In Python, use {} for dicts and {1, 2} for sets.",
        (),
        "In Python, use {} for dicts and {1, 2} for sets.",
    ),
    Case(
        "truncated",
        "llama3_json",
        '{"name": "get_weather", "parameters": {"city": "Paris"}',
        (),
        '{"name": "get_weather", "parameters": {"city": "Paris"}',
    ),
    Case(
        "builtin_tool_syntax",
        "llama3_json",
        '<|python_tag|>brave_search.call(query="weather in Paris")',
        (),
        '<|python_tag|>brave_search.call(query="weather in Paris")',
    ),
]

MISTRAL = [
    Case("list", "mistral", f"[TOOL_CALLS][{WEATHER_PARIS}]", (PARIS,), None),
    Case(
        "list_with_ids_and_space",
        "mistral",
        '[TOOL_CALLS] [{"name": "a", "arguments": {"x": 1}, "id": "abc123xyz"}, '
        '{"name": "b", "arguments": {}, "id": "def456uvw"}]',
        (("a", {"x": 1}), ("b", {})),
        None,
    ),
    Case(
        "named_args",
        "mistral",
        '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris", "unit": "celsius"}',
        (PARIS,),
        None,
    ),
    Case(
        "named_args_twice",
        "mistral",
        '[TOOL_CALLS]a[ARGS]{"x": 1}[TOOL_CALLS]b[ARGS]{}',
        (("a", {"x": 1}), ("b", {})),
        None,
    ),
    Case(
        "call_id",
        "mistral",
        '[TOOL_CALLS]a[CALL_ID]k3J9a0xQz[ARGS]{"x": 1}',
        (("a", {"x": 1}),),
        None,
    ),
    Case(
        "prose_before",
        "mistral",
        f"Checking the forecast.[TOOL_CALLS][{WEATHER_PARIS}, {WEATHER_TOKYO}]",
        (PARIS, TOKYO),
        "Checking the forecast.",
    ),
    Case(
        "truncated",
        "mistral",
        '[TOOL_CALLS][{"name": "a", "arguments": {"x": 1}',
        (),
        '[TOOL_CALLS][{"name": "a", "arguments": {"x": 1}',
    ),
    Case(
        "brackets_in_prose",
        "mistral",
        "See [1] and the [TOOL] notes [TOOL_CALL].",
        (),
        "See [1] and the [TOOL] notes [TOOL_CALL].",
    ),
]

GENERIC = [
    Case(
        "fenced",
        "json",
        f"Here is the call:\n```json\n{WEATHER_PARIS}\n```",
        (PARIS,),
        "Here is the call:",
    ),
    Case(
        "bare_list",
        "json",
        '[{"name": "a", "arguments": {}}, {"name": "b", "parameters": {"y": "z"}}]',
        (("a", {}), ("b", {"y": "z"})),
        None,
    ),
    Case(
        "wrapper",
        "json",
        '{"tool_calls": [{"name": "a", "arguments": {"x": 1}}]}',
        (("a", {"x": 1}),),
        None,
    ),
    Case(
        "openai_shape",
        "json",
        '{"tool_calls": [{"type": "function", "function": '
        '{"name": "a", "arguments": "{\\"x\\": 1}"}}]}',
        (("a", {"x": 1}),),
        None,
    ),
    Case(
        "inline",
        "json",
        'Calling now {"name": "a", "arguments": {"q": 1}} then done.',
        (("a", {"q": 1}),),
        "Calling now  then done.",
    ),
    Case(
        "python_fence",
        "json",
        'Example:\n```python\nprint({"name": "a", "arguments": {}})\n```\nThat prints a dict.',
        (),
        'Example:\n```python\nprint({"name": "a", "arguments": {}})\n```\nThat prints a dict.',
    ),
    Case(
        "nested_non_call",
        "json",
        '{"result": {"name": "a", "arguments": {}}}',
        (),
        '{"result": {"name": "a", "arguments": {}}}',
    ),
    Case("name_only", "json", '{"name": "Alice"}', (), '{"name": "Alice"}'),
    Case(
        "malformed_fenced",
        "json",
        '```json\n{"name": "a", "arguments": {\n```',
        (),
        '```json\n{"name": "a", "arguments": {\n```',
    ),
    Case(
        "markdown_link",
        "json",
        "See [the docs](https://example.com) and `code`.",
        (),
        "See [the docs](https://example.com) and `code`.",
    ),
]

CASES = HERMES + LLAMA3 + MISTRAL + GENERIC
CASE_IDS = [f"{case.family}-{case.id}" for case in CASES]


def _assert_calls(parsed: ParsedOutput, expected: tuple[tuple[str, dict[str, Any]], ...]) -> None:
    got = [(call.name, json.loads(call.arguments)) for call in parsed.tool_calls]
    assert got == list(expected)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_parse(case: Case) -> None:
    parsed = _parse(PARSERS[case.family], case.text)
    _assert_calls(parsed, case.calls)
    assert parsed.content == case.content


def test_call_ids_are_unique_and_openai_shaped() -> None:
    first = _parse(PARSERS["hermes"], HERMES[1].text).tool_calls
    again = _parse(PARSERS["hermes"], HERMES[1].text).tool_calls
    ids = [call.id for call in first + again]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"call_[0-9a-f]{24}", call_id) for call_id in ids)


def test_arguments_are_json_object_strings() -> None:
    for case in CASES:
        for call in _parse(PARSERS[case.family], case.text).tool_calls:
            assert isinstance(json.loads(call.arguments), dict)
    zurich = _parse(PARSERS["hermes"], HERMES[5].text).tool_calls[0]
    assert "Zürich" in zurich.arguments  # not \u-escaped


def test_registry_names() -> None:
    assert set(PARSERS) == {"hermes", "llama3_json", "mistral", "json"}
    assert all(name == parser.name for name, parser in PARSERS.items())


@pytest.mark.parametrize(
    ("template", "family"),
    [
        (
            "{%- if tools %}...<tool_call>\\n{{ tool_call | tojson }}\\n</tool_call>{% endif %}",
            "hermes",
        ),
        ("{%- if message.tool_calls %}[TOOL_CALLS][{%- for c in message.tool_calls %}", "mistral"),
        ("{%- if builtin_tools is defined %}{{- '<|python_tag|>' }}{% endif %}", "llama3_json"),
        ("<|start_header_id|>ipython<|end_header_id|>\\n\\n{{ message.content }}", "llama3_json"),
        ("{% for m in messages %}<|im_start|>{{ m.role }}\\n{{ m.content }}{% endfor %}", "hermes"),
        (None, "hermes"),
    ],
)
def test_parser_for_template(template: str | None, family: str) -> None:
    assert parser_for_template(template).name == family


def _stream(parser: ToolCallParser, text: str, sizes: list[int]) -> tuple[list[str], ParsedOutput]:
    stream = ToolCallStream(parser)
    outputs: list[str] = []
    pos = 0
    for size in sizes:
        outputs.append(stream.feed(text[pos : pos + size]))
        pos += size
    return outputs, stream.finish()


def _chunkings(text: str) -> list[list[int]]:
    rng = random.Random(1234)
    randomised = []
    for _ in range(5):
        sizes: list[int] = []
        while sum(sizes) < len(text):
            sizes.append(rng.randint(1, 9))
        randomised.append(sizes)
    return [[1] * len(text), [len(text)], *randomised]


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_stream_matches_parse(case: Case) -> None:
    parser = PARSERS[case.family]
    reference = _parse(parser, case.text)
    first_marker = find_marker(case.text, parser.start_markers)
    safe_end = len(case.text) if first_marker is None else first_marker
    for sizes in _chunkings(case.text):
        outputs, final = _stream(parser, case.text, sizes)
        emitted = ""
        for out in outputs:
            assert not any(marker in out for marker in parser.start_markers)
            emitted += out
            # Emitted text is always a prefix of what precedes the first marker: no marker, and no
            # piece of one, ever leaks before finish().
            assert len(emitted) <= safe_end
            assert case.text.startswith(emitted)
        assert ((emitted + (final.content or "")).strip() or None) == reference.content
        assert [(c.name, c.arguments) for c in final.tool_calls] == [
            (c.name, c.arguments) for c in reference.tool_calls
        ]


def test_stream_holds_back_a_marker_prefix() -> None:
    stream = ToolCallStream(PARSERS["hermes"])
    assert stream.feed("Hello <tool") == "Hello "
    assert stream.feed("_c") == ""
    assert stream.feed("all>\n{") == ""
    assert stream.feed('"name": "f", "arguments": {}}\n</tool_call>\n') == ""
    final = stream.finish()
    assert final.content is None
    assert [call.name for call in final.tool_calls] == ["f"]


def test_stream_releases_a_false_alarm() -> None:
    stream = ToolCallStream(PARSERS["hermes"])
    assert stream.feed("a <tool") == "a "
    assert stream.feed("s> b <") == "<tools> b "
    assert stream.finish() == ParsedOutput(content="<", tool_calls=[])


def test_stream_keeps_content_after_calls() -> None:
    stream = ToolCallStream(PARSERS["hermes"])
    text = f"Checking.\n<tool_call>\n{WEATHER_PARIS}\n</tool_call>\nDone, see above."
    assert stream.feed(text) == "Checking.\n"
    final = stream.finish()
    assert final.content == "\nDone, see above."
    _assert_calls(final, (PARIS,))


def test_stream_holds_white_space_before_a_call() -> None:
    stream = ToolCallStream(PARSERS["hermes"])
    assert stream.feed("\n") == ""
    assert stream.feed(f"<tool_call>\n{WEATHER_PARIS}\n</tool_call>") == ""
    final = stream.finish()
    assert final.content is None and [c.name for c in final.tool_calls] == ["get_weather"]
    prose = ToolCallStream(PARSERS["hermes"])
    assert prose.feed("\n ") == ""
    assert prose.feed("Hi <") == "\n Hi "  # held white space goes out with the first words


def test_stream_unparseable_buffer_becomes_content() -> None:
    stream = ToolCallStream(PARSERS["mistral"])
    text = '[TOOL_CALLS][{"name": "a", "arguments": {"x": 1}'
    assert stream.feed(text) == ""
    assert stream.finish() == ParsedOutput(content=text, tool_calls=[])


def test_a_call_of_a_function_not_on_offer_stays_content() -> None:
    text = f"<tool_call>\n{WEATHER_PARIS}\n</tool_call>"
    stream = ToolCallStream(PARSERS["hermes"], names={"get_time"})
    assert stream.feed(text) == ""
    assert stream.finish() == ParsedOutput(content=text, tool_calls=[])
    # one unknown name in a run keeps the whole run as content, as a malformed entry does
    run = '[TOOL_CALLS][{"name": "a", "arguments": {}}, {"name": "b", "arguments": {}}]'
    assert _parse(PARSERS["mistral"], run, names={"a"}).tool_calls == []
    assert len(_parse(PARSERS["mistral"], run, names={"a", "b"}).tool_calls) == 2
