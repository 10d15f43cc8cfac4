"""What every provider shares: the stream items, the error type, and one SSE POST over aiohttp.

A provider turns the neutral history into one wire API's request and that API's stream back
into `Delta`s and a final `Done`; the HTTP, timeout and error handling live here once.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import aiohttp
import orjson

from helexa.acp.history import Message, ToolCall, new_call_id
from helexa.acp.tools import ToolSpec
from helexa.wire.sse import SSEDecoder

TIMEOUT_S = 600.0
Stop = Literal["end_turn", "max_tokens", "refusal", "tool_use"]
ERROR_BODY_CAP = 4096


class ProviderError(Exception):
    """The endpoint failed (down, an HTTP error, a broken stream): one clear sentence."""


@dataclass
class Delta:
    """Streamed text, or reasoning when `thought`."""

    text: str
    thought: bool = False


@dataclass
class Done:
    """The complete assistant message and why the model stopped."""

    message: Message
    stop: Stop


class Provider(Protocol):
    def stream(
        self, history: list[Message], tools: list[ToolSpec], model: str, max_tokens: int | None
    ) -> AsyncIterator[Delta | Done]:
        """Deltas as they arrive, then exactly one Done; ProviderError on failure."""
        ...


def system_text(history: list[Message]) -> str:
    """The system prompt(s), for APIs that take it outside the message list."""
    return "\n\n".join(m.content for m in history if m.role == "system")


def error_text(parsed: Any) -> str | None:
    """The `error.message` (or `error` string) an OpenAI/Anthropic error object carries."""
    err = parsed.get("error") if isinstance(parsed, dict) else None
    if isinstance(err, dict) and isinstance(err.get("message"), str):
        return str(err["message"])
    return err if isinstance(err, str) and err else None


def _error_body(body: bytes) -> str:
    try:
        found = error_text(orjson.loads(body))
    except orjson.JSONDecodeError:
        found = None
    return found or body.decode(errors="replace").strip() or "(empty body)"


async def sse_post(
    url: str, headers: dict[str, str], body: dict[str, Any], timeout_s: float = TIMEOUT_S
) -> AsyncGenerator[tuple[str | None, Any]]:
    """POST `body` and yield `(event name, parsed data)` per SSE frame (`[DONE]` as the str).

    Closing the generator (a cancelled turn) closes the connection, which stops the model."""
    # A bound on silence, not on the whole reply: a long answer that keeps streaming is fine.
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=timeout_s, sock_read=timeout_s)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.post(url, data=orjson.dumps(body), headers=_json(headers)) as resp,
        ):
            if resp.status >= 400:
                raw = await resp.content.read(ERROR_BODY_CAP)
                msg = _error_body(raw)
                raise ProviderError(f"{url} answered HTTP {resp.status}: {msg}")
            decoder = SSEDecoder()
            async for chunk in resp.content.iter_any():
                for name, data in decoder.feed(chunk):
                    yield name, _data(data)
    except TimeoutError:  # before ClientError: aiohttp's socket timeouts are both
        raise ProviderError(f"{url}: nothing received for {timeout_s:g} s") from None
    except aiohttp.ClientError as e:
        raise ProviderError(f"{url}: {e or type(e).__name__}") from None


def _json(headers: dict[str, str]) -> dict[str, str]:
    return {"content-type": "application/json", "accept": "text/event-stream", **headers}


def _data(data: bytes) -> Any:
    if data == b"[DONE]":
        return "[DONE]"
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        raise ProviderError(f"the stream sent a frame that is not JSON: {data[:200]!r}") from None


def stream_error(data: Any) -> ProviderError | None:
    """An `{"error": ...}` frame sent after the status, as a ProviderError."""
    found = error_text(data)
    return None if found is None else ProviderError(f"the endpoint failed mid-stream: {found}")


class Parser:
    """One wire API's stream: frames in, deltas out, and the final message."""

    def __init__(self) -> None:
        self.reply = Reply()
        self.finished = False  # the stream's own end marker was seen

    def feed(self, event: str | None, data: Any) -> list[Delta]:
        raise NotImplementedError

    def done(self) -> Done:
        """The whole reply; ProviderError if the stream ended before it was complete."""
        return self.reply.done(self.finished)


class HttpProvider:
    """A streaming POST to `{base_url}{path}`; subclasses say headers, body and parser."""

    path = ""

    def __init__(self, base_url: str, api_key: str | None, timeout_s: float = TIMEOUT_S) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.timeout_s = timeout_s

    def headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def body(
        self, history: list[Message], tools: list[ToolSpec], model: str, max_tokens: int | None
    ) -> dict[str, Any]:
        raise NotImplementedError

    def parser(self) -> Parser:
        raise NotImplementedError

    async def stream(
        self, history: list[Message], tools: list[ToolSpec], model: str, max_tokens: int | None
    ) -> AsyncIterator[Delta | Done]:
        parser = self.parser()
        body = self.body(history, tools, model, max_tokens)
        frames = sse_post(self.base_url + self.path, self.headers(), body, self.timeout_s)
        async with contextlib.aclosing(frames):
            async for name, data in frames:
                try:
                    deltas = parser.feed(name, data)
                except (AttributeError, TypeError, KeyError):
                    raise ProviderError(
                        f"the stream sent a frame of an unexpected shape: {data!r:.200}"
                    ) from None
                for delta in deltas:
                    yield delta
                if parser.finished:
                    break
        yield parser.done()


@dataclass
class _PartialCall:
    id: str
    name: str
    args: list[str]


class Reply:
    """The assistant message being assembled from a stream, keyed tool calls included."""

    def __init__(self) -> None:
        self.text: list[str] = []
        self.reasoning: list[str] = []
        self.calls: dict[object, _PartialCall] = {}
        self.stop: Stop | None = None

    def say(self, text: object, thought: bool = False) -> list[Delta]:
        if not isinstance(text, str) or not text:
            return []
        (self.reasoning if thought else self.text).append(text)
        return [Delta(text, thought)]

    def call(
        self, key: object, id: object = None, name: object = None, args: object = None
    ) -> None:
        """Start or extend the tool call `key` (an index or item id)."""
        part = self.calls.get(key)
        if part is None:
            part = self.calls[key] = _PartialCall("", "", [])
        if isinstance(id, str) and id:
            part.id = id
        if isinstance(name, str) and name:
            part.name = name
        if isinstance(args, str):
            part.args.append(args)

    def done(self, complete: bool) -> Done:
        if not complete or self.stop is None:
            raise ProviderError("the stream ended before the reply was complete")
        calls = [
            ToolCall(p.id or new_call_id(), p.name, "".join(p.args)) for p in self.calls.values()
        ]
        msg = Message("assistant", "".join(self.text), "".join(self.reasoning), calls)
        stop: Stop = "tool_use" if calls and self.stop == "end_turn" else self.stop
        return Done(msg, stop)
