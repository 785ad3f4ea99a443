"""HTTP statuses for roost's typed errors, and the handlers that turn every failure into an
OpenAI error object."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from roost.errors import ErrorKind, RoostError, ServiceUnavailable

log = logging.getLogger("roost.api")


_STATUS = {
    ErrorKind.INVALID: (400, "invalid_request_error"),
    ErrorKind.NOT_FOUND: (404, "invalid_request_error"),
    ErrorKind.UNAUTHORIZED: (401, "invalid_request_error"),
    ErrorKind.CONFLICT: (409, "invalid_request_error"),
    ErrorKind.TOO_LARGE: (413, "invalid_request_error"),
    ErrorKind.UNAVAILABLE: (503, "server_error"),
    ErrorKind.DISCONNECTED: (499, "invalid_request_error"),
    ErrorKind.INTERNAL: (500, "server_error"),
}


class InvalidAPIKey(RoostError):
    kind = ErrorKind.UNAUTHORIZED
    code = "invalid_api_key"

    def __init__(self) -> None:
        super().__init__("Incorrect or missing API key. Send 'Authorization: Bearer <key>'.")


class ClientDisconnected(RoostError):
    """The client went away before a non-streaming answer was ready (nobody reads this)."""

    kind = ErrorKind.DISCONNECTED
    code = "client_disconnected"


def status_of(exc: RoostError) -> int:
    return _STATUS[exc.kind][0]


def error_json(exc: RoostError) -> dict[str, Any]:
    """The OpenAI `{"error": {...}}` object of a typed error."""
    return error_body(exc.message, _STATUS[exc.kind][1], exc.param, exc.code)


def error_response(exc: RoostError) -> JSONResponse:
    headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, ServiceUnavailable) else {}
    return JSONResponse(error_json(exc), status_code=status_of(exc), headers=headers)


def error_body(message: str, type_: str, param: str | None, code: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def _param_from_loc(loc: tuple[Any, ...]) -> str | None:
    """('body', 'messages', 0, 'content') → 'messages[0].content'."""
    parts = [p for p in loc if p not in ("body", "query", "path")]
    # pydantic names union members ('str', 'list[str]', 'function-after[...]'): not fields
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif "[" in part or part in {"str", "int", "float", "bool", "list", "dict"}:
            continue
        else:
            out += f".{part}" if out else part
    return out or None


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(RoostError)
    async def _roost_error(_request: Request, exc: RoostError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid request", "type": ""}
        param = _param_from_loc(tuple(first.get("loc", ())))
        kind = str(first.get("type", ""))
        if kind == "json_invalid":
            reason = first.get("ctx", {}).get("error", "")
            message = f"We could not parse the JSON body of your request: {reason}"
            param = None
        else:
            message = f"{param or 'body'}: {first.get('msg', 'invalid value')}"
        # pydantic's "int_type", "string_type", ...: a value of the wrong JSON type
        code = "invalid_type" if kind.endswith("_type") else "invalid_value"
        body = error_body(message, "invalid_request_error", param, code)
        return JSONResponse(body, status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {400: "invalid_value", 404: "not_found", 405: "method_not_allowed"}.get(
            exc.status_code
        )
        body = error_body(str(exc.detail), "invalid_request_error", None, code)
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        body = error_body(
            "The server had an error processing your request.",
            "server_error",
            None,
            "internal_error",
        )
        return JSONResponse(body, status_code=500)
