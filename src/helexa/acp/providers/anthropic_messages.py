"""Anthropic Messages (`POST /messages`, streamed): `x-api-key` and `anthropic-version`, the
system prompt outside the messages, tool calls as `tool_use` blocks, results as `tool_result`."""

from __future__ import annotations

from typing import Any

from helexa.acp.hermes import loads_tolerant
from helexa.acp.history import Message
from helexa.acp.providers.base import (
    Delta,
    HttpProvider,
    Parser,
    ProviderError,
    Stop,
    error_text,
    system_text,
)
from helexa.acp.tools import ToolSpec

VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 8192  # the API requires max_tokens; used when the endpoint sets none
STOPS: dict[str, Stop] = {
    "end_turn": "end_turn",
    "stop_sequence": "end_turn",
    "pause_turn": "end_turn",
    "max_tokens": "max_tokens",
    "model_context_window_exceeded": "max_tokens",
    "tool_use": "tool_use",
    "refusal": "refusal",
}


def _image(url: str) -> dict[str, Any]:
    """A `data:` URL as a base64 image block; any other URL as a URL source."""
    if url.startswith("data:") and ";base64," in url:
        media, data = url[5:].split(";base64,", 1)
        return {"type": "image", "source": {"type": "base64", "media_type": media, "data": data}}
    return {"type": "image", "source": {"type": "url", "url": url}}


def _input(arguments: str) -> Any:
    try:
        parsed = loads_tolerant(arguments) if arguments.strip() else {}
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _blocks(m: Message) -> list[dict[str, Any]]:
    if m.role == "tool":
        return [{"type": "tool_result", "tool_use_id": m.tool_call_id or "", "content": m.content}]
    blocks: list[dict[str, Any]] = [{"type": "text", "text": m.content}] if m.content else []
    blocks += [_image(u) for u in m.images]
    blocks += [
        {"type": "tool_use", "id": c.id, "name": c.name, "input": _input(c.arguments)}
        for c in m.tool_calls
    ]
    return blocks


def render(history: list[Message]) -> list[dict[str, Any]]:
    """Messages with tool results as user turns; adjacent turns of one role merged, as the API
    wants strictly alternating roles."""
    out: list[dict[str, Any]] = []
    for m in history:
        if m.role == "system":
            continue
        role = "assistant" if m.role == "assistant" else "user"
        blocks = _blocks(m)
        if not blocks:
            continue
        if out and out[-1]["role"] == role:
            out[-1]["content"] += blocks
        else:
            out.append({"role": role, "content": blocks})
    return out


class MessagesParser(Parser):
    def feed(self, event: str | None, data: Any) -> list[Delta]:
        if not isinstance(data, dict):
            return []
        kind = data.get("type") or event
        if kind == "content_block_start":
            block = data.get("content_block") or {}
            if block.get("type") == "tool_use":
                self.reply.call(data.get("index"), block.get("id"), block.get("name"), None)
            return self.reply.say(block.get("text")) + self.reply.say(block.get("thinking"), True)
        if kind == "content_block_delta":
            delta = data.get("delta") or {}
            if delta.get("type") == "input_json_delta":
                self.reply.call(data.get("index"), None, None, delta.get("partial_json"))
                return []
            return self.reply.say(delta.get("text")) + self.reply.say(delta.get("thinking"), True)
        if kind == "message_delta":
            reason = (data.get("delta") or {}).get("stop_reason")
            if reason:
                self.reply.stop = STOPS.get(reason, "end_turn")
        elif kind == "message_stop":
            self.finished = True
            self.reply.stop = self.reply.stop or "end_turn"
        elif kind == "error":
            raise ProviderError(f"the endpoint failed mid-stream: {error_text(data) or 'error'}")
        return []


class AnthropicMessages(HttpProvider):
    path = "/messages"

    def headers(self) -> dict[str, str]:
        key = {"x-api-key": self.api_key} if self.api_key else {}
        return {"anthropic-version": VERSION, **key}

    def body(
        self, history: list[Message], tools: list[ToolSpec], model: str, max_tokens: int | None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": model,
            "messages": render(history),
            "max_tokens": max_tokens or DEFAULT_MAX_TOKENS,
            "stream": True,
        }
        if system := system_text(history):
            body["system"] = system
        if tools:
            body["tools"] = [
                {"name": t.name, "description": t.description, "input_schema": t.parameters}
                for t in tools
            ]
        return body

    def parser(self) -> MessagesParser:
        return MessagesParser()
