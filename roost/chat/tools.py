"""Parse a chat model's raw output text into OpenAI tool calls, one registry entry per family."""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, Protocol

HERMES_OPEN = "<tool_call>"
HERMES_CLOSE = "</tool_call>"
PYTHON_TAG = "<|python_tag|>"
MISTRAL_TAG = "[TOOL_CALLS]"
FENCE = "```"

_ARG_KEYS = ("arguments", "parameters")
_DECODER = json.JSONDecoder()
_WS = re.compile(r"\s*")
# Between calls of one run: Llama writes `;` or newlines, others commas, some repeat the tag.
_RUN_SEP = re.compile(r"(?:\s|[;,]|<\|python_tag\|>)*")
_FENCE_OPEN = re.compile(r"```[\w-]*\s*")
# Mistral v7+ writes `name[ARGS]{...}`, v11 may add `[CALL_ID]id` before [ARGS].
_MISTRAL_NAMED = re.compile(r"\s*([\w.\-]+)\s*(?:\[CALL_ID\]\s*\w+\s*)?\[ARGS\]")


@dataclass(frozen=True)
class ToolCall:
    """One function call; `arguments` is a JSON object serialised as a string."""

    name: str
    arguments: str
    id: str


@dataclass(frozen=True)
class ParsedOutput:
    """Model output split into user-visible content (stripped, None if empty) and tool calls."""

    content: str | None
    tool_calls: list[ToolCall]


class ToolCallParser(Protocol):
    """A tool-call family: calls may only start where one of `start_markers` occurs."""

    # Read-only properties so frozen dataclasses satisfy the protocol too.
    @property
    def name(self) -> str: ...

    @property
    def start_markers(self) -> tuple[str, ...]: ...

    def split(self, text: str, names: Collection[str] | None = None) -> tuple[str, list[ToolCall]]:
        """Content verbatim (not stripped) and the calls found in `text`; with `names`, a call
        of any other function is not a call: its text stays content."""
        ...


# (end of the consumed span, calls found); no calls means "this span is content, skip it".
Match = tuple[int, list[ToolCall]]


def new_call_id() -> str:
    return "call_" + secrets.token_hex(12)


def find_marker(text: str, markers: tuple[str, ...], start: int = 0) -> int | None:
    """Earliest index >= start where any marker begins."""
    found = [i for i in (text.find(m, start) for m in markers) if i >= 0]
    return min(found, default=None)


@dataclass(frozen=True)
class MarkerParser:
    """Tries `match_at` only at marker positions, so parsing the suffix that starts at the first
    marker yields the same calls and the same content after it (ToolCallStream relies on this)."""

    name: str
    start_markers: tuple[str, ...]
    match_at: Callable[[str, int], Match | None]

    def split(self, text: str, names: Collection[str] | None = None) -> tuple[str, list[ToolCall]]:
        content: list[str] = []
        calls: list[ToolCall] = []
        done = 0
        pos = find_marker(text, self.start_markers)
        while pos is not None:
            match = self.match_at(text, pos)
            end = match[0] if match else pos + 1
            # all or nothing, as for a run with one malformed entry
            if match and match[1] and (names is None or all(c.name in names for c in match[1])):
                content.append(text[done:pos])
                calls.extend(match[1])
                done = end
            pos = find_marker(text, self.start_markers, max(end, pos + 1))
        content.append(text[done:])
        return "".join(content), calls


def _to_call(item: Any, allow_no_args: bool) -> ToolCall | None:
    if not isinstance(item, dict):
        return None
    if isinstance(item.get("function"), dict):  # OpenAI's own {"type", "function": {...}} shape
        item = item["function"]
    name = item.get("name")
    if not isinstance(name, str) or not name.strip():
        return None
    key = next((k for k in _ARG_KEYS if k in item), None)
    # A bare {"name": ...} is too likely to be ordinary data unless a marker announced a call.
    args = item[key] if key else ({} if allow_no_args else None)
    if isinstance(args, str):
        args = _loads(args)
    if not isinstance(args, dict):
        return None
    return ToolCall(
        name=name.strip(), arguments=json.dumps(args, ensure_ascii=False), id=new_call_id()
    )


def _to_calls(value: Any, allow_no_args: bool) -> list[ToolCall] | None:
    """All-or-nothing: a list with one bad entry stays content rather than half-parsed."""
    if isinstance(value, dict) and isinstance(value.get("tool_calls"), list):
        value = value["tool_calls"]
    items = value if isinstance(value, list) else [value]
    calls = [_to_call(item, allow_no_args) for item in items]
    if not calls or any(call is None for call in calls):
        return None
    return [call for call in calls if call is not None]


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return None


def _decode(text: str, pos: int) -> tuple[Any, int] | None:
    try:
        return _DECODER.raw_decode(text, pos)
    except (json.JSONDecodeError, RecursionError):  # absurd nesting is not a call either
        return None


def _decode_block(text: str, pos: int) -> tuple[Any, int] | None:
    """One JSON value after optional whitespace, optionally inside a ``` fence."""
    pos = _WS.match(text, pos).end()
    fence = _FENCE_OPEN.match(text, pos)
    decoded = _decode(text, fence.end() if fence else pos)
    if decoded is None or fence is None:
        return decoded
    value, end = decoded
    close = _WS.match(text, end).end()
    return value, close + len(FENCE) if text.startswith(FENCE, close) else end


def _call_run(text: str, pos: int, allow_no_args: bool) -> Match:
    """Consecutive call values from `pos`; stops before the first value that is not a call."""
    calls: list[ToolCall] = []
    end = pos
    while True:
        start = _RUN_SEP.match(text, end).end() if calls else end
        decoded = _decode_block(text, start)
        found = _to_calls(decoded[0], allow_no_args) if decoded else None
        if decoded is None or found is None:
            return end, calls
        calls.extend(found)
        end = decoded[1]


def _skip_json(text: str, pos: int) -> Match | None:
    """A JSON value that is not a call is content as a whole, so calls nested in it stay put."""
    decoded = _decode(text, pos)
    return (decoded[1], []) if decoded else None


def _skip_fence(text: str, pos: int) -> Match | None:
    close = text.find(FENCE, pos + len(FENCE))
    return (close + len(FENCE), []) if close >= 0 else None


def _match_hermes(text: str, pos: int) -> Match | None:
    end, calls = _call_run(text, pos + len(HERMES_OPEN), allow_no_args=True)
    if not calls:
        return None
    close = _WS.match(text, end).end()
    if text.startswith(HERMES_CLOSE, close):
        return close + len(HERMES_CLOSE), calls
    # The closing tag is optional: models often stop right after the JSON, or max_tokens cuts
    # the tag itself short, whose start then belongs to the call, not to the content.
    is_cut_tag = close < len(text) and HERMES_CLOSE.startswith(text[close:])
    return (len(text) if is_cut_tag else end), calls


def _match_llama3(text: str, pos: int) -> Match | None:
    is_tagged = text.startswith(PYTHON_TAG, pos)
    start = pos + len(PYTHON_TAG) if is_tagged else pos
    end, calls = _call_run(text, start, allow_no_args=is_tagged)
    if calls:
        return end, calls
    return None if is_tagged else _skip_json(text, pos)


def _match_mistral(text: str, pos: int) -> Match | None:
    start = pos + len(MISTRAL_TAG)
    end, calls = _call_run(text, start, allow_no_args=True)
    if calls:
        return end, calls
    named = _MISTRAL_NAMED.match(text, start)
    decoded = _decode_block(text, named.end()) if named else None
    if named is None or decoded is None:
        return None
    call = _to_call({"name": named[1], "arguments": decoded[0]}, allow_no_args=False)
    return (decoded[1], [call]) if call else None


def _match_json(text: str, pos: int) -> Match | None:
    end, calls = _call_run(text, pos, allow_no_args=False)
    if calls:
        return end, calls
    return _skip_fence(text, pos) if text.startswith(FENCE, pos) else _skip_json(text, pos)


PARSERS: dict[str, ToolCallParser] = {
    parser.name: parser
    for parser in (
        MarkerParser("hermes", (HERMES_OPEN,), _match_hermes),
        MarkerParser("llama3_json", (PYTHON_TAG, "{"), _match_llama3),
        MarkerParser("mistral", (MISTRAL_TAG,), _match_mistral),
        # Generic fallback: holds back any JSON-looking output while streaming, by design.
        MarkerParser("json", ("{", "[", FENCE), _match_json),
    )
}

# First hit wins: Hermes-style fine-tunes of Llama keep Llama's ipython role in the template.
TEMPLATE_HINTS: tuple[tuple[str, str], ...] = (
    (HERMES_OPEN, "hermes"),
    (MISTRAL_TAG, "mistral"),
    (PYTHON_TAG, "llama3_json"),
    ("ipython", "llama3_json"),
)
# roost's own tool prompt for templates without tool support asks for the hermes format.
FALLBACK_PARSER = "hermes"


def parser_for_template(template_source: str | None) -> ToolCallParser:
    source = template_source or ""
    name = next((name for hint, name in TEMPLATE_HINTS if hint in source), FALLBACK_PARSER)
    return PARSERS[name]
