"""`roost serve | models`: flags are generated from the Settings fields."""

from __future__ import annotations

import argparse
import asyncio
import logging
import socket
import sys
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvicorn
from pydantic import SecretStr

from roost.chat.server_tools import load_server_tool
from roost.config import Settings, load_settings

_SCALARS = {str: str, int: int, float: float, Path: Path, SecretStr: str}


def _flag_type(annotation: Any) -> Any:
    """The argparse type of a scalar (or optional scalar) field; None for lists and models."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        annotation = members[0] if len(members) == 1 else None
    return _SCALARS.get(annotation)


def _add_setting_flags(parser: argparse.ArgumentParser) -> None:
    for name, field in Settings.model_fields.items():
        flag = f"--{name.replace('_', '-')}"
        if field.annotation is bool or bool in typing.get_args(field.annotation):
            # a tri-state such as `repack` (bool or "auto") takes --x/--no-x; unset keeps auto
            parser.add_argument(
                flag, dest=name, action=argparse.BooleanOptionalAction, help=field.description
            )
        elif (flag_type := _flag_type(field.annotation)) is not None:
            parser.add_argument(flag, dest=name, type=flag_type, help=field.description)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="roost", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    for command, help_text in (("serve", "run the HTTP server"), ("models", "list models")):
        sub = commands.add_parser(command, help=help_text)
        sub.add_argument("--config", type=Path, default=None, help="YAML settings file")
        _add_setting_flags(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = vars(build_parser().parse_args(argv))
    command, config_file = args.pop("command"), args.pop("config")
    try:
        settings = load_settings(config_file, **args)
        models = settings.resolved_models()
        for model in models:
            if not model.path.is_file():
                raise FileNotFoundError(f"model file not found: {model.path}")
        for reference in settings.tools:
            load_server_tool(reference)
    except (FileNotFoundError, ValueError) as exc:
        print(f"roost: {exc}", file=sys.stderr)
        return 2
    if command == "models":
        for model in models:
            print(f"{model.name}\t{model.path}")
        return 0
    return serve(settings)


_DRAIN_SECONDS = 10  # for ended requests to send their last bytes before uvicorn cuts them


class _Server(uvicorn.Server):
    """uvicorn's server, which at shutdown (it has stopped accepting) gives the requests in
    flight `grace` seconds, then calls `drain`: the engines end the rest with an error each
    reports (a 503, or in-band in a stream) rather than being cut off."""

    def __init__(self, config: uvicorn.Config, grace: float, drain: Callable[[], None]) -> None:
        super().__init__(config)
        self.grace, self.drain = grace, drain

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        timer = asyncio.get_running_loop().call_later(self.grace, self.drain)
        try:
            await super().shutdown(sockets)
        finally:
            timer.cancel()


def serve(settings: Settings) -> int:
    from roost.api.app import create_app

    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    failures: list[str] = []

    def stop(message: str) -> None:  # a configuration that cannot load: exit, do not linger
        failures.append(message)
        server.should_exit = True

    app = create_app(settings, on_fatal=stop)
    server = _Server(
        uvicorn.Config(
            app,
            host=settings.host,
            port=settings.port,
            log_level=settings.log_level.lower(),
            access_log=False,  # roost.access logs each request, with its key's name
            # after the grace period requests end on their own, with an error they report
            timeout_graceful_shutdown=settings.shutdown_grace + _DRAIN_SECONDS,
            ssl_certfile=settings.ssl_certfile,
            ssl_keyfile=settings.ssl_keyfile,
        ),
        settings.shutdown_grace,
        app.state.registry.drain,
    )
    server.run()
    for message in failures:
        print(f"roost: {message}", file=sys.stderr)
    return 2 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
