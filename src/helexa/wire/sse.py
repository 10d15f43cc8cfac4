"""Server-sent event framing: OpenAI's `data:` and the named `event:` framing, as bytes."""

from __future__ import annotations

from helexa.wire.errors import ApiError

DONE = b"data: [DONE]\n\n"
HEADERS = {"content-type": "text/event-stream", "cache-control": "no-cache"}


def data_frame(payload: bytes) -> bytes:
    """OpenAI framing: `data: <json>`."""
    return b"data: " + payload + b"\n\n"


def event_frame(name: str, payload: bytes) -> bytes:
    """Responses/Anthropic framing: `event: <name>` then `data: <json>`."""
    return b"event: " + name.encode() + b"\ndata: " + payload + b"\n\n"


def error_frame(err: ApiError) -> bytes:
    """A fault after the status was sent, on the OpenAI-framed routes: the error, then `[DONE]`."""
    return data_frame(err.openai_body()) + DONE


class SSEDecoder:
    """Incremental SSE parser: feed raw bytes as they arrive, get whole events back.

    Yields `(event, data)` per event; `event` is None for plain `data:` frames. Only the parts of
    the SSE grammar that OpenAI-style servers emit are interpreted (`event:`, `data:`, comments).
    """

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, chunk: bytes) -> list[tuple[str | None, bytes]]:
        buf = self._buf + chunk if self._buf else chunk
        if b"\r" in buf:
            buf = buf.replace(b"\r\n", b"\n")
        events: list[tuple[str | None, bytes]] = []
        start = 0
        while True:
            end = buf.find(b"\n\n", start)
            if end < 0:
                break
            ev = _parse_event(buf[start:end])
            if ev is not None:
                events.append(ev)
            start = end + 2
        self._buf = buf[start:]
        return events


def _parse_event(block: bytes) -> tuple[str | None, bytes] | None:
    name: str | None = None
    data: list[bytes] = []
    for line in block.split(b"\n"):
        if line.startswith(b"data:"):
            data.append(line[6:] if line[5:6] == b" " else line[5:])
        elif line.startswith(b"event:"):
            name = line[6:].strip().decode(errors="replace")
    if not data and name is None:
        return None
    return name, b"\n".join(data)
