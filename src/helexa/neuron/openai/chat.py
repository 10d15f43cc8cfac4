"""OpenAI chat completions on the neuron: the request checks, the reply and its stream.

Pure: a body in, a `ChatRequest` out; a finished (or streaming) parse and the usage in, a JSON
object or SSE frame bytes out.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from helexa.neuron.openai.common import (
    Sampling,
    check_unsupported,
    flag,
    include_usage,
    invalid_value,
    max_tokens_field,
    obj_field,
    parse_sampling,
    parse_stop,
    require_model,
    response_schema,
    unsupported_content,
)
from helexa.neuron.openai.params import CHAT_REFUSED, thinking_kwargs, unsupported_parameter
from helexa.neuron.openai.replies import Chunks, Usage
from helexa.neuron.parse import (
    CallArgs,
    CallStart,
    ContentDelta,
    Event,
    OutputParser,
    ReasoningDelta,
    ToolCall,
    new_id,
)
from helexa.wire import sse

ROLES = ("system", "developer", "user", "assistant", "tool")

# -- chat ---------------------------------------------------------------------------------------


@dataclass(slots=True)
class ChatRequest:
    """A checked chat request. `messages` are as the client sent them (the tokenizer does the
    preprocessing); `tools` is None when there are none or `tool_choice` is "none", and
    then the output is not parsed for calls. `schema` is the JSON schema the answer must match
    (`response_format`), `named_tool` the function `tool_choice` forces; whether the schemas can
    be enforced is checked with the grammar (constrain/plan.py), off the event loop."""

    model: str
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | None = None
    named_tool: str | None = None
    parallel_tool_calls: bool | None = None
    schema: dict[str, Any] | None = None
    chat_template_kwargs: dict[str, Any] = field(default_factory=dict)
    sampling: Sampling = field(default_factory=Sampling)
    stop: list[str] = field(default_factory=list)
    max_tokens: int | None = None
    stream: bool = False
    include_usage: bool = False
    max_tool_calls: int | None = None  # Responses only
    # how the request names the schemas a grammar enforces (in its 400s)
    schema_param: str = "response_format.json_schema.schema"
    tools_param: str = "tools[{i}].function.parameters"

    @property
    def parse_tools(self) -> bool:
        return self.tools is not None

    @property
    def call_limit(self) -> int | None:
        """How many calls the reply may carry: 1 for a named tool or without parallel calls,
        `max_tool_calls`."""
        one = 1 if self.parallel_tool_calls is False or self.named_tool is not None else None
        limits = [n for n in (self.max_tool_calls, one) if n is not None]
        return min(limits) if limits else None

    def grammar_tools(self) -> list[tuple[int, dict[str, Any]]]:
        """(index in `tools`, tool) of the calls a grammar must allow: the named tool; every
        tool under "required", or under "auto" beside a `schema` answer or when one call at
        most is allowed (prose, or prose and one call); else none."""
        if self.tools is None:
            return []
        if self.named_tool is not None:
            return [(i, t) for i, t in enumerate(self.tools) if tool_name(t) == self.named_tool]
        forced = self.tool_choice == "required"
        if forced or self.schema is not None or self.call_limit == 1:
            return list(enumerate(self.tools))
        return []

    def tool_schemas(self) -> dict[str, Any]:
        """Each tool's parameters schema, by name (they type the values of XML calls)."""
        return {tool_name(t): tool_function(t).get("parameters") or {} for t in self.tools or ()}

    @property
    def constrained(self) -> bool:
        """The output must match a grammar (constrain/plan.py builds it)."""
        return self.schema is not None or bool(self.grammar_tools())


def tool_function(tool: dict[str, Any]) -> dict[str, Any]:
    """A checked tool's function (`name`, `parameters`, …): chat nests it, Responses doesn't."""
    fn = tool.get("function")
    return fn if isinstance(fn, dict) else tool


def tool_name(tool: dict[str, Any]) -> str:
    return str(tool_function(tool)["name"])


def _json_args(v: Any, where: str) -> None:
    """Call arguments: an object, or a string holding a JSON object."""
    if isinstance(v, dict):
        return
    if isinstance(v, str):
        try:
            if isinstance(json.loads(v), dict):
                return
        except ValueError:
            pass
    raise invalid_value(where, "must be a JSON object or a string holding one")


def check_part(part: Any, where: str, model: str, vision: bool, allowed: tuple[str, ...]) -> str:
    """One content part → its type, after the unsupported-content checks."""
    if not isinstance(part, dict) or not isinstance(part.get("type"), str):
        raise invalid_value(where, "must be an object with a 'type'")
    kind = part["type"]
    if kind in ("image_url", "input_image", "image"):
        if not vision:
            raise unsupported_content(f"model '{model}' does not accept image input")
    elif kind in ("input_audio", "audio"):
        raise unsupported_content("audio input is not supported")
    elif kind in ("file", "input_file"):
        raise unsupported_content("file input is not supported")
    if kind not in allowed:
        raise invalid_value(f"{where}.type", "must be one of " + ", ".join(allowed))
    if kind in ("text", "input_text", "output_text") and not isinstance(part.get("text"), str):
        raise invalid_value(f"{where}.text", "must be a string")
    return kind


def _content(m: dict[str, Any], at: str, model: str, vision: bool, nullable: bool) -> None:
    content = m.get("content")
    if isinstance(content, str) or (content is None and nullable):
        return
    if not isinstance(content, list):
        raise invalid_value(f"{at}.content", "must be a string or an array of content parts")
    allowed = ("text", "image_url") if m["role"] == "user" else ("text",)
    if m["role"] == "assistant":
        allowed = ("text", "refusal")
    for j, part in enumerate(content):
        check_part(part, f"{at}.content[{j}]", model, vision, allowed)


def _tool_calls(calls: Any, at: str) -> None:
    if calls is None:
        return
    if not isinstance(calls, list):
        raise invalid_value(f"{at}.tool_calls", "must be an array")
    for j, call in enumerate(calls):
        where = f"{at}.tool_calls[{j}]"
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict):
            raise invalid_value(f"{where}.function", "must be an object")
        name = fn.get("name")
        if not isinstance(name, str) or not name:
            raise invalid_value(f"{where}.function.name", "must be a non-empty string")
        _json_args(fn.get("arguments", {}), f"{where}.function.arguments")


def check_messages(messages: Any, model: str, vision: bool) -> list[dict[str, Any]]:
    if not isinstance(messages, list) or not messages:
        raise invalid_value("messages", "must be a non-empty array")
    for i, m in enumerate(messages):
        at = f"messages[{i}]"
        if not isinstance(m, dict):
            raise invalid_value(at, "must be an object")
        role = m.get("role")
        if role not in ROLES:
            raise invalid_value(f"{at}.role", "must be one of " + ", ".join(ROLES))
        _content(m, at, model, vision, nullable=role == "assistant")
        if role == "assistant":
            _tool_calls(m.get("tool_calls"), at)
            rc = m.get("reasoning_content")
            if rc is not None and not isinstance(rc, str):
                raise invalid_value(f"{at}.reasoning_content", "must be a string")
        elif role == "tool":
            tid = m.get("tool_call_id")
            if tid is not None and not isinstance(tid, str):
                raise invalid_value(f"{at}.tool_call_id", "must be a string")
    return messages


def check_tools(tools: Any) -> list[dict[str, Any]]:
    """Chat-form tools: `[{"type":"function","function":{"name",…}}]`."""
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise invalid_value("tools", "must be an array")
    for i, t in enumerate(tools):
        if not isinstance(t, dict):
            raise invalid_value(f"tools[{i}]", "must be an object")
        kind = t.get("type", "function")
        if kind != "function":
            raise unsupported_parameter(
                "tools", f"tool type '{kind}' is not supported; only 'function' tools are"
            )
        fn = t.get("function")
        if not isinstance(fn, dict):
            raise invalid_value(f"tools[{i}].function", "must be an object")
        name = fn.get("name")
        if not isinstance(name, str) or not name:
            raise invalid_value(f"tools[{i}].function.name", "must be a non-empty string")
        params = fn.get("parameters")
        if params is not None and not isinstance(params, dict):
            raise invalid_value(f"tools[{i}].function.parameters", "must be an object")
    return tools


def check_tool_choice(choice: Any, tools: list[dict[str, Any]]) -> tuple[str | None, str | None]:
    """`tool_choice` → (the mode, the forced function's name). A function is named as
    `{"type": "function", "function": {"name"}}` (chat) or `{"type": "function", "name"}`
    (Responses) and must be one of `tools`; "required" needs tools."""
    if choice is None or choice in ("none", "auto"):
        return choice, None
    if choice == "required":
        if not tools:
            raise invalid_value("tool_choice", "'required' needs at least one tool in 'tools'")
        return choice, None
    kind = choice.get("type") if isinstance(choice, dict) else None
    if isinstance(kind, str) and kind != "function":
        raise unsupported_parameter(
            "tool_choice", f"'tool_choice' of type '{kind}' is not supported"
        )
    if kind != "function":
        raise invalid_value(
            "tool_choice",
            "must be 'none', 'auto', 'required' or {\"type\": \"function\", ...} naming a tool",
        )
    src = choice["function"] if isinstance(choice.get("function"), dict) else choice
    name = src.get("name")
    if not isinstance(name, str) or not name:
        raise invalid_value("tool_choice", "must name the function to call")
    if name not in (tool_name(t) for t in tools):
        raise invalid_value("tool_choice", f"names function '{name}', which is not in 'tools'")
    return "required", name


def parse_chat(body: dict[str, Any], *, vision: bool = False) -> ChatRequest:
    """Check a `/v1/chat/completions` body (params.py)."""
    model = require_model(body)
    check_unsupported(body, CHAT_REFUSED)
    schema = response_schema(body.get("response_format"), "response_format")
    messages = check_messages(body.get("messages"), model, vision)
    tools = check_tools(body.get("tools"))
    choice, named = check_tool_choice(body.get("tool_choice"), tools)
    ptc = body.get("parallel_tool_calls")
    if ptc is not None and not isinstance(ptc, bool):
        raise invalid_value("parallel_tool_calls", "must be a boolean")
    chat = ChatRequest(
        model=model,
        messages=messages,
        tools=tools if tools and choice != "none" else None,
        tool_choice=choice,
        named_tool=named,
        parallel_tool_calls=ptc,
        schema=schema,
        chat_template_kwargs=thinking_kwargs(
            body,
            obj_field(body, "chat_template_kwargs"),
            body.get("reasoning_effort"),
            "reasoning_effort",
        ),
        sampling=parse_sampling(body),
        stop=parse_stop(body),
        max_tokens=max_tokens_field(body),
        stream=flag(body, "stream", False),
        include_usage=include_usage(body),
    )
    return chat


# On a choice whose grammar (response_format, forced tool_choice) the output cap cut short: the
# text is partial and will not parse or match, which `finish_reason: length` alone doesn't say.
UNFINISHED = {
    "reason": "max_tokens",
    "message": "the output reached max_tokens before it completed the requested format",
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
    constrained: bool = False,
) -> dict[str, Any]:
    """The non-streaming chat reply from a finished parser; a `constrained` one cut by the cap
    says so (`UNFINISHED`)."""
    text = parser.content
    message: dict[str, Any] = {
        "role": "assistant",
        "content": None if parser.tool_calls and not text else text,
    }
    if parser.reasoning:
        message["reasoning_content"] = parser.reasoning
    if parser.tool_calls:
        message["tool_calls"] = [tool_call_json(c) for c in parser.tool_calls]
    choice = {
        "index": 0,
        "message": message,
        "finish_reason": parser.finish_reason,
        "stop_reason": stop_reason,
        "logprobs": None,
    }
    if constrained and parser.hit_cap:
        choice["incomplete_details"] = UNFINISHED
    return {
        "id": id or new_id("chatcmpl-"),
        "object": "chat.completion",
        "created": created if created is not None else int(time.time()),
        "model": model,
        "choices": [choice],
        "usage": usage.chat(),
    }


class ChatStream(Chunks):
    """Chat SSE frames in OpenAI's grammar: `first`, then `events(...)` for each parser
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
            elif isinstance(ev, CallStart) or (isinstance(ev, ToolCall) and not ev.streamed):
                head = {
                    "index": ev.index,
                    "id": ev.id,
                    "type": "function",
                    "function": {"name": ev.name, "arguments": ""},
                }
                out.append(self._delta({"tool_calls": [head]}))
                if isinstance(ev, ToolCall):
                    out.append(self._args(ev.index, ev.arguments))
            elif isinstance(ev, CallArgs):
                out.append(self._args(ev.index, ev.text))
        return b"".join(out)

    def _args(self, index: int, text: str) -> bytes:
        return self._delta({"tool_calls": [{"index": index, "function": {"arguments": text}}]})

    def final(
        self, finish_reason: str, stop_reason: str | None = None, unfinished: bool = False
    ) -> bytes:
        choice = {
            "index": 0,
            "delta": {},
            "finish_reason": finish_reason,
            "stop_reason": stop_reason,
        }
        if unfinished:
            choice["incomplete_details"] = UNFINISHED
        return self._frame(choice)

    def usage(self, usage: Usage) -> bytes:
        return self.usage_frame(usage.chat())

    def end(
        self, finish_reason: str, stop_reason: str | None, usage: Usage, unfinished: bool = False
    ) -> bytes:
        return self.final(finish_reason, stop_reason, unfinished) + self.usage(usage) + sse.DONE
