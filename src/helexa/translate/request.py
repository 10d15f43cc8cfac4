"""Anthropic Messages request → OpenAI chat request. Pure.

Only fields the contract maps are copied, so `metadata`, `cache_control`, `context_management`
and friends are dropped by construction.

`role: "system"` messages (Claude Code sends one after the first user turn) become a system
message at the same position: the prompt prefix before it stays byte-identical, so the
neuron's prefix cache keeps working, and Qwen3-style templates render a late system turn as
such. Templates that only take a leading system message are the neuron's to handle (it folds
late ones into the first when the template rejects them). System messages before the first
turn join the top-level `system`.
"""

from __future__ import annotations

import re
from typing import Any, TypeVar

T = TypeVar("T")

# chat fields this translation fills from Anthropic ones, which a neuron's 400 may name
_CHAT_FIELDS = re.compile(
    r"response_format\.json_schema\.schema|tools\[(\d+)\]\.function\.parameters"
)


class TranslationError(ValueError):
    """A body the Anthropic API would reject; the text is the `{detail}` of the 400."""


def _require(cond: bool, detail: str) -> None:
    if not cond:
        raise TranslationError(detail)


def _get(obj: dict[str, Any], key: str, typ: type[T], detail: str, nonempty: bool = False) -> T:
    """obj[key] checked to be a `typ` (non-empty when asked), else a 400 with `detail`."""
    v = obj.get(key)
    if not isinstance(v, typ) or (isinstance(v, bool) and typ is not bool) or (nonempty and not v):
        raise TranslationError(detail)
    return v


def _blocks(content: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    _require(isinstance(content, list), f"{where}.content must be a string or an array of blocks")
    for i, b in enumerate(content):
        _require(
            isinstance(b, dict) and isinstance(b.get("type"), str),
            f"{where}.content[{i}] must be an object with a 'type'",
        )
    return content


def _text_of(block: dict[str, Any], where: str) -> str:
    return _get(block, "text", str, f"{where}: text block without a string 'text'")


# Claude Code opens its system prompt with a block `x-anthropic-billing-header: cc_version=…;`:
# metadata for Anthropic's billing, not an instruction, and at the very start of the prompt any
# change to it (a new client version, say) would defeat the whole prefix cache. Dropped.
BILLING_HEADER = "x-anthropic-billing-header:"


def _system(system: Any, where: str = "system") -> str:
    """Top-level `system` or a `role: "system"` message's content: a string or text blocks."""
    if isinstance(system, str):
        return system
    _require(isinstance(system, list), f"'{where}' must be a string or an array of text blocks")
    parts = []
    for i, b in enumerate(system):
        at = f"{where}[{i}]"
        _require(isinstance(b, dict), f"{at} must be an object")
        # Claude Code falls back when told a block is "not supported" in role 'system'.
        _require(
            b.get("type") == "text",
            f"{at}: block type '{b.get('type')}' is not supported in role 'system' content",
        )
        text = _text_of(b, at)
        if not text.startswith(BILLING_HEADER):
            parts.append(text)
    return "\n\n".join(parts)


def _image_part(block: dict[str, Any], where: str) -> dict[str, Any]:
    src = _get(block, "source", dict, f"{where}: image block without a 'source'")
    kind = src.get("type")
    if kind == "base64":
        media, data = src.get("media_type"), src.get("data")
        _require(
            isinstance(media, str) and isinstance(data, str),
            f"{where}: base64 image needs 'media_type' and 'data'",
        )
        url = f"data:{media};base64,{data}"
    elif kind == "url":
        url = _get(src, "url", str, f"{where}: url image needs a 'url'", nonempty=True)
    else:
        raise TranslationError(f"unsupported image source type '{kind}'")
    return {"type": "image_url", "image_url": {"url": url}}


def _tool_result_text(content: Any, where: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    _require(isinstance(content, list), f"{where}.content must be a string or an array of blocks")
    out = []
    for b in content:
        _require(isinstance(b, dict), f"{where}.content blocks must be objects")
        if b.get("type") == "text":
            out.append(_text_of(b, where))
        elif b.get("type") == "image":
            out.append("[image]")
        elif b.get("type") == "tool_reference":
            # Tool search (Claude Code's ToolSearch): the client also adds the tool to `tools`,
            # so the model only needs to read that it is there now.
            name = _get(b, "tool_name", str, f"{where}: tool_reference needs a 'tool_name'")
            out.append(f"Tool loaded: {name}")
        else:
            raise TranslationError(f"unsupported content block type '{b.get('type')}'")
    return "\n".join(out)


def _user(blocks: list[dict[str, Any]], where: str) -> list[dict[str, Any]]:
    """Tool results first (in block order), then the rest of the turn as one user message."""
    out: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for i, b in enumerate(blocks):
        at = f"{where}.content[{i}]"
        kind = b["type"]
        if kind == "text":
            parts.append({"type": "text", "text": _text_of(b, at)})
        elif kind == "image":
            parts.append(_image_part(b, at))
        elif kind == "tool_result":
            tid = b.get("tool_use_id")
            _require(isinstance(tid, str) and bool(tid), f"{at}: tool_result needs 'tool_use_id'")
            out.append(
                {
                    "role": "tool",
                    "tool_call_id": tid,
                    "content": _tool_result_text(b.get("content"), at),
                }
            )
        else:
            raise TranslationError(f"unsupported content block type '{kind}'")
    if parts:
        if len(parts) == 1 and parts[0]["type"] == "text":
            out.append({"role": "user", "content": parts[0]["text"]})
        else:
            out.append({"role": "user", "content": parts})
    return out


def _assistant(blocks: list[dict[str, Any]], where: str) -> dict[str, Any]:
    texts: list[str] = []
    thinking: list[str] = []
    calls: list[dict[str, Any]] = []
    for i, b in enumerate(blocks):
        at = f"{where}.content[{i}]"
        kind = b["type"]
        if kind == "text":
            texts.append(_text_of(b, at))
        elif kind == "thinking":
            thinking.append(_get(b, "thinking", str, f"{at}: thinking block needs 'thinking'"))
        elif kind == "redacted_thinking":
            continue
        elif kind == "tool_use":
            tid, name, args = b.get("id"), b.get("name"), b.get("input", {})
            _require(isinstance(tid, str) and bool(tid), f"{at}: tool_use needs an 'id'")
            _require(isinstance(name, str) and bool(name), f"{at}: tool_use needs a 'name'")
            _require(isinstance(args, dict), f"{at}: tool_use 'input' must be an object")
            calls.append(
                {"id": tid, "type": "function", "function": {"name": name, "arguments": args}}
            )
        else:
            raise TranslationError(f"unsupported content block type '{kind}'")
    msg: dict[str, Any] = {"role": "assistant", "content": "\n".join(texts)}
    if thinking:
        msg["reasoning_content"] = "\n".join(thinking)
    if calls:
        msg["tool_calls"] = calls
    return msg


Turn = tuple[str, list[dict[str, Any]] | str]  # (role, blocks), or ("system", text)


def _merged_turns(messages: Any) -> list[Turn]:
    """Validate the turns and merge consecutive turns of the same role, as Anthropic does."""
    _require(
        isinstance(messages, list) and len(messages) > 0, "'messages' must be a non-empty array"
    )
    turns: list[Turn] = []
    for i, m in enumerate(messages):
        _require(isinstance(m, dict), f"messages[{i}] must be an object")
        role = m.get("role")
        _require(
            role in ("user", "assistant", "system"),
            f"messages[{i}].role must be 'user', 'assistant' or 'system'",
        )
        prev = turns[-1] if turns and turns[-1][0] == role else None
        if role == "system":
            text = _system(m.get("content"), f"messages[{i}].content")
            if prev is None:
                turns.append((role, text))
            else:
                turns[-1] = (role, f"{prev[1]}\n\n{text}")
            continue
        blocks = _blocks(m.get("content"), f"messages[{i}]")
        if prev is None:
            turns.append((role, list(blocks)))
        else:
            assert isinstance(prev[1], list)
            prev[1].extend(blocks)
    _require(
        any(role != "system" for role, _ in turns),
        "'messages' needs at least one 'user' or 'assistant' turn",
    )
    return turns


def _chat_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    """Top-level `system` and system turns before the first conversation turn open the chat;
    later system turns stay where they were sent."""
    turns = _merged_turns(body.get("messages"))
    first = next(i for i, (role, _) in enumerate(turns) if role != "system")
    lead = [_system(body["system"])] if body.get("system") is not None else []
    lead += [str(content) for _, content in turns[:first]]
    messages: list[dict[str, Any]] = []
    if lead:
        messages.append({"role": "system", "content": "\n\n".join(lead)})
    for i, (role, content) in enumerate(turns[first:], first):
        if isinstance(content, str):
            messages.append({"role": "system", "content": content})
        elif role == "user":
            messages.extend(_user(content, f"messages[{i}]"))
        else:
            messages.append(_assistant(content, f"messages[{i}]"))
    return messages


def _tools(tools: Any) -> list[dict[str, Any]]:
    _require(isinstance(tools, list), "'tools' must be an array")
    out = []
    for i, t in enumerate(tools):
        _require(isinstance(t, dict), f"tools[{i}] must be an object")
        kind = t.get("type") or "custom"
        if kind != "custom":
            raise TranslationError(f"unsupported tool type '{kind}'")
        name = t.get("name")
        _require(isinstance(name, str) and bool(name), f"tools[{i}] needs a 'name'")
        schema = t.get("input_schema", {"type": "object", "properties": {}})
        _require(isinstance(schema, dict), f"tools[{i}].input_schema must be an object")
        fn: dict[str, Any] = {"name": name, "parameters": schema}
        if isinstance(t.get("description"), str):
            fn["description"] = t["description"]
        out.append({"type": "function", "function": fn})
    return out


def _tool_choice(choice: Any, out: dict[str, Any]) -> None:
    _require(isinstance(choice, dict), "'tool_choice' must be an object")
    kind = choice.get("type")
    if kind == "auto":
        out["tool_choice"] = "auto"
    elif kind == "any":
        out["tool_choice"] = "required"
    elif kind == "none":
        out["tool_choice"] = "none"
    elif kind == "tool":
        name = choice.get("name")
        _require(isinstance(name, str) and bool(name), "tool_choice of type 'tool' needs a 'name'")
        out["tool_choice"] = {"type": "function", "function": {"name": name}}
    else:
        raise TranslationError(f"unsupported tool_choice type '{kind}'")
    if choice.get("disable_parallel_tool_use") is True:
        out["parallel_tool_calls"] = False


# `output_config.effort` → the model's thinking switch: our models think or don't, so the
# lowest level turns thinking off and every other level turns it on.
EFFORT_THINKS = {"low": False, "medium": True, "high": True, "xhigh": True, "max": True}


def _enable_thinking(body: dict[str, Any]) -> bool | None:
    """`thinking` and `output_config.effort` → `enable_thinking`; None when neither is set.
    Disabled thinking wins; otherwise a given effort decides."""
    switch: bool | None = None
    thinking = body.get("thinking")
    if thinking is not None:
        _require(isinstance(thinking, dict), "'thinking' must be an object")
        kind = thinking.get("type")
        # "adaptive" and "between_tools" leave the amount to the model: thinking on.
        _require(
            kind in ("enabled", "disabled", "adaptive", "between_tools"),
            f"unsupported thinking type '{kind}'",
        )
        switch = kind != "disabled"
    config = body.get("output_config")
    if config is None:
        return switch
    _require(isinstance(config, dict), "'output_config' must be an object")
    effort = config.get("effort")
    if effort is None:
        return switch
    _require(
        isinstance(effort, str) and effort in EFFORT_THINKS,
        f"output_config.effort must be one of {', '.join(EFFORT_THINKS)}",
    )
    return switch if switch is False else EFFORT_THINKS[effort]


def _response_format(config: Any) -> dict[str, Any] | None:
    """`output_config.format` (structured outputs) → chat's `response_format`; the neuron
    checks the schema itself."""
    fmt = config.get("format") if isinstance(config, dict) else None
    if fmt is None:
        return None
    _require(
        isinstance(fmt, dict) and fmt.get("type") == "json_schema",
        'output_config.format must be {"type": "json_schema", "schema": {...}}',
    )
    schema = fmt.get("schema")
    _require(isinstance(schema, dict), "output_config.format.schema must be an object")
    return {"type": "json_schema", "json_schema": {"name": "output", "schema": schema}}


def _anthropic_field(m: re.Match[str]) -> str:
    index = m.group(1)
    return "output_config.format.schema" if index is None else f"tools[{index}].input_schema"


def anthropic_fields(text: str) -> str:
    """`text` (a neuron's error message) naming the Anthropic fields the chat
    fields it names were translated from: `response_format.json_schema.schema` is
    `output_config.format.schema`, `tools[i].function.parameters` is `tools[i].input_schema`."""
    return _CHAT_FIELDS.sub(_anthropic_field, text)


def translate_request(body: dict[str, Any], *, count_tokens: bool = False) -> dict[str, Any]:
    """Validate an Anthropic body and build the OpenAI chat body (model left as sent).

    `count_tokens` bodies have no `max_tokens` and only the fields that shape the prompt.
    """
    model = body.get("model")
    _require(isinstance(model, str) and bool(model), "'model' must be a non-empty string")
    out: dict[str, Any] = {"model": model}
    if not count_tokens:
        detail = "'max_tokens' is required and must be an integer >= 1"
        mt = _get(body, "max_tokens", int, detail)
        _require(mt >= 1, detail)
        out["max_tokens"] = mt
    out["messages"] = _chat_messages(body)
    if body.get("tools") is not None:
        tools = _tools(body["tools"])
        if tools:
            out["tools"] = tools
    if body.get("tool_choice") is not None:
        _tool_choice(body["tool_choice"], out)
    thinks = _enable_thinking(body)
    if thinks is not None:
        out["chat_template_kwargs"] = {"enable_thinking": thinks}
    if count_tokens:
        return out
    fmt = _response_format(body.get("output_config"))
    if fmt is not None:
        out["response_format"] = fmt
    stops = body.get("stop_sequences")
    if stops is not None:
        _require(
            isinstance(stops, list) and all(isinstance(s, str) for s in stops),
            "'stop_sequences' must be an array of strings",
        )
        out["stop"] = stops
    for key in ("temperature", "top_p", "top_k"):
        v = body.get(key)
        if v is not None:
            _require(
                isinstance(v, int | float) and not isinstance(v, bool), f"'{key}' must be a number"
            )
            out[key] = v
    stream = body.get("stream")
    _require(stream is None or isinstance(stream, bool), "'stream' must be a boolean")
    if stream:
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    return out
