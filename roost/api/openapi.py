"""The OpenAPI document as roost answers: a bad request is a 400 and every error an OpenAI
error object (FastAPI would declare its own 422 validation error instead)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

_NULLABLE_STRING = {"anyOf": [{"type": "string"}, {"type": "null"}]}
ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": _NULLABLE_STRING,
                "code": _NULLABLE_STRING,
            },
        }
    },
}
_ERROR_REF = {"$ref": "#/components/schemas/ErrorResponse"}
_FASTAPI_ONLY = ("HTTPValidationError", "ValidationError")


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ERROR_REF}}}


def roost_openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document with roost's errors: 400 where FastAPI says 422, and any other
    error status (401, 404, 409, 413, 503, ...) as the operation's default response."""
    schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for name in _FASTAPI_ONLY:
        components.pop(name, None)
    components["ErrorResponse"] = ERROR_SCHEMA
    for path, operations in schema["paths"].items():
        for operation in operations.values():
            responses = operation["responses"]
            if responses.pop("422", None) is not None:
                responses["400"] = _error("The request is invalid; `param` names the field")
            if path == "/health":  # 503 while loading, with the same body as 200
                responses["503"] = {"description": "No model can serve yet, or none loaded"}
            else:
                responses["default"] = _error("An error, as an OpenAI error object")
    return schema


def install_openapi(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = roost_openapi(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
