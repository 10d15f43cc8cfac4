"""OpenAI Responses (`POST /responses`, streamed): system → `instructions`, max_tokens →
`max_output_tokens`, tool calls as `function_call` items."""

from __future__ import annotations

from typing import Any

from helexa.acp.history import Message
from helexa.acp.providers.base import (
    Delta,
    HttpProvider,
    Parser,
    ProviderError,
    error_text,
    system_text,
)
from helexa.acp.tools import ToolSpec


def render(m: Message) -> list[dict[str, Any]]:
    """One history message as Responses input items (system goes to `instructions`)."""
    if m.role == "system":
        return []
    if m.role == "tool":
        return [
            {"type": "function_call_output", "call_id": m.tool_call_id or "", "output": m.content}
        ]
    if m.role == "user":
        if not m.images:
            return [{"role": "user", "content": m.content}]
        parts: list[dict[str, Any]] = [{"type": "input_text", "text": m.content}]
        parts += [{"type": "input_image", "image_url": u} for u in m.images]
        return [{"role": "user", "content": parts}]
    items: list[dict[str, Any]] = []
    if m.content:
        items.append({"role": "assistant", "content": m.content})
    items += [
        {"type": "function_call", "call_id": c.id, "name": c.name, "arguments": c.arguments}
        for c in m.tool_calls
    ]
    return items


class ResponsesParser(Parser):
    def feed(self, event: str | None, data: Any) -> list[Delta]:
        if not isinstance(data, dict):
            return []
        kind = data.get("type") or event
        if kind == "response.output_text.delta":
            return self.reply.say(data.get("delta"))
        if kind in ("response.reasoning_text.delta", "response.reasoning_summary_text.delta"):
            return self.reply.say(data.get("delta"), True)
        if kind == "response.refusal.delta":
            self.reply.stop = "refusal"
            return self.reply.say(data.get("delta"))
        if kind in ("response.output_item.added", "response.output_item.done"):
            item = data.get("item") or {}
            if item.get("type") == "function_call":
                args = item.get("arguments") if kind == "response.output_item.done" else None
                key = item.get("id") or item.get("call_id")
                if args is not None and key in self.reply.calls:
                    self.reply.calls[key].args.clear()
                self.reply.call(key, item.get("call_id"), item.get("name"), args)
        elif kind == "response.function_call_arguments.delta":
            self.reply.call(data.get("item_id"), None, None, data.get("delta"))
        elif kind in ("response.completed", "response.incomplete"):
            self._finish(kind, data.get("response") or {})
        elif kind in ("response.failed", "error"):
            found = (
                error_text(data.get("response") or {}) or data.get("message") or error_text(data)
            )
            raise ProviderError(f"the endpoint failed mid-stream: {found or 'response.failed'}")
        return []

    def _finish(self, kind: str, response: dict[str, Any]) -> None:
        self.finished = True
        if self.reply.stop == "refusal":
            return
        reason = (response.get("incomplete_details") or {}).get("reason")
        if kind == "response.incomplete" and reason == "content_filter":
            self.reply.stop = "refusal"
        else:
            self.reply.stop = "max_tokens" if kind == "response.incomplete" else "end_turn"


class OpenAIResponses(HttpProvider):
    path = "/responses"

    def body(
        self, history: list[Message], tools: list[ToolSpec], model: str, max_tokens: int | None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": model,
            "input": [item for m in history for item in render(m)],
            "stream": True,
            "store": False,
        }
        if instructions := system_text(history):
            body["instructions"] = instructions
        if tools:
            body["tools"] = [
                {"type": "function", "name": t.name, "description": t.description}
                | {"parameters": t.parameters}
                for t in tools
            ]
        if max_tokens is not None:
            body["max_output_tokens"] = max_tokens
        return body

    def parser(self) -> ResponsesParser:
        return ResponsesParser()
