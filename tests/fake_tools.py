"""Server tools used by the tests: one that fails, one that is too slow, and one whose forced
call the grammar spells out in full. A forced call of each (a tool_choice naming it) is fully
determined by its schema, so it completes whatever the model would have written."""

from __future__ import annotations

import time

from roost.tools.examples import calculator

NO_ARGUMENTS = {"type": "object", "properties": {}, "additionalProperties": False}


def explode(reason: str = "boom") -> str:
    """Always fails."""
    raise RuntimeError(reason)


explode.tool_schema = NO_ARGUMENTS  # type: ignore[attr-defined]


def sleepy(seconds: float = 5.0) -> str:
    """Sleeps longer than the test server's tool timeout."""
    time.sleep(seconds)
    return "woke up"


sleepy.tool_schema = NO_ARGUMENTS  # type: ignore[attr-defined]


def times_table(expression: str) -> str:
    """Evaluate 12*7 with the example calculator."""
    return calculator(expression)


times_table.tool_schema = {  # type: ignore[attr-defined]
    "type": "object",
    "properties": {"expression": {"type": "string", "enum": ["12*7"]}},
    "required": ["expression"],
    "additionalProperties": False,
}


def with_schema(**kwargs: object) -> str:
    """Described by an explicit schema rather than its signature."""
    return str(kwargs)


with_schema.tool_schema = {  # type: ignore[attr-defined]
    "type": "object",
    "properties": {"color": {"type": "string", "enum": ["red", "blue"]}},
    "required": ["color"],
}
