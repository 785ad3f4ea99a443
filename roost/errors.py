"""Typed errors any layer may raise; api/errors.py turns each into an OpenAI error object."""

from __future__ import annotations

import enum


class ErrorKind(enum.Enum):
    """What went wrong, in words the HTTP layer maps to a status and an OpenAI error type."""

    INVALID = "invalid"  # the request: 400
    NOT_FOUND = "not_found"  # 404
    UNAUTHORIZED = "unauthorized"  # 401
    CONFLICT = "conflict"  # another request holds what this one needs: 409
    TOO_LARGE = "too_large"  # the request body: 413
    UNAVAILABLE = "unavailable"  # the server, for now: 503 with Retry-After
    DISCONNECTED = "disconnected"  # the client left: nobody reads the answer
    INTERNAL = "internal"  # the server: 500


class RoostError(Exception):
    """An error a client may see: a message, the request field it concerns, a code."""

    kind = ErrorKind.INVALID
    code: str | None = None

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code


class InvalidRequest(RoostError):
    code = "invalid_value"


class ContextLengthExceeded(RoostError):
    code = "context_length_exceeded"


class ModelNotFound(RoostError):
    kind = ErrorKind.NOT_FOUND
    code = "model_not_found"

    def __init__(self, model: str) -> None:
        super().__init__(f"The model '{model}' does not exist", param="model")


class ServiceUnavailable(RoostError):
    kind = ErrorKind.UNAVAILABLE

    def __init__(self, message: str, code: str, retry_after: int = 1) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after


class QueueFull(ServiceUnavailable):
    """More requests are waiting than the model's queue allows."""

    def __init__(self) -> None:
        super().__init__(
            "The server is busy: too many requests are waiting. Retry shortly.", "queue_full"
        )


class QueueTimeout(ServiceUnavailable):
    """A request waited longer than max_queue_wait for a free sequence."""

    def __init__(self) -> None:
        super().__init__(
            "The server is busy: this request waited too long for its turn. Retry later.",
            "queue_timeout",
            retry_after=5,
        )


class ShuttingDown(ServiceUnavailable):
    """The server is stopping: requests still running when its grace period ends."""

    def __init__(self) -> None:
        super().__init__(
            "The server is shutting down. Retry shortly.", "server_shutting_down", retry_after=5
        )


class SessionBusy(RoostError):
    """Another request is answering in this session right now."""

    kind = ErrorKind.CONFLICT
    code = "session_busy"

    def __init__(self, param: str) -> None:
        super().__init__(
            "Another request is using this session: one request per session at a time. "
            "Retry when it has finished.",
            param=param,
        )


class EngineFailure(RoostError):
    kind = ErrorKind.INTERNAL
    code = "engine_error"


class GrammarError(ValueError):
    """A constraint that cannot become a grammar, or a grammar llama.cpp rejects."""
