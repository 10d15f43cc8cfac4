"""Error envelopes: one place that turns a failure into OpenAI- or Anthropic-shaped bytes.

Every error a client sees, on every route, is built here so the shape (and `Retry-After`) can
never drift between handlers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

INVALID_REQUEST = "invalid_request_error"
API_ERROR = "api_error"

_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "invalid_request_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
}


def anthropic_type_for(status: int) -> str:
    """Anthropic's error `type` is a function of the HTTP status (see docs/reference.md#errors)."""
    if status in _ANTHROPIC_TYPES:
        return _ANTHROPIC_TYPES[status]
    return "api_error" if status >= 500 else "invalid_request_error"


@dataclass(slots=True)
class ApiError(Exception):
    """A failure with everything needed to answer the client: status, envelope fields, headers."""

    status: int
    code: str | None
    message: str
    type: str = ""
    param: str | None = None
    retry_after: int | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.type:
            self.type = INVALID_REQUEST if self.status < 500 else API_ERROR

    def __str__(self) -> str:
        return f"{self.status} {self.code}: {self.message}"

    def openai_body(self) -> bytes:
        err: dict[str, Any] = {
            "message": self.message,
            "type": self.type,
            "code": self.code,
            "param": self.param,
        }
        err.update(self.extras)
        return orjson.dumps({"error": err})

    def anthropic_body(self) -> bytes:
        return anthropic_error_body(self.status, self.message)

    def headers(self) -> dict[str, str]:
        if self.retry_after is None:
            return {}
        return {"Retry-After": str(self.retry_after)}


def anthropic_error_body(status: int, message: str) -> bytes:
    return orjson.dumps(
        {"type": "error", "error": {"type": anthropic_type_for(status), "message": message}}
    )
