"""Usage on chat/completions streams: cortex always meters, the client sees it only when asked.

OpenAI sends the usage-only chunk (`choices: []`) only with `stream_options.include_usage`, and
clients index `chunk.choices[0]` otherwise. cortex asks the neuron for it anyway, lets the token
observer read it, and drops that one frame on the way out.
"""

from __future__ import annotations

from typing import Any

import orjson

from helexa.cortex import errors

USAGE_PATHS = frozenset({"/v1/chat/completions", "/v1/completions"})
_ASK = b',"stream_options":{"include_usage":true}}'
_USAGE_KEY = b'"usage"'
_END = b"\n\n"


def ask_upstream(path: str, obj: dict[str, Any], body: bytes) -> tuple[bool, bytes]:
    """(whether to strip the usage chunk, the body to forward). `body` must be `obj` serialised;
    `obj` is updated too, so a later re-serialisation keeps the request."""
    if path not in USAGE_PATHS or obj.get("stream") is not True:
        return False, body
    if "stream_options" not in obj:
        obj["stream_options"] = {"include_usage": True}
        return True, body.rstrip()[:-1] + _ASK  # splice: no re-serialisation of a long prompt
    opts = obj["stream_options"]
    if opts is None:
        opts = {}
    if not isinstance(opts, dict):
        raise errors.invalid_value("stream_options", "'stream_options' must be an object")
    if opts.get("include_usage") is True:
        return False, body
    obj["stream_options"] = {**opts, "include_usage": True}
    return True, orjson.dumps(obj)


def _usage_only(frame: bytes) -> bool:
    line = frame.strip()
    if not line.startswith(b"data:"):
        return False
    try:
        chunk = orjson.loads(line[5:])
    except orjson.JSONDecodeError:
        return False
    return isinstance(chunk, dict) and chunk.get("choices") == []


def without_usage_frames(buf: bytes) -> bytes:
    """`buf` (whole SSE frames) minus its usage-only frames. A raw `"usage"` can only be a JSON
    key (inside strings quotes are escaped), so frames without it are never parsed."""
    pos = buf.find(_USAGE_KEY)
    if pos < 0:
        return buf
    parts: list[bytes] = []
    start = 0
    while pos >= 0:
        head = buf.rfind(_END, start, pos)
        head = start if head < 0 else head + 2
        tail = buf.find(_END, pos)
        tail = len(buf) if tail < 0 else tail + 2
        if _usage_only(buf[head:tail]):
            parts.append(buf[start:head])
            start = tail
        pos = buf.find(_USAGE_KEY, tail)
    if not parts:
        return buf
    parts.append(buf[start:])
    return b"".join(parts)


class UsageStripper:
    """Relays whole SSE frames only (a frame split across reads waits for its end), minus the
    usage-only chunk. A stream of one frame per read passes with no copies."""

    __slots__ = ("pending",)

    def __init__(self) -> None:
        self.pending = b""

    def feed(self, chunk: bytes) -> bytes:
        buf = self.pending + chunk if self.pending else chunk
        cut = buf.rfind(_END) + 2
        if cut < 2:
            self.pending = buf
            return b""
        if cut < len(buf):
            self.pending = buf[cut:]
            buf = buf[:cut]
        else:
            self.pending = b""
        return without_usage_frames(buf)

    def flush(self) -> bytes:
        """What is left at the end of the stream (a last frame without its blank line)."""
        rest, self.pending = self.pending, b""
        return without_usage_frames(rest) if rest else rest
