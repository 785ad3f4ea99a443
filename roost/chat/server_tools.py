"""Server-side tools: Python callables named in the config, run by roost itself.

A tool is `package.module:function`. Its schema is the function's `tool_schema` attribute when
present, otherwise it is derived from the signature (pydantic), and its description is the
docstring's first paragraph. Calls run in a worker thread with a timeout, so the event loop and
the engine never block; any failure becomes text returned to the model, never a server error.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError, create_model, validate_call

from roost.chat.constraints import ToolSpec

log = logging.getLogger("roost.chat")


class ToolLoadError(ValueError):
    """A configured server tool cannot be imported or described."""


@dataclass(frozen=True)
class ServerTool:
    spec: ToolSpec
    func: Callable[..., Any]

    @property
    def name(self) -> str:
        return self.spec.name


def load_server_tool(reference: str) -> ServerTool:
    module_name, _, attr = reference.partition(":")
    try:
        func = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ToolLoadError(f"cannot import server tool '{reference}': {exc}") from exc
    if not callable(func):
        raise ToolLoadError(f"server tool '{reference}' is not callable")
    doc = inspect.getdoc(func) or ""
    schema = getattr(func, "tool_schema", None) or _signature_schema(func)
    spec = ToolSpec(func.__name__, doc.split("\n\n")[0] or None, schema)
    return ServerTool(spec, validate_call(func))  # arguments are checked and coerced


def _signature_schema(func: Callable[..., Any]) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for param in inspect.signature(func).parameters.values():
        annotation = Any if param.annotation is inspect.Parameter.empty else param.annotation
        default = ... if param.default is inspect.Parameter.empty else param.default
        fields[param.name] = (annotation, default)
    schema = create_model(f"{func.__name__}_args", **fields).model_json_schema()
    schema.pop("title", None)
    for prop in schema.get("properties", {}).values():
        prop.pop("title", None)
    return schema


async def run_server_tool(tool: ServerTool, arguments: str, timeout: float) -> str:
    """The tool's result as text for the model; errors are reported the same way."""
    try:
        kwargs = json.loads(arguments or "{}")
        if not isinstance(kwargs, dict):
            raise TypeError("arguments must be a JSON object")
        result = await asyncio.wait_for(asyncio.to_thread(tool.func, **kwargs), timeout)
    except TimeoutError:
        return f"error: tool '{tool.name}' timed out after {timeout:g}s"
    except (ValidationError, Exception) as exc:  # the model sees why its call failed
        log.warning("server tool %s failed: %s: %s", tool.name, type(exc).__name__, exc)
        return f"error: {type(exc).__name__}: {exc}"
    return result if isinstance(result, str) else json.dumps(result, default=str)
