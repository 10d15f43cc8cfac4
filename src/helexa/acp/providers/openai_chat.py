"""OpenAI chat completions (`POST /chat/completions`, streamed): cortex's own dialect."""

from __future__ import annotations

from typing import Any

from helexa.acp.history import Message
from helexa.acp.providers.base import Delta, Done, HttpProvider, Parser, Stop, stream_error
from helexa.acp.tools import ToolSpec

FINISH: dict[str, Stop] = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}


def render(m: Message) -> dict[str, Any]:
    if m.role == "tool":
        return {"role": "tool", "tool_call_id": m.tool_call_id or "", "content": m.content}
    if m.role == "assistant":
        out: dict[str, Any] = {"role": "assistant", "content": m.content or None}
        if m.tool_calls:
            out["tool_calls"] = [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.name, "arguments": c.arguments},
                }
                for c in m.tool_calls
            ]
        return out
    if m.images:
        parts: list[dict[str, Any]] = [{"type": "text", "text": m.content}]
        parts += [{"type": "image_url", "image_url": {"url": u}} for u in m.images]
        return {"role": m.role, "content": parts}
    return {"role": m.role, "content": m.content}


class ChatParser(Parser):
    def feed(self, event: str | None, data: Any) -> list[Delta]:
        if data == "[DONE]":
            self.finished = True
            self.reply.stop = self.reply.stop or "end_turn"
            return []
        if (err := stream_error(data)) is not None:
            raise err
        out: list[Delta] = []
        for choice in data.get("choices") or []:
            delta = choice.get("delta") or {}
            out += self.reply.say(delta.get("reasoning_content") or delta.get("reasoning"), True)
            out += self.reply.say(delta.get("content"))
            for tc in delta.get("tool_calls") or []:
                fn = tc.get("function") or {}
                self.reply.call(
                    tc.get("index", 0), tc.get("id"), fn.get("name"), fn.get("arguments")
                )
            if choice.get("finish_reason"):
                self.reply.stop = FINISH.get(choice["finish_reason"], "end_turn")
        return out

    def done(self) -> Done:
        return self.reply.done(self.finished or self.reply.stop is not None)


class OpenAIChat(HttpProvider):
    path = "/chat/completions"

    def body(
        self, history: list[Message], tools: list[ToolSpec], model: str, max_tokens: int | None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": model,
            "messages": [render(m) for m in history],
            "stream": True,
        }
        if tools:
            body["tools"] = [
                {
                    "type": "function",
                    "function": {
                        "name": t.name,
                        "description": t.description,
                        "parameters": t.parameters,
                    },
                }
                for t in tools
            ]
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        return body

    def parser(self) -> ChatParser:
        return ChatParser()
