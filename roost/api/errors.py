"""Typed API errors and the handlers that turn every failure into an OpenAI error object."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("roost.api")


class APIError(Exception):
    """An error with an HTTP status and the OpenAI `{"error": {...}}` fields."""

    status = 400
    type = "invalid_request_error"
    code: str | None = None

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers: dict[str, str] = {}

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)


class InvalidRequest(APIError):
    code = "invalid_value"


class ContextLengthExceeded(APIError):
    code = "context_length_exceeded"


class ModelNotFound(APIError):
    status = 404
    code = "model_not_found"

    def __init__(self, model: str) -> None:
        super().__init__(f"The model '{model}' does not exist", param="model")


class InvalidAPIKey(APIError):
    status = 401
    code = "invalid_api_key"

    def __init__(self) -> None:
        super().__init__("Incorrect or missing API key. Send 'Authorization: Bearer <key>'.")


class ServiceUnavailable(APIError):
    status = 503
    type = "server_error"

    def __init__(self, message: str, code: str, retry_after: int = 1) -> None:
        super().__init__(message, code=code)
        self.headers = {"Retry-After": str(retry_after)}


class ClientDisconnected(APIError):
    """The client went away before a non-streaming answer was ready (nobody reads this)."""

    status = 499
    code = "client_disconnected"


class EngineFailure(APIError):
    status = 500
    type = "server_error"
    code = "engine_error"


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
    @app.exception_handler(APIError)
    async def _api_error(_request: Request, exc: APIError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

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
