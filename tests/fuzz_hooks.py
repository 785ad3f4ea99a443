"""Schemathesis hooks that let generated requests reach generation: most bodies name the
served model (random names stop at a 404) and ask for little work (a fuzzed max_tokens of
millions would take minutes per case). Used by tests/test_fuzz.py and by the full run in
docs/benchmarks.md: `SCHEMATHESIS_HOOKS=tests.fuzz_hooks st run ...`."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import schemathesis

MODEL = "smollm2-135m-instruct"
_CAPS = {"max_tokens": 16, "max_completion_tokens": 16, "min_tokens": 16, "n": 2, "best_of": 2}


def _share(value: Any) -> float:
    """A stable number in [0, 1) for a generated value (hooks must be deterministic)."""
    text = json.dumps(value, sort_keys=True, default=repr)
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) / 2**32


def realistic(body: Any) -> Any:
    """Nine bodies in ten name the served model; sizes that cost generation time are capped,
    and a generation request without a length gets one (it would run to the context's end)."""
    if not isinstance(body, dict):
        return body
    body = dict(body)
    if _share(body) < 0.9:
        body["model"] = MODEL
    if "max_completion_tokens" not in body:
        body.setdefault("max_tokens", _CAPS["max_tokens"])
    messages = body.get("messages")
    if isinstance(messages, list) and _share(messages) < 0.7:
        # a tool message must answer a call an earlier message made: random ones never do
        body["messages"] = [_not_a_tool_answer(m) for m in messages]
    for key, cap in _CAPS.items():
        value = body.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool) and value > cap:
            body[key] = cap
    return body


def _not_a_tool_answer(message: Any) -> Any:
    if isinstance(message, dict) and message.get("role") == "tool":
        return {**message, "role": "user"}
    return message


@schemathesis.hook
def map_case(_context: schemathesis.HookContext, case: schemathesis.Case) -> schemathesis.Case:
    """Every phase's cases (coverage, fuzzing, stateful) pass through here."""
    case.body = realistic(case.body)
    params = case.path_parameters
    if isinstance(params, dict) and "model_id" in params and _share(params) < 0.5:
        case.path_parameters = {**params, "model_id": MODEL}
    return case
