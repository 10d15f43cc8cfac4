"""OpenAI chat and completions replies on the neuron: the bodies and the SSE frames (§2.16, §2.18).

Pure: a finished (or streaming) parse and the usage in, JSON objects or frame bytes out. Frames
are built from a pre-serialised head so a delta costs one small `orjson.dumps`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from helexa.neuron.parse import ContentDelta, Event, OutputParser, ReasoningDelta, ToolCall, new_id
from helexa.wire import sse
from helexa.wire.errors import ApiError


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    reasoning_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def chat(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "completion_tokens_details": {"reasoning_tokens": self.reasoning_tokens},
            "prompt_tokens_details": {"cached_tokens": 0},
        }

    def completion(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }

    def responses(self) -> dict[str, Any]:
        return {
            "input_tokens": self.prompt_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": self.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": self.reasoning_tokens},
            "total_tokens": self.total_tokens,
        }


def tool_call_json(call: ToolCall) -> dict[str, Any]:
    return {
        "id": call.id,
        "type": "function",
        "function": {"name": call.name, "arguments": call.arguments},
    }


def chat_completion(
    model: str,
    parser: OutputParser,
    usage: Usage,
    stop_reason: str | None = None,
    *,
    id: str | None = None,
    created: int | None = None,
) -> dict[str, Any]:
    """The non-streaming chat reply (§2.16) from a finished parser."""
    text = parser.content
    message: dict[str, Any] = {
        "role": "assistant",
        "content": None if parser.tool_calls and not text else text,
    }
    if parser.reasoning:
        message["reasoning_content"] = parser.reasoning
    if parser.tool_calls:
        message["tool_calls"] = [tool_call_json(c) for c in parser.tool_calls]
    return {
        "id": id or new_id("chatcmpl-"),
        "object": "chat.completion",
        "created": created if created is not None else int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": parser.finish_reason,
                "stop_reason": stop_reason,
                "logprobs": None,
            }
        ],
        "usage": usage.chat(),
    }


class _Chunks:
    """Shared framing: every chunk is `{id, object, created, model, choices, …}` as one line.
    With `include_usage` (the client's `stream_options`) a last chunk has `choices: []` and the
    usage; without it there is none. OpenAI also puts `"usage": null` on every other chunk when
    asked; we leave the key out (the SDKs' chunk types make it optional), because cortex always
    asks, to meter, and finds the usage chunk by its `"usage"` key without parsing each frame."""

    __slots__ = ("_head", "created", "id", "include_usage", "model")
    OBJECT = ""
    ID_PREFIX = ""

    def __init__(
        self,
        model: str,
        *,
        include_usage: bool = False,
        id: str | None = None,
        created: int | None = None,
    ) -> None:
        self.id = id or new_id(self.ID_PREFIX)
        self.model = model
        self.created = created if created is not None else int(time.time())
        self.include_usage = include_usage
        head = orjson.dumps(
            {"id": self.id, "object": self.OBJECT, "created": self.created, "model": model}
        )
        self._head = b"data: " + head[:-1] + b',"choices":'

    def _frame(self, choice: dict[str, Any]) -> bytes:
        return self._head + b"[" + orjson.dumps(choice) + b"]}\n\n"

    def usage_frame(self, usage: dict[str, Any]) -> bytes:
        """The usage chunk, or nothing when the client didn't ask for it."""
        if not self.include_usage:
            return b""
        return self._head + b'[],"usage":' + orjson.dumps(usage) + b"}\n\n"


class ChatStream(_Chunks):
    """Chat SSE frames per the §2.16 grammar: `first`, then `events(...)` for each parser
    batch, then `end(...)` (final chunk, usage chunk if asked, `[DONE]`). A fault:
    `error_frame(err)`."""

    __slots__ = ()
    OBJECT = "chat.completion.chunk"
    ID_PREFIX = "chatcmpl-"

    def _delta(self, delta: dict[str, Any]) -> bytes:
        return self._frame({"index": 0, "delta": delta, "finish_reason": None})

    def first(self) -> bytes:
        return self._delta({"role": "assistant", "content": ""})

    def events(self, events: Iterable[Event]) -> bytes:
        out: list[bytes] = []
        for ev in events:
            if isinstance(ev, ContentDelta):
                out.append(self._delta({"content": ev.text}))
            elif isinstance(ev, ReasoningDelta):
                out.append(self._delta({"reasoning_content": ev.text}))
            else:
                head = {
                    "index": ev.index,
                    "id": ev.id,
                    "type": "function",
                    "function": {"name": ev.name, "arguments": ""},
                }
                out.append(self._delta({"tool_calls": [head]}))
                args = {"index": ev.index, "function": {"arguments": ev.arguments}}
                out.append(self._delta({"tool_calls": [args]}))
        return b"".join(out)

    def final(self, finish_reason: str, stop_reason: str | None = None) -> bytes:
        return self._frame(
            {"index": 0, "delta": {}, "finish_reason": finish_reason, "stop_reason": stop_reason}
        )

    def usage(self, usage: Usage) -> bytes:
        return self.usage_frame(usage.chat())

    def end(self, finish_reason: str, stop_reason: str | None, usage: Usage) -> bytes:
        return self.final(finish_reason, stop_reason) + self.usage(usage) + sse.DONE


def completion(
    model: str,
    text: str,
    finish_reason: str,
    usage: Usage,
    *,
    id: str | None = None,
    created: int | None = None,
) -> dict[str, Any]:
    return {
        "id": id or new_id("cmpl-"),
        "object": "text_completion",
        "created": created if created is not None else int(time.time()),
        "model": model,
        "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}],
        "usage": usage.completion(),
    }


class CompletionStream(_Chunks):
    """Completion SSE: `text(...)` per delta, then `end(...)` (a frame with the finish reason,
    the usage chunk if asked, `[DONE]`)."""

    __slots__ = ()
    OBJECT = "text_completion"
    ID_PREFIX = "cmpl-"

    def text(self, text: str) -> bytes:
        return self._frame({"index": 0, "text": text, "logprobs": None, "finish_reason": None})

    def final(self, finish_reason: str) -> bytes:
        return self._frame(
            {"index": 0, "text": "", "logprobs": None, "finish_reason": finish_reason}
        )

    def usage(self, usage: Usage) -> bytes:
        return self.usage_frame(usage.completion())

    def end(self, finish_reason: str, usage: Usage) -> bytes:
        return self.final(finish_reason) + self.usage(usage) + sse.DONE


def error_frame(err: ApiError) -> bytes:
    """A mid-stream fault on chat/completions (§2.11): the error frame, then `[DONE]`."""
    return sse.data_frame(err.openai_body()) + sse.DONE
