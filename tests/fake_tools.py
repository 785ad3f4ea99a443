"""Server tools used by the tests: one that fails and one that is too slow."""

from __future__ import annotations

import time


def explode(reason: str = "boom") -> str:
    """Always fails."""
    raise RuntimeError(reason)


def sleepy(seconds: float = 5.0) -> str:
    """Sleeps longer than the test server's tool timeout."""
    time.sleep(seconds)
    return "woke up"


def with_schema(**kwargs: object) -> str:
    """Described by an explicit schema rather than its signature."""
    return str(kwargs)


with_schema.tool_schema = {  # type: ignore[attr-defined]
    "type": "object",
    "properties": {"color": {"type": "string", "enum": ["red", "blue"]}},
    "required": ["color"],
}
