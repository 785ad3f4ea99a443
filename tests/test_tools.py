"""Tool calling end to end through the openai client, with the embedded 135M model."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import jsonschema
import openai
import pytest

from roost.api.serving_chat import _choice
from roost.chat.tool_stream import ToolCallStream
from roost.chat.tools import PARSERS, ToolCall
from roost.chat.turn import HeldLogprobs, Piece
from roost.engine.logprobs import TokenLogprob
from tests.conftest import MODEL, Server, start_config_server

# a forced call always parses; the strings' maxLength makes it end within max_tokens too,
# whatever the model writes in them
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 20},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer", "minimum": 1, "maximum": 7},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Current time in a time zone",
        "parameters": {
            "type": "object",
            "properties": {"tz": {"type": "string", "maxLength": 20}},
        },
    },
}
ASK = [{"role": "user", "content": "What's the weather like in Paris today?"}]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in (WEATHER, TIME)}


def _check_calls(message: object) -> list[tuple[str, dict]]:
    calls = message.tool_calls  # type: ignore[attr-defined]
    assert calls, message
    out = []
    for call in calls:
        assert call.type == "function" and call.id.startswith("call_")
        arguments = json.loads(call.function.arguments)
        jsonschema.validate(arguments, SCHEMAS[call.function.name])
        out.append((call.function.name, arguments))
    return out


def test_required_calls_always_validate(client: openai.OpenAI) -> None:
    for seed in range(10):
        reply = client.chat.completions.create(
            model=MODEL,
            messages=ASK,
            tools=[WEATHER, TIME],
            tool_choice="required",
            temperature=1.0,
            seed=seed,
            max_tokens=200,
        )
        choice = reply.choices[0]
        assert choice.finish_reason == "tool_calls", choice
        _check_calls(choice.message)
        assert "<tool_call>" not in (choice.message.content or "")


def test_named_choice_calls_that_function(client: openai.OpenAI) -> None:
    for seed in range(6):
        reply = client.chat.completions.create(
            model=MODEL,
            messages=ASK,
            tools=[WEATHER, TIME],
            temperature=1.0,
            seed=seed,
            tool_choice={"type": "function", "function": {"name": "get_time"}},
            max_tokens=200,
        )
        calls = _check_calls(reply.choices[0].message)
        assert {name for name, _ in calls} == {"get_time"}


def test_parallel_tool_calls_false_gives_one_call(client: openai.OpenAI) -> None:
    for seed in range(4):
        reply = client.chat.completions.create(
            model=MODEL,
            messages=ASK,
            tools=[WEATHER, TIME],
            tool_choice="required",
            parallel_tool_calls=False,
            temperature=1.0,
            seed=seed,
            max_tokens=200,
        )
        assert len(_check_calls(reply.choices[0].message)) == 1


def test_streamed_tool_calls_reassemble(client: openai.OpenAI) -> None:
    args = {
        "model": MODEL,
        "messages": ASK,
        "tools": [WEATHER, TIME],
        "tool_choice": "required",
        "temperature": 0,
        "max_tokens": 200,
    }
    whole = client.chat.completions.create(**args)
    calls: dict[int, dict[str, str]] = {}
    finish = None
    for chunk in client.chat.completions.create(**args, stream=True):
        delta = chunk.choices[0].delta
        assert not delta.content or "<tool_call>" not in delta.content
        for fragment in delta.tool_calls or []:
            if fragment.id:  # the first fragment names the call
                assert fragment.type == "function" and fragment.function.arguments == ""
                calls[fragment.index] = {"name": fragment.function.name, "arguments": ""}
            calls[fragment.index]["arguments"] += fragment.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls"
    expected = [
        {"name": c.function.name, "arguments": c.function.arguments}
        for c in whole.choices[0].message.tool_calls or []
    ]
    assert [calls[i] for i in sorted(calls)] == expected


def test_round_trip_with_tool_results(client: openai.OpenAI) -> None:
    first = client.chat.completions.create(
        model=MODEL,
        messages=ASK,
        tools=[WEATHER],
        tool_choice="required",
        max_tokens=200,
        temperature=0,
    )
    message = first.choices[0].message
    history = [
        *ASK,
        message.model_dump(exclude_none=True),
        *(
            {"role": "tool", "tool_call_id": call.id, "content": "18 degrees and sunny"}
            for call in message.tool_calls or []
        ),
    ]
    reply = client.chat.completions.create(
        model=MODEL, messages=history, tools=[WEATHER], max_tokens=30, temperature=0
    )
    assert reply.choices[0].finish_reason in ("stop", "length", "tool_calls")
    assert reply.usage is not None and reply.usage.prompt_tokens > first.usage.prompt_tokens  # type: ignore[union-attr]


def test_tool_choice_none_offers_no_tools(client: openai.OpenAI) -> None:
    plain = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=5)
    none = client.chat.completions.create(
        model=MODEL, messages=ASK, tools=[WEATHER], tool_choice="none", max_tokens=5
    )
    assert none.usage.prompt_tokens == plain.usage.prompt_tokens  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("change", "param"),
    [
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": 5}}}]},
            "tools[0].function.parameters",
        ),
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
            "tool_choice",
        ),
        ({"tool_choice": "required"}, "tool_choice"),
        (
            {"tools": [{"type": "function", "function": {"name": "bad name!"}}]},
            "tools[0].function.name",
        ),
        (
            {
                "tools": [
                    {
                        "type": "function",
                        "function": {
                            "name": "f",
                            "parameters": {
                                "type": "object",
                                "properties": {"x": {"type": "number", "minimum": 0}},
                            },
                        },
                    }
                ],
                "tool_choice": "required",
            },
            "tools",
        ),
        (
            {"messages": [*ASK, {"role": "tool", "tool_call_id": "call_x", "content": "1"}]},
            "messages[1].tool_call_id",
        ),
        (  # arguments are a JSON object: forced, this produced {"type": "string"}
            {
                "tools": [
                    {
                        "type": "function",
                        "function": {"name": "f", "parameters": {"type": "string"}},
                    }
                ],
                "tool_choice": "required",
            },
            "tools[0].function.parameters",
        ),
    ],
)
def test_bad_tool_input_is_400(server: Server, change: dict, param: str) -> None:
    body = {"model": MODEL, "messages": ASK, "max_tokens": 5, **change}
    with server.http() as http:
        resp = http.post("/v1/chat/completions", json=body)
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["param"] == param


@pytest.fixture(scope="module")
def tool_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    config = (
        "tool_timeout: 0.5\n"
        "tools:\n"
        "  - roost.tools.examples:calculator\n"
        "  - roost.tools.examples:current_time\n"
        "  - tests.fake_tools:explode\n"
        "  - tests.fake_tools:sleepy\n"
        "  - tests.fake_tools:times_table\n"
    )
    yield from start_config_server(
        tmp_path_factory, config, "--parallel", "2", "--ctx-size", "4096"
    )


def test_server_tools_listed_in_health(tool_server: Server) -> None:
    body = httpx.get(f"{tool_server.base_url}/health").json()
    assert body["tools_loaded"] == [
        "calculator",
        "current_time",
        "explode",
        "sleepy",
        "times_table",
    ]


def _forced(name: str) -> dict:
    return {"type": "function", "function": {"name": name}}


MULTIPLY = [{"role": "user", "content": "What is 12*7?"}]


def _ask(server: Server, tool: str, max_tokens: int, **extra: object) -> dict:
    """A greedy chat request forced to call `tool`."""
    body = {
        "model": MODEL,
        "messages": MULTIPLY,
        "tool_choice": _forced(tool),
        "max_tokens": max_tokens,
        "temperature": 0,
        **extra,
    }
    with server.http() as http:
        return dict(http.post("/v1/chat/completions", json=body).json())


def test_server_tool_runs_and_model_answers(tool_server: Server) -> None:
    # times_table's schema admits one call only: forced, the model always makes it (the
    # example calculator's free-form expression could run past max_tokens)
    body = _ask(tool_server, "times_table", 150)
    executed = body["server_tool_calls"]
    assert executed and executed[0]["name"] == "times_table"
    assert json.loads(executed[0]["arguments"]) == {"expression": "12*7"}
    assert executed[0]["result"] == "84"
    choice = body["choices"][0]
    assert choice["finish_reason"] in ("stop", "length")
    assert choice["message"].get("tool_calls") is None
    assert body["usage"]["prompt_tokens"] > 0


def test_a_client_tool_of_a_server_tools_name_is_the_clients(tool_server: Server) -> None:
    mine = {
        "type": "function",
        "function": {
            "name": "calculator",
            "parameters": {
                "type": "object",
                "properties": {"expression": {"type": "string", "enum": ["12*7"]}},
                "required": ["expression"],
            },
        },
    }
    body = _ask(tool_server, "calculator", 40, tools=[mine])
    assert body.get("server_tool_calls") is None  # the server ran its own calculator before
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["tool_calls"][0]["function"]["name"] == "calculator"


def test_server_tool_streaming_shows_only_the_answer(tool_server: Server) -> None:
    # a call cut by max_tokens runs nothing: this is the first round's prompt alone
    one_round = _ask(tool_server, "times_table", 1)["usage"]["prompt_tokens"]
    client = tool_server.client()
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=MULTIPLY,  # type: ignore[arg-type]
            tool_choice=_forced("times_table"),
            max_tokens=150,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert all(not c.choices[0].delta.tool_calls for c in chunks if c.choices)
    finals = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finals[-1] in ("stop", "length")
    # the tool ran: a second round read the first round's prompt again, with call and result
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens > 2 * one_round


@pytest.mark.parametrize(
    ("tool", "expected"), [("explode", "error: RuntimeError"), ("sleepy", "timed out")]
)
def test_failing_server_tool_reports_to_the_model(
    tool_server: Server, tool: str, expected: str
) -> None:
    with tool_server.http() as http:
        resp = http.post(
            "/v1/chat/completions",
            json={
                "model": MODEL,
                "messages": ASK,
                "tool_choice": _forced(tool),
                "max_tokens": 150,
                "temperature": 0,
            },
        )
    assert resp.status_code == 200
    executed = resp.json()["server_tool_calls"][0]
    assert executed["name"] == tool and json.loads(executed["arguments"]) == {}
    assert expected in executed["result"]


NATIVE_TEMPLATE = """{%- if tools %}<|im_start|>system
Tools:{% for tool in tools %}
{{ tool | tojson }}{% endfor %}
Answer with <tool_call>{"name": ..., "arguments": ...}</tool_call><|im_end|>
{% endif %}
{%- for message in messages %}<|im_start|>{{ message.role }}
{% if message.tool_calls %}{% for call in message.tool_calls %}<tool_call>
{{ {"name": call.function.name, "arguments": call.function.arguments} | tojson }}
</tool_call>{% endfor %}{% else %}{{ message.content }}{% endif %}<|im_end|>
{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""


@pytest.fixture(scope="module")
def native_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    import yaml

    config = yaml.safe_dump({"models": [{"name": "native", "chat_template": NATIVE_TEMPLATE}]})
    yield from start_config_server(
        tmp_path_factory, config, "--parallel", "1", "--ctx-size", "2048"
    )


def test_tool_aware_template_receives_tools(native_server: Server) -> None:
    client = native_server.client()
    plain = client.chat.completions.create(model="native", messages=ASK, max_tokens=1)
    offered = client.chat.completions.create(
        model="native",
        messages=ASK,
        tools=[WEATHER],
        tool_choice="required",
        max_tokens=200,
        temperature=0,
    )
    assert offered.usage.prompt_tokens > plain.usage.prompt_tokens + 20  # type: ignore[union-attr]
    calls = _check_calls(offered.choices[0].message)
    history = [*ASK, offered.choices[0].message.model_dump(exclude_none=True)]
    history += [
        {"role": "tool", "tool_call_id": c.id, "content": "sunny"}
        for c in offered.choices[0].message.tool_calls or []
    ]
    again = client.chat.completions.create(model="native", messages=history, max_tokens=5)
    assert again.choices[0].finish_reason in ("stop", "length")
    assert calls[0][0] == "get_weather"


def test_a_forced_call_cut_by_a_stop_string_leaks_no_markup(client: openai.OpenAI) -> None:
    args = {"model": MODEL, "messages": ASK, "tools": [WEATHER], "tool_choice": "required"}
    reply = client.chat.completions.create(**args, stop=["arguments"], max_tokens=60)  # type: ignore[call-overload]
    assert reply.choices[0].finish_reason == "stop"
    assert not reply.choices[0].message.content and not reply.choices[0].message.tool_calls
    chunks = list(client.chat.completions.create(**args, stop=["arguments"], stream=True))  # type: ignore[call-overload]
    assert not "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_a_forced_call_cut_by_max_tokens_leaks_no_markup(client: openai.OpenAI) -> None:
    # 3 tokens end inside "<tool_call>": the held-back start of the marker is not content
    args = {"model": MODEL, "messages": ASK, "tools": [WEATHER], "tool_choice": "required"}
    reply = client.chat.completions.create(**args, max_tokens=3)  # type: ignore[call-overload]
    assert reply.choices[0].finish_reason == "length"
    assert not reply.choices[0].message.content
    chunks = list(client.chat.completions.create(**args, max_tokens=3, stream=True))  # type: ignore[call-overload]
    assert not "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_a_call_of_a_function_not_offered_stays_content(client: openai.OpenAI) -> None:
    args = {"model": MODEL, "messages": _stock_history(), "tools": [WEATHER], "temperature": 0}
    reply = client.chat.completions.create(**args, max_tokens=60)  # type: ignore[call-overload]
    choice = reply.choices[0]
    assert choice.finish_reason == "stop" and choice.message.tool_calls is None
    assert "get_stock" in (choice.message.content or "")
    chunks = list(client.chat.completions.create(**args, max_tokens=60, stream=True))  # type: ignore[call-overload]
    deltas = [c.choices[0] for c in chunks if c.choices]
    assert not any(d.delta.tool_calls for d in deltas)
    assert deltas[-1].finish_reason == "stop"
    assert "".join(d.delta.content or "" for d in deltas) == choice.message.content


def _stock_history() -> list[dict]:
    """A history in which the assistant called get_stock twice: greedy, it calls it again."""
    stock = {"type": "function", "function": {"name": "get_stock", "arguments": '{"sym": "ACME"}'}}
    calls = [{"id": f"call_{i}", **stock} for i in (1, 2)]
    return [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": calls},
    ]


def test_logprobs_cover_only_the_content(client: openai.OpenAI) -> None:
    # a call's tokens are no content: a cut forced call leaves no logprobs either
    forced = {"model": MODEL, "messages": ASK, "tools": [WEATHER], "tool_choice": "required"}
    cut = client.chat.completions.create(**forced, max_tokens=6, logprobs=True)  # type: ignore[call-overload]
    assert cut.choices[0].finish_reason == "length" and not cut.choices[0].message.content
    assert not (cut.choices[0].logprobs and cut.choices[0].logprobs.content)
    chunks = client.chat.completions.create(**forced, max_tokens=6, logprobs=True, stream=True)  # type: ignore[call-overload]
    assert not [c for c in chunks if c.choices and c.choices[0].logprobs]
    # a call of a function not on offer is held back as a call would be, then becomes content:
    # its logprobs come back with it
    undeclared = {"model": MODEL, "messages": _stock_history(), "tools": [WEATHER]}
    reply = client.chat.completions.create(
        **undeclared,
        temperature=0,
        max_tokens=60,
        logprobs=True,  # type: ignore[call-overload]
    )
    content, logprobs = reply.choices[0].message.content, reply.choices[0].logprobs
    assert content and "get_stock" in content and logprobs and logprobs.content
    assert "".join(lp.token for lp in logprobs.content) == content


def test_calls_come_without_whitespace_content() -> None:
    # a newline the model wrote before its call (streamed as content) is no answer beside it
    call = ToolCall(name="get_weather", arguments="{}", id="call_1")
    answer = Piece(text="\n", tool_calls=[call], finish_reason="tool_calls")
    assert _choice(0, answer, None).message.content is None
    assert _choice(0, Piece(text="\n", finish_reason="stop"), None).message.content == "\n"


def test_streamed_logprobs_wait_only_for_their_own_text() -> None:
    # one feed may let earlier text through and hold a new "<" (a possible call marker)
    splitter, held = ToolCallStream(PARSERS["hermes"]), HeldLogprobs()
    sent = []
    for token, text in enumerate(["a <", "v> <", "b", "<tool_call>"]):
        passed = splitter.feed(text)
        released = held.pass_on(text, [TokenLogprob(token, 0.0)], passed)
        sent.append((passed, [lp.token for lp in released]))
    assert sent == [("a ", []), ("<v> ", [0]), ("<b", [1, 2]), ("", [])]
    assert [lp.token for lp in held.rest()] == [3]
