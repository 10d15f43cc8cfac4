"""Server-sent event framing: the two framings of contract §0.2, as bytes."""

from __future__ import annotations

DONE = b"data: [DONE]\n\n"
HEADERS = {"content-type": "text/event-stream", "cache-control": "no-cache"}


def data_frame(payload: bytes) -> bytes:
    """OpenAI framing: `data: <json>`."""
    return b"data: " + payload + b"\n\n"


def event_frame(name: str, payload: bytes) -> bytes:
    """Responses/Anthropic framing: `event: <name>` then `data: <json>`."""
    return b"event: " + name.encode() + b"\ndata: " + payload + b"\n\n"
