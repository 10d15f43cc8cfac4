"""Error envelopes: OpenAI and Anthropic shapes, the type by status, Retry-After."""

from __future__ import annotations

import orjson
import pytest

from helexa.wire.errors import ApiError, anthropic_error_body, anthropic_type_for


def test_openai_envelope_and_retry_after() -> None:
    err = ApiError(503, "service_unavailable", "busy", retry_after=3, extras={"node": "n1"})
    assert orjson.loads(err.openai_body()) == {
        "error": {
            "message": "busy",
            "type": "api_error",
            "code": "service_unavailable",
            "param": None,
            "node": "n1",
        }
    }
    assert err.headers() == {"Retry-After": "3"}
    assert ApiError(400, "invalid_value", "bad", param="top_p").headers() == {}


def test_type_defaults_by_status_unless_given() -> None:
    assert ApiError(404, "x", "m").type == "invalid_request_error"
    assert ApiError(502, "x", "m").type == "api_error"
    assert ApiError(429, "x", "m", type="rate_limit_error").type == "rate_limit_error"


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (403, "permission_error"),
        (404, "not_found_error"),
        (413, "request_too_large"),
        (422, "invalid_request_error"),
        (429, "rate_limit_error"),
        (500, "api_error"),
        (503, "overloaded_error"),
        (504, "api_error"),
    ],
)
def test_anthropic_envelope_type_follows_the_status(status: int, kind: str) -> None:
    assert anthropic_type_for(status) == kind
    body = orjson.loads(ApiError(status, "c", "why").anthropic_body())
    assert body == {"type": "error", "error": {"type": kind, "message": "why"}}
    assert anthropic_error_body(status, "why") == ApiError(status, "c", "why").anthropic_body()
