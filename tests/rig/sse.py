"""Reading server-sent events in tests, with the same decoder the code under test uses."""

from __future__ import annotations

import json
from typing import Any

import httpx
import orjson

from helexa.wire.sse import SSEDecoder


def named_events(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    """(event name, JSON data) per frame of an Anthropic or Responses stream; every frame must
    be named."""
    out = []
    for name, data in SSEDecoder().feed(raw):
        assert name is not None, f"a frame without an event name leaked: {data!r}"
        out.append((name, orjson.loads(data)))
    return out


async def sse_events(resp: httpx.Response) -> list[tuple[str | None, bytes]]:
    """Every (event, data) of a streamed httpx response, as it arrives."""
    dec = SSEDecoder()
    out: list[tuple[str | None, bytes]] = []
    async for chunk in resp.aiter_bytes():
        out.extend(dec.feed(chunk))
    return out


async def sse_data(resp: httpx.Response) -> list[Any]:
    """`data:` payloads of an OpenAI stream: JSON objects, and the string "[DONE]"."""
    out: list[Any] = []
    for _, data in await sse_events(resp):
        out.append("[DONE]" if data == b"[DONE]" else json.loads(data))
    return out
