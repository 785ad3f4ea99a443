"""Offering tools to a model: natively through its template, or through a fallback prompt.

A template that never mentions `tools` cannot show them to the model. roost then describes the
tools in the system message and asks for Hermes-style `<tool_call>` blocks; earlier calls and
tool results in the history are written the same way, so a round trip reads consistently.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

from roost.chat.constraints import ToolSpec

FALLBACK_PROMPT = """You can call functions (tools) to help answer. To call one, reply with a \
block like this, and nothing else for that call:
<tool_call>
{{"name": "<function name>", "arguments": {{<arguments as a JSON object>}}}}
</tool_call>
Call a function only when it helps. The available functions, as JSON schemas:
<tools>
{tools}
</tools>"""


def fallback_messages(
    messages: list[dict[str, Any]], tools: list[ToolSpec]
) -> list[dict[str, Any]]:
    """Messages for a template without tool support: tools in the system prompt, calls as text."""
    described = "\n".join(json.dumps(tool.as_openai()["function"]) for tool in tools)
    prompt = FALLBACK_PROMPT.format(tools=described)
    out = [_plain(message) for message in messages]
    if out and out[0]["role"] == "system":
        out[0] = {**out[0], "content": f"{out[0]['content']}\n\n{prompt}"}
    else:
        out.insert(0, {"role": "system", "content": prompt})
    return out


def _plain(message: dict[str, Any]) -> dict[str, Any]:
    if message["role"] == "tool":
        body = f"<tool_response>\n{message.get('content') or ''}\n</tool_response>"
        return {"role": "user", "content": body}
    if message["role"] == "assistant" and message.get("tool_calls"):
        blocks = [_call_block(call) for call in message["tool_calls"]]
        text = "\n".join(filter(None, [message.get("content") or "", *blocks]))
        return {"role": "assistant", "content": text}
    return {k: v for k, v in message.items() if k in ("role", "content")}


def _call_block(call: dict[str, Any]) -> str:
    function = call.get("function", {})
    try:
        arguments = json.loads(function.get("arguments") or "{}")
    except json.JSONDecodeError:
        arguments = {}
    payload = json.dumps({"name": function.get("name", ""), "arguments": arguments})
    return f"<tool_call>\n{payload}\n</tool_call>"


def native_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages for a tool-aware template: arguments as objects, as most templates expect."""
    out = []
    for message in messages:
        if message.get("tool_calls"):
            calls = []
            for call in message["tool_calls"]:
                function = dict(call.get("function", {}))
                with contextlib.suppress(json.JSONDecodeError):
                    function["arguments"] = json.loads(function.get("arguments") or "{}")
                calls.append({**call, "function": function})
            message = {**message, "tool_calls": calls}
        out.append(message)
    return out
