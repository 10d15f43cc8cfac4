"""OpenAI chat completion → Anthropic message. Pure."""

from __future__ import annotations

import logging
import secrets
import string
from typing import Any

import orjson

log = logging.getLogger("helexa.translate")
_ALNUM = string.ascii_letters + string.digits


def message_id() -> str:
    return "msg_" + "".join(secrets.choice(_ALNUM) for _ in range(24))


def stop_reason(
    finish_reason: str | None, matched: Any, has_tool_calls: bool
) -> tuple[str, str | None]:
    """Tool use beats the finish reason, except when the output cap was hit."""
    if finish_reason == "length":
        return "max_tokens", None
    if has_tool_calls:
        return "tool_use", None
    if finish_reason == "stop" and isinstance(matched, str):
        return "stop_sequence", matched
    return "end_turn", None


def parse_arguments(args: Any) -> dict[str, Any]:
    """Tool-call arguments arrive as a JSON string (or already an object)."""
    if isinstance(args, dict):
        return args
    if isinstance(args, str):
        try:
            parsed = orjson.loads(args) if args.strip() else {}
        except orjson.JSONDecodeError:
            parsed = None
        if isinstance(parsed, dict):
            return parsed
    log.warning("unparsable tool-call arguments replaced by {}: %.200r", args)
    return {}


def usage_of(usage: Any) -> dict[str, int]:
    u = usage if isinstance(usage, dict) else {}
    prompt = _int(u.get("prompt_tokens"))
    details = u.get("prompt_tokens_details")
    cached = _int(details.get("cached_tokens")) if isinstance(details, dict) else 0
    return {
        "input_tokens": max(0, prompt - cached),
        "output_tokens": _int(u.get("completion_tokens")),
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cached,
    }


def _int(v: Any) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) else 0


def translate_response(completion: Any, model: str, msg_id: str) -> dict[str, Any]:
    """Raises ValueError when the upstream body is not a chat completion."""
    if not isinstance(completion, dict):
        raise ValueError("completion is not an object")
    choices = completion.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise ValueError("completion has no choices")
    choice = choices[0]
    msg = choice.get("message")
    if not isinstance(msg, dict):
        raise ValueError("choice has no message")
    content: list[dict[str, Any]] = []
    reasoning = msg.get("reasoning_content")
    if isinstance(reasoning, str) and reasoning:
        content.append({"type": "thinking", "thinking": reasoning, "signature": ""})
    text = msg.get("content")
    if isinstance(text, str) and text:
        content.append({"type": "text", "text": text})
    calls = msg.get("tool_calls") or []
    for call in calls if isinstance(calls, list) else []:
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict):
            continue
        content.append(
            {
                "type": "tool_use",
                "id": call.get("id") or "",
                "name": fn.get("name") or "",
                "input": parse_arguments(fn.get("arguments")),
            }
        )
    has_tools = any(b["type"] == "tool_use" for b in content)
    reason, seq = stop_reason(choice.get("finish_reason"), choice.get("stop_reason"), has_tools)
    return {
        "id": msg_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": reason,
        "stop_sequence": seq,
        "usage": usage_of(completion.get("usage")),
    }
