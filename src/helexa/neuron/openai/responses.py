"""OpenAI Responses on the neuron: request → chat, and the reply and its events.

Pure. A Responses request becomes a `ChatRequest` (so the daemon renders and generates it like
any chat), plus the fields the reply object echoes. Replies are built from the same parser
events as chat, so reasoning and tool calls come out of one parse.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from helexa.neuron.openai.chat import (
    ChatRequest,
    check_part,
    check_tool_choice,
)
from helexa.neuron.openai.common import (
    invalid_value,
    parse_sampling,
    require_model,
    response_schema,
)
from helexa.neuron.openai.params import (
    RESPONSES_REFUSED,
    refuse,
    thinking_kwargs,
    unsupported_parameter,
)

_TEXT_PARTS = ("input_text", "output_text")
_MESSAGE_ROLES = ("user", "assistant", "system", "developer")
_ITEM_TYPES = ("message", "function_call", "function_call_output", "reasoning")


@dataclass(slots=True)
class ResponsesRequest:
    """`chat` is what to render and generate; `echo` is the request's part of the reply object
    (what was used: the Open Responses `ResponseResource` fields)."""

    chat: ChatRequest
    echo: dict[str, Any] = field(default_factory=dict)

    @property
    def model(self) -> str:
        return self.chat.model

    @property
    def stream(self) -> bool:
        return self.chat.stream


# -- request ------------------------------------------------------------------------------------


def _text_of(content: Any, where: str, model: str, vision: bool) -> str | list[dict[str, Any]]:
    """Message content: a string, or parts (text parts joined with "\\n" unless there's an
    image, which needs the parts form)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise invalid_value(where, "must be a string or an array of content parts")
    allowed = (*_TEXT_PARTS, "input_image", "refusal")
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        kind = check_part(part, f"{where}[{j}]", model, vision, allowed)
        if kind in _TEXT_PARTS:
            parts.append({"type": "text", "text": part["text"]})
        elif kind == "refusal":
            refusal = part.get("refusal")
            if isinstance(refusal, str):
                parts.append({"type": "text", "text": refusal})
        else:
            url = part.get("image_url")
            if not isinstance(url, str):
                raise invalid_value(f"{where}[{j}].image_url", "must be a string")
            parts.append({"type": "image_url", "image_url": {"url": url}})
    if all(p["type"] == "text" for p in parts):
        return "\n".join(p["text"] for p in parts)
    return parts


def _string(item: dict[str, Any], key: str, where: str) -> str:
    v = item.get(key)
    if not isinstance(v, str) or not v:
        raise invalid_value(f"{where}.{key}", "must be a non-empty string")
    return v


def _arguments(v: Any, where: str) -> str:
    if isinstance(v, dict):
        return orjson.dumps(v).decode()
    if isinstance(v, str):
        try:
            if isinstance(orjson.loads(v), dict):
                return v
        except orjson.JSONDecodeError:
            pass
    raise invalid_value(where, "must be a string holding a JSON object")


def input_messages(body: dict[str, Any], model: str, vision: bool = False) -> list[dict[str, Any]]:
    """`instructions` + `input` → chat messages."""
    messages: list[dict[str, Any]] = []
    instructions = body.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            raise invalid_value("instructions", "must be a string")
        messages.append({"role": "system", "content": instructions})
    items = body.get("input")
    if isinstance(items, str):
        messages.append({"role": "user", "content": items})
        return messages
    if not isinstance(items, list) or not items:
        raise invalid_value("input", "must be a string or a non-empty array of items")
    for i, item in enumerate(items):
        at = f"input[{i}]"
        if not isinstance(item, dict):
            raise invalid_value(at, "must be an object")
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in _MESSAGE_ROLES:
                raise invalid_value(f"{at}.role", "must be one of " + ", ".join(_MESSAGE_ROLES))
            content = _text_of(item.get("content"), f"{at}.content", model, vision)
            messages.append({"role": role, "content": content})
        elif kind == "function_call":
            call = {
                "id": _string(item, "call_id", at),
                "type": "function",
                "function": {
                    "name": _string(item, "name", at),
                    "arguments": _arguments(item.get("arguments"), f"{at}.arguments"),
                },
            }
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": "", "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output")
            if not isinstance(output, str):
                output = _text_of(output, f"{at}.output", model, False)
            messages.append(
                {"role": "tool", "tool_call_id": _string(item, "call_id", at), "content": output}
            )
        elif kind == "reasoning":
            continue
        elif kind == "item_reference":
            raise unsupported_parameter(
                "input", "item_reference is not supported: this server does not store responses"
            )
        else:
            raise invalid_value(f"{at}.type", "must be one of " + ", ".join(_ITEM_TYPES))
    return messages


def _tools(tools: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Flat function tools → (chat-form tools, their reply echo). (The nested chat form is
    accepted too.)"""
    if tools is None:
        return [], []
    if not isinstance(tools, list):
        raise invalid_value("tools", "must be an array")
    out: list[dict[str, Any]] = []
    echo: list[dict[str, Any]] = []
    for i, t in enumerate(tools):
        if not isinstance(t, dict):
            raise invalid_value(f"tools[{i}]", "must be an object")
        kind = t.get("type")
        if kind != "function":
            raise unsupported_parameter(
                "tools", f"tool type '{kind}' is not supported; only 'function' tools are"
            )
        src = t["function"] if isinstance(t.get("function"), dict) else t
        name = src.get("name")
        if not isinstance(name, str) or not name:
            raise invalid_value(f"tools[{i}].name", "must be a non-empty string")
        fn: dict[str, Any] = {"name": name}
        if isinstance(src.get("description"), str):
            fn["description"] = src["description"]
        params = src.get("parameters")
        if params is not None:
            if not isinstance(params, dict):
                raise invalid_value(f"tools[{i}].parameters", "must be an object")
            fn["parameters"] = params
        out.append({"type": "function", "function": fn})
        strict = src.get("strict")
        echo.append(
            {
                "type": "function",
                "name": name,
                "description": fn.get("description"),
                "parameters": params,
                "strict": strict if isinstance(strict, bool) else None,
            }
        )
    return out, echo


def _optional(body: dict[str, Any], key: str, kind: type, problem: str) -> Any:
    v = body.get(key)
    if v is not None and (not isinstance(v, kind) or (kind is int and isinstance(v, bool))):
        raise invalid_value(key, problem)
    return v


def _count(body: dict[str, Any], key: str) -> int | None:
    v = _optional(body, key, int, "must be an integer >= 1")
    if v is not None and v < 1:
        raise invalid_value(key, "must be an integer >= 1")
    return v


def _text(body: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """`text` → (its echo, the JSON schema `text.format` asks for); the default verbosity
    only (which is all we do)."""
    text = _optional(body, "text", dict, "must be an object") or {}
    fmt = text.get("format")
    schema = response_schema(fmt, "text.format")
    verbosity = text.get("verbosity")
    if verbosity not in (None, "medium"):
        raise unsupported_parameter(
            "text.verbosity", "'text.verbosity' other than 'medium' is not supported"
        )
    return {"format": fmt if fmt is not None else {"type": "text"}, "verbosity": "medium"}, schema


def parse_responses(body: dict[str, Any], *, vision: bool = False) -> ResponsesRequest:
    """Check a `/v1/responses` body (params.py)."""
    model = require_model(body)
    refuse(body, RESPONSES_REFUSED)
    text, schema = _text(body)
    messages = input_messages(body, model, vision)
    tools, tools_echo = _tools(body.get("tools"))
    choice, named = check_tool_choice(body.get("tool_choice"), tools)
    ptc = _optional(body, "parallel_tool_calls", bool, "must be a boolean")
    max_out = _count(body, "max_output_tokens")
    max_calls = _count(body, "max_tool_calls")
    stream = _optional(body, "stream", bool, "must be a boolean")
    kwargs = _optional(body, "chat_template_kwargs", dict, "must be an object") or {}
    reasoning = _optional(body, "reasoning", dict, "must be an object") or {}
    effort = reasoning.get("effort")
    kwargs = thinking_kwargs(body, kwargs, effort, "reasoning.effort")
    metadata = _optional(body, "metadata", dict, "must be an object") or {}
    sampling = parse_sampling(body, full=False)
    chat = ChatRequest(
        model=model,
        messages=messages,
        tools=tools if tools and choice != "none" else None,
        tool_choice=choice,
        named_tool=named,
        parallel_tool_calls=ptc,
        schema=schema,
        chat_template_kwargs=kwargs,
        sampling=sampling,
        max_tokens=max_out,
        stream=bool(stream),
        max_tool_calls=max_calls,
        schema_param="text.format.schema",
        tools_param="tools[{i}].parameters",
    )
    echo = {
        "previous_response_id": None,
        "instructions": body.get("instructions"),
        "tools": tools_echo,
        "tool_choice": {"type": "function", "name": named} if named else choice or "auto",
        "truncation": "disabled",
        "parallel_tool_calls": True if ptc is None else ptc,
        "text": text,
        "top_p": 1.0 if sampling.top_p is None else sampling.top_p,
        "presence_penalty": sampling.presence_penalty or 0.0,
        "frequency_penalty": sampling.frequency_penalty or 0.0,
        "top_logprobs": 0,
        "temperature": 1.0 if sampling.temperature is None else sampling.temperature,
        "reasoning": {"effort": effort, "summary": None} if effort is not None else None,
        "user": _optional(body, "user", str, "must be a string"),
        "max_output_tokens": max_out,
        "max_tool_calls": max_calls,
        "store": False,
        "background": False,
        "service_tier": "default",
        "metadata": metadata,
        "safety_identifier": _optional(body, "safety_identifier", str, "must be a string"),
        "prompt_cache_key": _optional(body, "prompt_cache_key", str, "must be a string"),
    }
    return ResponsesRequest(chat=chat, echo=echo)
