"""How one chat request offers tools to the model and reads its calls back."""

from __future__ import annotations

from dataclasses import dataclass

from roost.chat.constraints import ToolSpec, forced_call_grammar
from roost.chat.prompt import template_of
from roost.chat.server_tools import ServerTool
from roost.chat.tools import PARSERS, ToolCallParser, parser_for_template
from roost.engine.params import CompiledGrammar
from roost.engine.registry import ServedModel
from roost.errors import GrammarError, InvalidRequest


@dataclass(frozen=True)
class ToolChoice:
    """OpenAI's tool_choice: "none", "auto" (None: not sent), "required", or one function."""

    mode: str | None = None
    function: str | None = None  # a named choice: the one function the model must call


@dataclass(frozen=True)
class ToolPlan:
    specs: list[ToolSpec]
    parser: ToolCallParser
    is_native: bool  # the model's template renders `tools` itself
    forced_grammar: CompiledGrammar | None  # tool_choice required / named: first turn only
    allow_many: bool
    server_tools: dict[str, ServerTool]  # those offered: a client tool of the same name wins


def plan_tools(
    served: ServedModel,
    client_specs: list[ToolSpec],
    choice: ToolChoice,
    parallel_tool_calls: bool,
    server_tools: dict[str, ServerTool],
) -> ToolPlan | None:
    """None when no tools are on offer (blocking: a forced call's grammar is parsed here)."""
    if choice.mode == "none":
        return None  # no tools offered, none parsed
    names = [spec.name for spec in client_specs]
    if len(set(names)) != len(names):
        raise InvalidRequest("tool names must be unique", param="tools")
    offered = {name: tool for name, tool in server_tools.items() if name not in names}
    specs = client_specs + [tool.spec for tool in offered.values()]
    if not specs:
        if choice.mode not in (None, "auto") or choice.function is not None:
            raise InvalidRequest("tool_choice requires tools", param="tool_choice")
        return None
    template = template_of(served)
    is_native = template.supports_tools
    parser = parser_for_template(template.source) if is_native else PARSERS["hermes"]
    forced = _forced_specs(choice, specs)
    grammar = None
    if forced:
        try:
            # a small model, once forced, may call again and again: one call per offered tool
            # (named: exactly one) is the bound; parallel_tool_calls false means one
            many = parallel_tool_calls and choice.mode == "required"
            text = forced_call_grammar(forced, parser.name, len(forced) if many else 1)
            grammar = served.compile_grammar(text)
        except GrammarError as exc:
            raise InvalidRequest(str(exc), param="tools") from exc
    return ToolPlan(specs, parser, is_native, grammar, parallel_tool_calls, offered)


def _forced_specs(choice: ToolChoice, specs: list[ToolSpec]) -> list[ToolSpec]:
    if choice.mode == "required":
        return specs
    if choice.function is None:
        return []
    named = [spec for spec in specs if spec.name == choice.function]
    if not named:
        raise InvalidRequest(
            f"tool_choice names an unknown function '{choice.function}'", "tool_choice"
        )
    return named
