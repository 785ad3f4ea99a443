"""Request bodies: JSON that is also valid Unicode, or a 400 before any handler sees it."""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute

# a \uD800-\uDFFF escape: JSON allows it alone, but the string it makes cannot be encoded
SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


class UnicodeJSONRequest(Request):
    """Parses the body as FastAPI would, but rejects what later code could not encode.

    Failures are raised as `json.JSONDecodeError`, which FastAPI answers with a 400."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = parse_json(await self.body())
        return self._json


def parse_json(body: bytes) -> Any:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise json.JSONDecodeError("the body is not valid UTF-8", "", exc.start) from None
    try:
        data = json.loads(text)
    except RecursionError:
        raise json.JSONDecodeError("the JSON is nested too deeply", text, 0) from None
    if SURROGATE_ESCAPE.search(body):  # rare: only then pay for a full check
        try:
            json.dumps(data, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            message = "a string holds an unpaired UTF-16 surrogate escape (\\ud800-\\udfff)"
            raise json.JSONDecodeError(message, text, 0) from None
    return data


class UnicodeJSONRoute(APIRoute):
    """An APIRoute whose handler reads the body through `UnicodeJSONRequest`."""

    def get_route_handler(self) -> Callable[[Request], Awaitable[Response]]:
        handler = super().get_route_handler()

        async def with_unicode_json(request: Request) -> Response:
            return await handler(UnicodeJSONRequest(request.scope, request.receive))

        return with_unicode_json
