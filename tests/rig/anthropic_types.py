"""cortex's Anthropic output checked against the anthropic SDK's own types.

The SDK's models allow unknown fields and coerce in lax mode, so these validate strictly (no
coercion) and then refuse any field the SDK does not define: what passes is exactly what
Anthropic clients are typed to read.
"""

from __future__ import annotations

from typing import Any

import orjson
from anthropic.types import (
    ErrorResponse,
    Message,
    MessageTokensCount,
    RawContentBlockDeltaEvent,
    RawContentBlockStartEvent,
    RawContentBlockStopEvent,
    RawMessageDeltaEvent,
    RawMessageStartEvent,
    RawMessageStopEvent,
)
from pydantic import BaseModel

EVENTS: dict[str, type[BaseModel]] = {
    "message_start": RawMessageStartEvent,
    "content_block_start": RawContentBlockStartEvent,
    "content_block_delta": RawContentBlockDeltaEvent,
    "content_block_stop": RawContentBlockStopEvent,
    "message_delta": RawMessageDeltaEvent,
    "message_stop": RawMessageStopEvent,
    "error": ErrorResponse,
}


def _no_extras(value: Any, where: str) -> None:
    if isinstance(value, BaseModel):
        extra = value.model_extra or {}
        assert not extra, f"{where}: fields the SDK does not define: {sorted(extra)}"
        for name in type(value).model_fields:
            _no_extras(getattr(value, name), f"{where}.{name}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _no_extras(item, f"{where}[{i}]")


def _strict(model: type[BaseModel], data: Any, where: str) -> BaseModel:
    raw = data if isinstance(data, bytes) else orjson.dumps(data)
    parsed = model.model_validate_json(raw, strict=True)
    _no_extras(parsed, where)
    return parsed


def check_event(name: str, data: Any) -> None:
    """One SSE event (`event:` name and `data:` payload, bytes or parsed)."""
    obj = orjson.loads(data) if isinstance(data, bytes) else data
    assert obj.get("type") == name, f"event {name} carries type {obj.get('type')}"
    if name == "ping":
        assert obj == {"type": "ping"}, obj
        return
    assert name in EVENTS, f"not an Anthropic stream event: {name}"
    _strict(EVENTS[name], obj, name)


def check_message(data: Any) -> Message:
    """A whole non-streaming reply."""
    parsed = _strict(Message, data, "message")
    assert isinstance(parsed, Message)
    return parsed


# Error types Anthropic documents (its errors page: 413 `request_too_large`) that the SDK's
# ErrorResponse union does not list; checked as if they were `invalid_request_error`.
UNTYPED_ERRORS = frozenset({"request_too_large"})


def check_error(data: Any) -> None:
    """An error body in the Anthropic envelope."""
    obj = orjson.loads(data) if isinstance(data, bytes) else data
    err = obj.get("error") if isinstance(obj, dict) else None
    if isinstance(err, dict) and err.get("type") in UNTYPED_ERRORS:
        obj = {**obj, "error": {**err, "type": "invalid_request_error"}}
    _strict(ErrorResponse, obj, "error")


def check_reply(path: str, status: int, content_type: str, body: bytes) -> None:
    """Any cortex reply on /v1/messages or /v1/messages/count_tokens, streamed or not; other
    paths are not Anthropic's and pass unchecked."""
    path = path.partition("?")[0]
    if not path.startswith("/v1/messages"):
        return
    if content_type.startswith("text/event-stream"):
        for frame in body.split(b"\n\n"):
            if frame.strip():
                head, _, data = frame.partition(b"\ndata: ")
                check_event(head.removeprefix(b"event: ").decode(), data)
    elif status >= 400:
        check_error(body)
    elif path.endswith("/count_tokens"):
        _strict(MessageTokensCount, body, "count_tokens")
    else:
        check_message(body)
