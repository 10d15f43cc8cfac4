"""OpenAI chat SSE → Anthropic Messages SSE, one upstream event at a time.

A state machine with no I/O: the caller feeds each upstream `data:` payload and writes whatever
bytes come back. The grammar it guarantees, whatever the input:

    message_start (content_block_start content_block_delta* content_block_stop)*
    (message_delta message_stop | error)
"""

from __future__ import annotations

import logging
import secrets
import string
from typing import Any

import orjson

from helexa.translate.response import stop_reason
from helexa.wire import sse

log = logging.getLogger("helexa.translate")
_ALNUM = string.ascii_letters + string.digits
OVERLOADED_CODES = frozenset({"service_unavailable", "model_not_ready"})
PING = sse.event_frame("ping", b'{"type":"ping"}')


def _ev(name: str, obj: dict[str, Any]) -> bytes:
    return sse.event_frame(name, orjson.dumps(obj))


def error_event(message: str, error_type: str = "api_error") -> bytes:
    return _ev("error", {"type": "error", "error": {"type": error_type, "message": message}})


class AnthropicStream:
    __slots__ = (
        "_kind",
        "_open_tool",
        "_tool_blocks",
        "deltas",
        "failed",
        "finish_reason",
        "finished",
        "index",
        "matched_stop",
        "model",
        "msg_id",
        "prompt_tokens",
        "saw_tool",
        "usage",
    )

    def __init__(self, model: str, msg_id: str, prompt_tokens: int) -> None:
        self.model = model
        self.msg_id = msg_id
        self.prompt_tokens = prompt_tokens
        self.index = -1
        self._kind: str | None = None  # kind of the open block: thinking | text | tool_use
        self._open_tool: int | None = None
        self._tool_blocks: dict[int, int] = {}
        self.finish_reason: str | None = None
        self.matched_stop: Any = None
        self.usage: dict[str, Any] | None = None
        self.deltas = 0
        self.saw_tool = False
        self.finished = False  # message_stop or error sent: nothing more may follow
        self.failed = False  # it was an error

    def start(self) -> bytes:
        message: dict[str, Any] = {
            "id": self.msg_id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": self.prompt_tokens, "output_tokens": 0},
        }
        return _ev("message_start", {"type": "message_start", "message": message})

    # -- input ------------------------------------------------------------------------------

    def feed(self, data: bytes) -> bytes:
        """One upstream `data:` payload (JSON or `[DONE]`) → Anthropic event bytes."""
        if self.finished:
            return b""
        if data.strip() == b"[DONE]":
            return self._close()
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            log.warning("skipping unparsable upstream SSE payload: %.200r", data)
            return b""
        if not isinstance(obj, dict):
            return b""
        if "error" in obj and isinstance(obj["error"], dict):
            err = obj["error"]
            kind = "overloaded_error" if err.get("code") in OVERLOADED_CODES else "api_error"
            return self.fail(str(err.get("message") or "upstream error"), kind)
        out: list[bytes] = []
        if isinstance(obj.get("usage"), dict):
            self.usage = obj["usage"]
        choices = obj.get("choices")
        if isinstance(choices, list) and choices and isinstance(choices[0], dict):
            self._choice(choices[0], out)
        return b"".join(out)

    def end(self) -> bytes:
        """The upstream closed: a finished generation closes, anything else is an error."""
        if self.finished:
            return b""
        if self.finish_reason is not None:
            return self._close()
        return self.fail("upstream connection lost mid-stream")

    def fail(self, message: str, error_type: str = "api_error") -> bytes:
        if self.finished:
            return b""
        self.finished = self.failed = True
        return error_event(message, error_type)

    # -- the machine ------------------------------------------------------------------------

    def _choice(self, choice: dict[str, Any], out: list[bytes]) -> None:
        delta = choice.get("delta")
        if isinstance(delta, dict):
            reasoning = delta.get("reasoning_content")
            if isinstance(reasoning, str) and reasoning:
                self._open(out, "thinking", {"type": "thinking", "thinking": "", "signature": ""})
                self._delta(out, {"type": "thinking_delta", "thinking": reasoning})
            content = delta.get("content")
            if isinstance(content, str) and content:
                self._open(out, "text", {"type": "text", "text": ""})
                self._delta(out, {"type": "text_delta", "text": content})
            calls = delta.get("tool_calls")
            if isinstance(calls, list):
                for call in calls:
                    if isinstance(call, dict):
                        self._tool_call(call, out)
        if choice.get("finish_reason") is not None:
            self.finish_reason = choice["finish_reason"]
            self.matched_stop = choice.get("stop_reason")

    def _tool_call(self, call: dict[str, Any], out: list[bytes]) -> None:
        k = call.get("index", 0)
        k = k if isinstance(k, int) else 0
        fn_raw = call.get("function")
        fn: dict[str, Any] = fn_raw if isinstance(fn_raw, dict) else {}
        if k not in self._tool_blocks:
            self._close_block(out)
            self.index += 1
            self._tool_blocks[k] = self.index
            self._kind, self._open_tool = "tool_use", k
            self.saw_tool = True
            block: dict[str, Any] = {
                "type": "tool_use",
                "id": call.get("id")
                or "call_" + "".join(secrets.choice(_ALNUM) for _ in range(24)),
                "name": fn.get("name") or "",
                "input": {},
            }
            out.append(
                _ev(
                    "content_block_start",
                    {"type": "content_block_start", "index": self.index, "content_block": block},
                )
            )
        args = fn.get("arguments")
        if isinstance(args, dict):
            args = orjson.dumps(args).decode()
        if not isinstance(args, str) or not args:
            return
        if self._kind != "tool_use" or self._open_tool != k:
            log.warning("dropping arguments for tool call %d after its block closed", k)
            return
        self._delta(out, {"type": "input_json_delta", "partial_json": args})

    def _open(self, out: list[bytes], kind: str, block: dict[str, Any]) -> None:
        if self._kind == kind:
            return
        self._close_block(out)
        self.index += 1
        self._kind = kind
        out.append(
            _ev(
                "content_block_start",
                {"type": "content_block_start", "index": self.index, "content_block": block},
            )
        )

    def _delta(self, out: list[bytes], delta: dict[str, Any]) -> None:
        self.deltas += 1
        out.append(
            _ev(
                "content_block_delta",
                {"type": "content_block_delta", "index": self.index, "delta": delta},
            )
        )

    def _close_block(self, out: list[bytes]) -> None:
        if self._kind is None:
            return
        out.append(_ev("content_block_stop", {"type": "content_block_stop", "index": self.index}))
        self._kind = None
        self._open_tool = None

    def _close(self) -> bytes:
        out: list[bytes] = []
        self._close_block(out)
        reason, seq = stop_reason(self.finish_reason, self.matched_stop, self.saw_tool)
        u = self.usage or {}
        prompt = u.get("prompt_tokens")
        completion = u.get("completion_tokens")
        usage = {
            "input_tokens": prompt if isinstance(prompt, int) else self.prompt_tokens,
            "output_tokens": completion if isinstance(completion, int) else self.deltas,
        }
        out.append(
            _ev(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": reason, "stop_sequence": seq},
                    "usage": usage,
                },
            )
        )
        out.append(_ev("message_stop", {"type": "message_stop"}))
        self.finished = True
        return b"".join(out)
