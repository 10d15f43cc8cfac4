# ruff: noqa: E501  (exact wire shapes are pinned on one line each)
"""Responses on the neuron: input → chat mapping, the reply object, the event sequence.

Shapes are pinned exactly and also validated against the official `openai` SDK's types.
"""

from __future__ import annotations

import re
from typing import Any

import orjson
import pytest
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from helexa.neuron.errors import worker_crashed
from helexa.neuron.openai.params import PREVIOUS_RESPONSE_UNSUPPORTED
from helexa.neuron.openai.replies import Usage
from helexa.neuron.openai.responses import parse_responses
from helexa.neuron.openai.responses_reply import ResponsesStream, response_body
from helexa.neuron.parse import ContentDelta, OutputParser, ReasoningDelta, ToolCall
from helexa.wire.errors import ApiError
from rig.sse import named_events

MODEL = "Qwen/Qwen3-8B"
EVENT = TypeAdapter(ResponseStreamEvent)


def sdk_ok(obj: dict[str, Any]) -> None:
    """Validate against the SDK's types. This SDK's usage type also demands
    `input_tokens_details.cache_write_tokens`, a field Open Responses doesn't have (the SDK never
    validates replies, so clients don't mind): it is added here only."""

    def fix(v: Any) -> Any:
        if isinstance(v, dict):
            out = {k: fix(x) for k, x in v.items()}
            if "cached_tokens" in out and "input_tokens_details" not in out:
                out.setdefault("cache_write_tokens", 0)
            return out
        if isinstance(v, list):
            return [fix(x) for x in v]
        return v

    fixed = fix(obj)
    if fixed.get("object") == "response":
        Response.model_validate(fixed)
    else:
        EVENT.validate_python(fixed)


def body(**extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "input": "hi", **extra}


def err(b: dict[str, Any], **kw: Any) -> ApiError:
    with pytest.raises(ApiError) as e:
        parse_responses(b, **kw)
    return e.value


def events(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    out = named_events(raw)
    for name, obj in out:
        assert obj["type"] == name
    return out


# -- request ------------------------------------------------------------------------------------


def test_string_input_and_defaults() -> None:
    r = parse_responses(body())
    assert r.model == MODEL and not r.stream
    assert r.chat.messages == [{"role": "user", "content": "hi"}]
    assert r.chat.tools is None and r.chat.max_tokens is None and r.chat.stop == []
    assert r.chat.sampling.to_wire() == {}
    echo = r.echo
    assert (
        echo["instructions"],
        echo["max_output_tokens"],
        echo["parallel_tool_calls"],
        echo["tool_choice"],
        echo["tools"],
    ) == (None, None, True, "auto", [])


def test_ignored_fields() -> None:
    r = parse_responses(
        body(
            store=True,
            metadata={"a": "b"},
            reasoning={"effort": "high"},
            truncation="auto",
            user="u",
            text={"format": {"type": "text"}},
        )
    )
    assert r.chat.messages == [{"role": "user", "content": "hi"}]


def test_items_to_chat_messages() -> None:
    items = [
        {"type": "message", "role": "developer", "content": "be terse"},
        {
            "role": "user",
            "content": [
                {"type": "input_text", "text": "read"},
                {"type": "input_text", "text": "hosts"},
            ],
        },
        {
            "type": "reasoning",
            "id": "rs_1",
            "summary": [],
            "content": [{"type": "reasoning_text", "text": "x"}],
        },
        {
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "Sure.", "annotations": []}],
        },
        {
            "type": "function_call",
            "call_id": "call_1",
            "name": "Read",
            "arguments": '{"path":"/etc/hosts"}',
        },
        {"type": "function_call", "call_id": "call_2", "name": "Stat", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "call_1", "output": "127.0.0.1 localhost"},
        {
            "type": "function_call_output",
            "call_id": "call_2",
            "output": [{"type": "input_text", "text": "size 1"}],
        },
        {"type": "function_call", "call_id": "call_3", "name": "Read", "arguments": {"path": "/x"}},
        {"type": "function_call_output", "call_id": "call_3", "output": ""},
    ]
    r = parse_responses(body(input=items, instructions="You are helpful."))
    assert r.echo["instructions"] == "You are helpful."
    assert r.chat.messages == [
        {"role": "system", "content": "You are helpful."},
        {"role": "developer", "content": "be terse"},
        {"role": "user", "content": "read\nhosts"},
        {
            "role": "assistant",
            "content": "Sure.",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "Read", "arguments": '{"path":"/etc/hosts"}'},
                },
                {
                    "id": "call_2",
                    "type": "function",
                    "function": {"name": "Stat", "arguments": "{}"},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "127.0.0.1 localhost"},
        {"role": "tool", "tool_call_id": "call_2", "content": "size 1"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": "call_3",
                    "type": "function",
                    "function": {"name": "Read", "arguments": '{"path":"/x"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_3", "content": ""},
    ]


def test_tools_and_choice_mapping() -> None:
    tools = [
        {
            "type": "function",
            "name": "Read",
            "description": "read a file",
            "parameters": {"type": "object"},
            "strict": True,
        }
    ]
    r = parse_responses(body(tools=tools, tool_choice="auto", parallel_tool_calls=False))
    assert r.chat.tools == [
        {
            "type": "function",
            "function": {
                "name": "Read",
                "description": "read a file",
                "parameters": {"type": "object"},
            },
        }
    ]
    assert r.chat.parse_tools and r.chat.tool_choice == "auto"
    assert r.echo["tools"] == [{**tools[0], "strict": True}] and r.echo["tool_choice"] == "auto"
    assert r.echo["parallel_tool_calls"] is False and r.chat.parallel_tool_calls is False
    off = parse_responses(body(tools=tools, tool_choice="none"))
    assert off.chat.tools is None and not off.chat.parse_tools and off.echo["tool_choice"] == "none"


def test_sampling_and_caps() -> None:
    r = parse_responses(
        body(
            temperature=0.2,
            top_p=0.9,
            max_output_tokens=64,
            stream=True,
            chat_template_kwargs={"enable_thinking": True},
            top_k=5,
            presence_penalty=0.5,
        )
    )
    assert r.chat.sampling.to_wire() == {
        "temperature": 0.2,
        "top_p": 0.9,
        "presence_penalty": 0.5,
    }  # top_k is not a Responses field
    assert r.echo["presence_penalty"] == 0.5 and r.echo["frequency_penalty"] == 0.0
    assert r.chat.max_tokens == 64 == r.echo["max_output_tokens"] and r.stream
    assert r.chat.chat_template_kwargs == {"enable_thinking": True}


def test_previous_response_id() -> None:
    e = err(body(previous_response_id="resp_abc"))
    assert (e.status, e.code, e.param, e.message) == (
        400,
        "unsupported_parameter",
        "previous_response_id",
        "previous_response_id is not supported: this server does not store responses",
    )
    assert e.message == PREVIOUS_RESPONSE_UNSUPPORTED
    parse_responses(body(previous_response_id=None))


@pytest.mark.parametrize(
    "extra,code,param,message",
    [
        (
            {"tools": [{"type": "web_search"}]},
            "unsupported_parameter",
            "tools",
            "tool type 'web_search' is not supported; only 'function' tools are",
        ),
        (
            {"tools": [{"type": "file_search", "vector_store_ids": []}]},
            "unsupported_parameter",
            "tools",
            "tool type 'file_search' is not supported; only 'function' tools are",
        ),
        (
            {"text": {"format": {"type": "json_schema", "name": "x", "schema": [3]}}},
            "invalid_value",
            "text.format.schema",
            "'text.format.schema' must be a JSON schema object",
        ),
        (
            {"input": [{"type": "item_reference", "id": "msg_1"}]},
            "unsupported_parameter",
            "input",
            "item_reference is not supported: this server does not store responses",
        ),
        (
            {"input": []},
            "invalid_value",
            "input",
            "'input' must be a string or a non-empty array of items",
        ),
        (
            {"input": None},
            "invalid_value",
            "input",
            "'input' must be a string or a non-empty array of items",
        ),
        ({"input": [3]}, "invalid_value", "input[0]", "'input[0]' must be an object"),
        (
            {"input": [{"type": "web_search_call"}]},
            "invalid_value",
            "input[0].type",
            "'input[0].type' must be one of message, function_call, function_call_output, reasoning",
        ),
        (
            {"input": [{"role": "tool", "content": "x"}]},
            "invalid_value",
            "input[0].role",
            "'input[0].role' must be one of user, assistant, system, developer",
        ),
        (
            {"input": [{"role": "user", "content": 3}]},
            "invalid_value",
            "input[0].content",
            "'input[0].content' must be a string or an array of content parts",
        ),
        (
            {"input": [{"role": "user", "content": [{"type": "text", "text": "x"}]}]},
            "invalid_value",
            "input[0].content[0].type",
            "'input[0].content[0].type' must be one of input_text, output_text, input_image, refusal",
        ),
        (
            {"input": [{"type": "function_call", "name": "f", "arguments": "{}"}]},
            "invalid_value",
            "input[0].call_id",
            "'input[0].call_id' must be a non-empty string",
        ),
        (
            {"input": [{"type": "function_call", "call_id": "c", "arguments": "{}"}]},
            "invalid_value",
            "input[0].name",
            "'input[0].name' must be a non-empty string",
        ),
        (
            {"input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": "{x"}]},
            "invalid_value",
            "input[0].arguments",
            "'input[0].arguments' must be a string holding a JSON object",
        ),
        (
            {"input": [{"type": "function_call_output", "output": "x"}]},
            "invalid_value",
            "input[0].call_id",
            "'input[0].call_id' must be a non-empty string",
        ),
        ({"instructions": 5}, "invalid_value", "instructions", "'instructions' must be a string"),
        (
            {"max_output_tokens": 0},
            "invalid_value",
            "max_output_tokens",
            "'max_output_tokens' must be an integer >= 1",
        ),
        (
            {"temperature": 3},
            "invalid_value",
            "temperature",
            "'temperature' must be a number between 0 and 2",
        ),
        ({"stream": 1}, "invalid_value", "stream", "'stream' must be a boolean"),
        (
            {"tool_choice": "any"},
            "invalid_value",
            "tool_choice",
            "'tool_choice' must be 'none', 'auto', 'required' or {\"type\": \"function\", ...}"
            " naming a tool",
        ),
        (
            {"tool_choice": "required"},
            "invalid_value",
            "tool_choice",
            "'tool_choice' 'required' needs at least one tool in 'tools'",
        ),
        (
            {"tool_choice": {"type": "function", "name": "Read"}},
            "invalid_value",
            "tool_choice",
            "'tool_choice' names function 'Read', which is not in 'tools'",
        ),
        (
            {"text": {"verbosity": "low"}},
            "unsupported_parameter",
            "text.verbosity",
            "'text.verbosity' other than 'medium' is not supported",
        ),
        ({"metadata": []}, "invalid_value", "metadata", "'metadata' must be an object"),
        ({"reasoning": "high"}, "invalid_value", "reasoning", "'reasoning' must be an object"),
        (
            {"reasoning": {"effort": "extreme"}},
            "invalid_value",
            "reasoning.effort",
            "'reasoning.effort' must be one of none, minimal, low, medium, high, xhigh, max",
        ),
        (
            {"tools": [{"type": "function"}]},
            "invalid_value",
            "tools[0].name",
            "'tools[0].name' must be a non-empty string",
        ),
        (
            {"chat_template_kwargs": "x"},
            "invalid_value",
            "chat_template_kwargs",
            "'chat_template_kwargs' must be an object",
        ),
    ],
)
def test_request_errors(extra: dict[str, Any], code: str, param: str, message: str) -> None:
    e = err(body(**extra))
    assert (e.status, e.code, e.param, e.message) == (400, code, param, message)


def test_missing_model() -> None:
    e = err({"input": "hi"})
    assert (e.code, e.message) == ("missing_model_field", "missing 'model' field in request body")


@pytest.mark.parametrize(
    "part,message",
    [
        (
            {"type": "input_image", "image_url": "data:image/png;base64,AA"},
            f"model '{MODEL}' does not accept image input",
        ),
        ({"type": "input_file", "file_id": "f"}, "file input is not supported"),
        ({"type": "input_audio", "input_audio": {}}, "audio input is not supported"),
    ],
)
def test_unsupported_content(part: dict[str, Any], message: str) -> None:
    e = err(body(input=[{"role": "user", "content": [part]}]))
    assert (e.code, e.param, e.message) == ("unsupported_content", None, message)


def test_image_on_vision_model_keeps_parts() -> None:
    items = [
        {
            "role": "user",
            "content": [
                {"type": "input_text", "text": "see"},
                {"type": "input_image", "image_url": "data:x"},
            ],
        }
    ]
    r = parse_responses(body(input=items), vision=True)
    assert r.chat.messages == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "see"},
                {"type": "image_url", "image_url": {"url": "data:x"}},
            ],
        }
    ]


# -- non-streaming reply ------------------------------------------------------------------------


def parsed(text: str, cap: bool = False) -> OutputParser:
    p = OutputParser(True, False, True, new_call_id=lambda: "call_1")
    p.feed(text, 1)
    p.finish(cap)
    return p


def test_response_object_items_in_order() -> None:
    req = parse_responses(body(tools=[{"type": "function", "name": "Read", "parameters": {}}]))
    p = parsed(
        '<think>need it</think>\n\nReading.\n<tool_call>{"name":"Read","arguments":{"path":"/etc/hosts"}}</tool_call>\n'
    )
    r = response_body(req, p, Usage(12, 30, 5), id="resp_x", created_at=1763800000)
    out = r.pop("output")
    assert isinstance(r.pop("completed_at"), int)
    assert r == {
        "id": "resp_x",
        "object": "response",
        "created_at": 1763800000,
        "status": "completed",
        "incomplete_details": None,
        "model": MODEL,
        "error": None,
        "previous_response_id": None,
        "instructions": None,
        "tools": [
            {
                "type": "function",
                "name": "Read",
                "description": None,
                "parameters": {},
                "strict": None,
            }
        ],
        "tool_choice": "auto",
        "truncation": "disabled",
        "parallel_tool_calls": True,
        "text": {"format": {"type": "text"}, "verbosity": "medium"},
        "top_p": 1.0,
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
        "top_logprobs": 0,
        "temperature": 1.0,
        "reasoning": None,
        "user": None,
        "max_output_tokens": None,
        "max_tool_calls": None,
        "store": False,
        "background": False,
        "service_tier": "default",
        "metadata": {},
        "safety_identifier": None,
        "prompt_cache_key": None,
        "usage": {
            "input_tokens": 12,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": 30,
            "output_tokens_details": {"reasoning_tokens": 5},
            "total_tokens": 42,
        },
    }
    assert [i["type"] for i in out] == ["reasoning", "message", "function_call"]
    rs, msg, fc = out
    assert re.fullmatch(r"rs_[A-Za-z0-9]{24}", rs.pop("id"))
    assert re.fullmatch(r"msg_[A-Za-z0-9]{24}", msg.pop("id"))
    assert re.fullmatch(r"fc_[A-Za-z0-9]{24}", fc.pop("id"))
    assert rs == {
        "type": "reasoning",
        "summary": [],
        "content": [{"type": "reasoning_text", "text": "need it"}],
        "status": "completed",
    }
    assert msg == {
        "type": "message",
        "role": "assistant",
        "status": "completed",
        "content": [{"type": "output_text", "text": "Reading.\n", "annotations": []}],
    }
    assert fc == {
        "type": "function_call",
        "call_id": "call_1",
        "name": "Read",
        "arguments": '{"path":"/etc/hosts"}',
        "status": "completed",
    }
    sdk_ok({**r, "output": [{**rs, "id": "rs_1"}, {**msg, "id": "msg_1"}, {**fc, "id": "fc_1"}]})


def test_response_items_only_when_present_and_default_id() -> None:
    req = parse_responses(body(temperature=0.5, instructions="sys", max_output_tokens=9))
    r = response_body(req, parsed("Just text."), Usage(1, 2))
    assert re.fullmatch(r"resp_[A-Za-z0-9]{24}", r["id"]) and isinstance(r["created_at"], int)
    assert [i["type"] for i in r["output"]] == ["message"]
    assert (r["temperature"], r["instructions"], r["max_output_tokens"]) == (0.5, "sys", 9)
    assert response_body(req, parsed(""), Usage(1, 0))["output"] == []
    sdk_ok(r)


def test_cap_gives_incomplete() -> None:
    req = parse_responses(body())
    r = response_body(req, parsed("<think>still going", cap=True), Usage(1, 9, 9))
    assert r["status"] == "incomplete" and r["completed_at"] is None
    assert r["incomplete_details"] == {"reason": "max_output_tokens"}
    assert [(i["type"], i["status"]) for i in r["output"]] == [("reasoning", "incomplete")]
    sdk_ok(r)
    cut = response_body(req, parsed("<think>ok</think>Once upon", cap=True), Usage(1, 9, 2))
    assert [(i["type"], i["status"]) for i in cut["output"]] == [
        ("reasoning", "completed"),
        ("message", "incomplete"),
    ]
    assert cut["output"][1]["content"][0]["text"] == "Once upon"
    sdk_ok(cut)


# -- streaming ----------------------------------------------------------------------------------


def stream_of(
    text: str, cap: bool = False, req_extra: dict[str, Any] | None = None
) -> tuple[ResponsesStream, list[tuple[str, dict[str, Any]]]]:
    req = parse_responses(
        body(stream=True, tools=[{"type": "function", "name": "Read"}], **(req_extra or {}))
    )
    p = OutputParser(True, False, True, new_call_id=lambda: "call_1")
    s = ResponsesStream(req, id="resp_s", created_at=7)
    raw = s.start()
    for ch in text:
        raw += s.events(p.feed(ch, 1))
    raw += s.events(p.finish(cap))
    raw += s.finish(cap, Usage(4, len(text), p.reasoning_tokens))
    return s, events(raw)


def test_stream_event_sequence() -> None:
    s, evs = stream_of(
        '<think>hmm</think>\n\nReading.<tool_call>{"name":"Read","arguments":{"p":1}}</tool_call>'
    )
    names = [n for n, _ in evs]
    assert names == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        *["response.reasoning_text.delta"] * 3,
        "response.reasoning_text.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * len("Reading."),
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e["sequence_number"] for _, e in evs] == list(range(len(evs)))
    for _, e in evs:
        sdk_ok(e)

    created = evs[0][1]["response"]
    assert (
        created["status"] == "in_progress" and created["output"] == [] and created["usage"] is None
    )
    assert created["id"] == "resp_s" and created["created_at"] == 7
    assert evs[1][1]["response"] == created

    rs_added = evs[2][1]
    rs_id = rs_added["item"]["id"]
    assert rs_added == {
        "type": "response.output_item.added",
        "output_index": 0,
        "item": {
            "type": "reasoning",
            "id": rs_id,
            "summary": [],
            "content": [],
            "status": "in_progress",
        },
        "sequence_number": 2,
    }
    assert evs[3][1] == {
        "type": "response.reasoning_text.delta",
        "item_id": rs_id,
        "output_index": 0,
        "content_index": 0,
        "delta": "h",
        "sequence_number": 3,
    }
    assert evs[6][1] == {
        "type": "response.reasoning_text.done",
        "item_id": rs_id,
        "output_index": 0,
        "content_index": 0,
        "text": "hmm",
        "sequence_number": 6,
    }
    assert evs[7][1]["item"] == {
        "type": "reasoning",
        "id": rs_id,
        "summary": [],
        "content": [{"type": "reasoning_text", "text": "hmm"}],
        "status": "completed",
    }

    msg_added = evs[8][1]
    msg_id = msg_added["item"]["id"]
    assert re.fullmatch(r"msg_[A-Za-z0-9]{24}", msg_id)
    assert msg_added["item"] == {
        "type": "message",
        "id": msg_id,
        "role": "assistant",
        "status": "in_progress",
        "content": [],
    }
    part = {"type": "output_text", "text": "", "annotations": []}
    assert evs[9][1] == {
        "type": "response.content_part.added",
        "item_id": msg_id,
        "output_index": 1,
        "content_index": 0,
        "part": part,
        "sequence_number": 9,
    }
    assert evs[10][1] == {
        "type": "response.output_text.delta",
        "item_id": msg_id,
        "output_index": 1,
        "content_index": 0,
        "delta": "R",
        "logprobs": [],
        "sequence_number": 10,
    }
    i = 10 + len("Reading.")
    assert evs[i][1]["text"] == "Reading." and evs[i][0] == "response.output_text.done"
    assert evs[i + 1][1]["part"] == {"type": "output_text", "text": "Reading.", "annotations": []}
    assert evs[i + 2][1]["item"]["content"] == [
        {"type": "output_text", "text": "Reading.", "annotations": []}
    ]

    fc_added = evs[i + 3][1]
    fc_id = fc_added["item"]["id"]
    assert fc_added["item"] == {
        "type": "function_call",
        "id": fc_id,
        "call_id": "call_1",
        "name": "Read",
        "arguments": "",
        "status": "in_progress",
    }
    assert evs[i + 4][1] == {
        "type": "response.function_call_arguments.delta",
        "item_id": fc_id,
        "output_index": 2,
        "delta": '{"p":1}',
        "sequence_number": i + 4,
    }
    assert evs[i + 5][1] == {
        "type": "response.function_call_arguments.done",
        "item_id": fc_id,
        "output_index": 2,
        "arguments": '{"p":1}',
        "sequence_number": i + 5,
    }
    assert evs[i + 6][1]["item"]["status"] == "completed"

    final = evs[-1][1]["response"]
    assert final["status"] == "completed" and final["incomplete_details"] is None
    assert [o["id"] for o in final["output"]] == [rs_id, msg_id, fc_id]
    assert final["usage"]["output_tokens_details"]["reasoning_tokens"] == len("<think>hmm</think>")
    sdk_ok(final)
    assert s.finish(False, Usage(1, 1)) == b""  # nothing after response.completed


def test_stream_text_only_and_incomplete() -> None:
    _, evs = stream_of("Hello", cap=True)
    names = [n for n, _ in evs]
    assert names[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert names[-2:] == ["response.output_item.done", "response.incomplete"]
    assert evs[-2][1]["item"]["status"] == "incomplete"
    final = evs[-1][1]["response"]
    assert final["status"] == "incomplete" and final["incomplete_details"] == {
        "reason": "max_output_tokens"
    }
    assert [(o["type"], o["status"]) for o in final["output"]] == [("message", "incomplete")]
    assert final["output"][0]["content"][0]["text"] == "Hello"
    sdk_ok(evs[-1][1])


def test_stream_empty_output() -> None:
    _, evs = stream_of("")
    assert [n for n, _ in evs] == ["response.created", "response.in_progress", "response.completed"]
    assert evs[-1][1]["response"]["output"] == []


def test_stream_text_after_call_opens_a_new_message() -> None:
    s = ResponsesStream(parse_responses(body()), id="resp_s", created_at=1)
    s.start()
    raw = s.events(
        [
            ContentDelta("a"),
            ToolCall(0, "call_1", "f", "{}"),
            ContentDelta("b"),
            ReasoningDelta("r"),
        ]
    )
    raw += s.finish(False, Usage(1, 1))
    final = events(raw)[-1][1]["response"]
    assert [o["type"] for o in final["output"]] == [
        "message",
        "function_call",
        "message",
        "reasoning",
    ]
    assert [e["output_index"] for _, e in events(raw) if "output_index" in e][-1] == 3


def test_stream_error_event() -> None:
    s = ResponsesStream(parse_responses(body()), id="resp_s", created_at=1)
    s.start()
    s.events([ContentDelta("partial")])
    raw = s.error(worker_crashed(MODEL))
    assert raw == (
        b'event: error\ndata: {"type":"error","code":"worker_crashed","message":"model worker for '
        b'\'Qwen/Qwen3-8B\' crashed during the request; it is being restarted","param":null,'
        b'"error":{"type":"api_error","code":"worker_crashed","message":"model worker for '
        b'\'Qwen/Qwen3-8B\' crashed during the request; it is being restarted","param":null},'
        b'"sequence_number":5}\n\n'
    )
    sdk_ok(orjson.loads(raw.split(b"data: ", 1)[1]))
    assert s.error(worker_crashed(MODEL)) == b"" and s.finish(False, Usage(1, 1)) == b""
