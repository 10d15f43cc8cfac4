"""`/v1/messages` and `/v1/messages/count_tokens` over HTTP.

A real cortex in front of the fake neuron; requests go in as Anthropic bodies (by hand with
httpx, and through the official anthropic SDK) and the tests check both what the neuron received
and what the client got back.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import anthropic
import httpx
import orjson
import pytest

from helexa.cortex import messages as messages_mod
from rig.anthropic_types import check_event, check_reply
from rig.cortex_rig import NODE_TOKEN, Cortex, CortexFactory
from rig.fake_neuron import (
    MOCK_TEXT,
    FakeNeuron,
    content_delta,
    error_body,
    finish_chunk,
    reasoning_delta,
    tool_call_args,
    tool_call_head,
)

MN = {"model": "test-model", "node": "mock-node"}
KEY = "sk-ant-test"
KEYS = {"keys": [{"key": KEY, "account_id": "acct"}]}
READ_TOOL = {
    "name": "Read",
    "description": "Read a file from disk",
    "input_schema": {
        "type": "object",
        "properties": {"path": {"type": "string"}},
        "required": ["path"],
    },
}


def body(**over: Any) -> dict[str, Any]:
    b: dict[str, Any] = {
        "model": "test-model",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "Hi"}],
    }
    b.update(over)
    return b


async def post(
    cortex: Cortex,
    payload: Any,
    headers: dict[str, str] | None = None,
    path: str = "/v1/messages",
) -> httpx.Response:
    """POST, and check the reply against the anthropic SDK's own types."""
    async with httpx.AsyncClient(timeout=10) as c:
        r = await c.post(cortex.url + path, json=payload, headers=headers or {})
    check_reply(path, r.status_code, r.headers.get("content-type", ""), r.content)
    return r


def sse(text: str) -> list[tuple[str, dict[str, Any]]]:
    """Parse an Anthropic SSE body into (event, data) pairs; every frame must be named."""
    out = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        lines = block.split("\n")
        assert lines[0].startswith("event: "), f"unnamed frame: {block!r}"
        assert len(lines) == 2 and lines[1].startswith("data: "), block
        name = lines[0][len("event: ") :]
        data = orjson.loads(lines[1][len("data: ") :])
        check_event(name, data)
        out.append((name, data))
    return out


def grammatical(events: list[tuple[str, dict[str, Any]]]) -> None:
    """message_start (block_start delta* block_stop)* (message_delta message_stop | error);
    pings allowed anywhere after message_start."""
    seq = [(n, d) for n, d in events if n != "ping"]
    assert seq[0][0] == "message_start"
    index = -1
    open_kind: str | None = None
    want = {"text": "text_delta", "thinking": "thinking_delta", "tool_use": "input_json_delta"}
    for i, (n, d) in enumerate(seq[1:], start=1):
        if n == "content_block_start":
            assert open_kind is None and d["index"] == index + 1
            index += 1
            open_kind = d["content_block"]["type"]
        elif n == "content_block_delta":
            assert open_kind is not None and d["index"] == index
            assert d["delta"]["type"] == want[open_kind]
        elif n == "content_block_stop":
            assert open_kind is not None and d["index"] == index
            open_kind = None
        elif n == "message_delta":
            assert open_kind is None
            assert [x for x, _ in seq[i + 1 :]] == ["message_stop"]
            return
        elif n == "error":
            assert i == len(seq) - 1
            return
        else:
            raise AssertionError(f"unexpected event {n}")
    raise AssertionError("stream did not end with message_stop or error")


def first(events: list[tuple[str, dict[str, Any]]], name: str) -> dict[str, Any]:
    return next(d for n, d in events if n == name)


def text_of(events: list[tuple[str, dict[str, Any]]]) -> str:
    return "".join(
        d["delta"].get("text", "")
        for n, d in events
        if n == "content_block_delta" and d["delta"]["type"] == "text_delta"
    )


async def eventually(cond: Callable[[], bool], within: float = 3.0) -> None:
    """Bounded wait for a side effect that lands just after the client has its last byte."""
    deadline = time.monotonic() + within
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


def upstream(fake: FakeNeuron) -> dict[str, Any]:
    body = fake.last("/v1/chat/completions").json
    assert isinstance(body, dict)
    return body


# -- non-streaming ---------------------------------------------------------------------------


async def test_non_stream_round_trip(cortex: Cortex, fake: FakeNeuron) -> None:
    r = await post(cortex, body())
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/json")
    assert r.headers["x-helexa-node"] == "mock-node"
    assert r.headers["x-helexa-model"] == "test-model"
    m = r.json()
    assert m["type"] == "message" and m["role"] == "assistant"
    assert m["id"].startswith("msg_") and len(m["id"]) == 28
    assert m["model"] == "test-model"
    assert m["content"] == [{"type": "text", "text": MOCK_TEXT}]
    assert m["stop_reason"] == "end_turn" and m["stop_sequence"] is None
    assert m["usage"]["input_tokens"] == 10 and m["usage"]["output_tokens"] == 5
    sent = upstream(fake)
    assert sent["model"] == "test-model" and sent["max_tokens"] == 64
    assert "stream" not in sent


async def test_system_string_becomes_first_openai_message(cortex: Cortex, fake: FakeNeuron) -> None:
    r = await post(cortex, body(system="You are terse."))
    assert r.status_code == 200
    msgs = upstream(fake)["messages"]
    assert msgs[0] == {"role": "system", "content": "You are terse."}
    assert msgs[1] == {"role": "user", "content": "Hi"}


async def test_text_blocks_are_flattened(cortex: Cortex, fake: FakeNeuron) -> None:
    r = await post(
        cortex,
        body(
            system=[{"type": "text", "text": "A."}, {"type": "text", "text": "B."}],
            messages=[
                {"role": "user", "content": [{"type": "text", "text": "one block"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "ok"}]},
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "x"}, {"type": "text", "text": "y"}],
                },
            ],
        ),
    )
    assert r.status_code == 200
    assert upstream(fake)["messages"] == [
        {"role": "system", "content": "A.\n\nB."},
        {"role": "user", "content": "one block"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": [{"type": "text", "text": "x"}, {"type": "text", "text": "y"}]},
    ]


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        ({"model": "test-model", "max_tokens": 10}, "messages"),
        ({"model": "test-model", "messages": [{"role": "user", "content": "hi"}]}, "max_tokens"),
        (
            {
                "model": "test-model",
                "max_tokens": 10,
                "messages": [{"role": "user", "content": [{"type": "document"}]}],
            },
            "unsupported content block type 'document'",
        ),
        (
            {
                "model": "test-model",
                "max_tokens": 10,
                "messages": [{"role": "user", "content": "hi"}],
                "tools": [{"type": "web_search_20250305", "name": "web_search"}],
            },
            "unsupported tool type 'web_search_20250305'",
        ),
    ],
)
async def test_invalid_bodies_are_400_in_the_anthropic_envelope(
    cortex: Cortex, fake: FakeNeuron, payload: dict[str, Any], fragment: str
) -> None:
    r = await post(cortex, payload)
    assert r.status_code == 400
    err = r.json()
    assert set(err) == {"type", "error"} and err["type"] == "error"
    assert err["error"]["type"] == "invalid_request_error"
    assert err["error"]["message"].startswith("invalid Anthropic request body: ")
    assert fragment in err["error"]["message"]
    assert fake.count("/v1/chat/completions") == 0


async def test_not_json_is_400_in_the_anthropic_envelope(cortex: Cortex) -> None:
    async with httpx.AsyncClient(timeout=10) as c:
        r = await c.post(
            cortex.url + "/v1/messages",
            content=b"{nope",
            headers={"content-type": "application/json"},
        )
    assert r.status_code == 400
    assert r.json()["type"] == "error"
    assert r.json()["error"]["type"] == "invalid_request_error"


async def test_metadata_and_unknown_fields_are_tolerated(cortex: Cortex, fake: FakeNeuron) -> None:
    r = await post(
        cortex,
        body(metadata={"user_id": "u1"}, service_tier="auto", whatever={"x": 1}),
        headers={"anthropic-version": "2023-06-01", "anthropic-beta": "tools-2024-04-04"},
    )
    assert r.status_code == 200
    sent = upstream(fake)
    assert "metadata" not in sent and "whatever" not in sent and "service_tier" not in sent


async def test_tools_reshaped_for_upstream(cortex: Cortex, fake: FakeNeuron) -> None:
    """The original's test_anthropic_tools_reshaped_for_upstream."""
    r = await post(
        cortex,
        body(
            max_tokens=100,
            tools=[READ_TOOL],
            tool_choice={"type": "auto"},
            messages=[
                {"role": "user", "content": "read /etc/hosts"},
                {
                    "role": "assistant",
                    "content": [
                        {"type": "text", "text": "Reading it."},
                        {
                            "type": "tool_use",
                            "id": "toolu_42",
                            "name": "Read",
                            "input": {"path": "/etc/hosts"},
                        },
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "tool_result",
                            "tool_use_id": "toolu_42",
                            "content": "127.0.0.1 localhost",
                        }
                    ],
                },
            ],
        ),
    )
    assert r.status_code == 200
    sent = upstream(fake)
    tools = sent["tools"]
    assert tools[0]["type"] == "function"
    assert tools[0]["function"]["name"] == "Read"
    assert tools[0]["function"]["description"] == "Read a file from disk"
    assert tools[0]["function"]["parameters"]["properties"]["path"]["type"] == "string"
    assert "input_schema" not in tools[0]["function"] and "input_schema" not in tools[0]
    assert sent["tool_choice"] == "auto"
    msgs = sent["messages"]
    assert [m["role"] for m in msgs] == ["user", "assistant", "tool"]
    call = msgs[1]["tool_calls"][0]
    assert call["id"] == "toolu_42"
    assert call["function"]["name"] == "Read"
    assert call["function"]["arguments"] == {"path": "/etc/hosts"}  # an object, not a string
    assert msgs[2]["tool_call_id"] == "toolu_42"
    assert msgs[2]["content"] == "127.0.0.1 localhost"


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ({"type": "any"}, "required"),
        ({"type": "tool", "name": "Read"}, {"type": "function", "function": {"name": "Read"}}),
        ({"type": "none"}, "none"),
        ({"type": "auto"}, "auto"),
    ],
)
async def test_tool_choice_mapping(
    cortex: Cortex, fake: FakeNeuron, choice: dict[str, Any], expected: Any
) -> None:
    r = await post(cortex, body(tools=[READ_TOOL], tool_choice=choice))
    assert r.status_code == 200
    assert upstream(fake)["tool_choice"] == expected


async def test_sampling_stop_thinking_and_parallel_reach_upstream(
    cortex: Cortex, fake: FakeNeuron
) -> None:
    r = await post(
        cortex,
        body(
            temperature=0.3,
            top_p=0.8,
            top_k=20,
            stop_sequences=["END"],
            thinking={"type": "enabled", "budget_tokens": 1024},
            tools=[READ_TOOL],
            tool_choice={"type": "auto", "disable_parallel_tool_use": True},
        ),
    )
    assert r.status_code == 200
    sent = upstream(fake)
    assert (sent["temperature"], sent["top_p"], sent["top_k"]) == (0.3, 0.8, 20)
    assert sent["stop"] == ["END"]
    assert sent["chat_template_kwargs"] == {"enable_thinking": True}
    assert sent["parallel_tool_calls"] is False


async def test_non_stream_reasoning_and_tool_calls(cortex: Cortex, fake: FakeNeuron) -> None:
    fake.chat_message = {
        "role": "assistant",
        "content": "Reading it.",
        "reasoning_content": "Need the file.",
        "tool_calls": [
            {
                "id": "call_abc",
                "type": "function",
                "function": {"name": "Read", "arguments": '{"path": "/etc/hosts"}'},
            }
        ],
    }
    fake.finish_reason = "tool_calls"
    r = await post(cortex, body(tools=[READ_TOOL]))
    assert r.status_code == 200
    m = r.json()
    assert [b["type"] for b in m["content"]] == ["thinking", "text", "tool_use"]
    assert m["content"][0] == {"type": "thinking", "thinking": "Need the file.", "signature": ""}
    assert m["content"][2] == {
        "type": "tool_use",
        "id": "call_abc",
        "name": "Read",
        "input": {"path": "/etc/hosts"},
    }
    assert m["stop_reason"] == "tool_use"


async def test_non_stream_length_is_max_tokens(cortex: Cortex, fake: FakeNeuron) -> None:
    fake.finish_reason = "length"
    r = await post(cortex, body())
    assert r.json()["stop_reason"] == "max_tokens"


async def test_non_stream_stop_sequence(cortex: Cortex, fake: FakeNeuron) -> None:
    reply = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "test-model",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "up to the"},
                "finish_reason": "stop",
                "stop_reason": "END",
            }
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6},
    }
    fake.reply_override["/v1/chat/completions"] = (200, reply)
    r = await post(cortex, body(stop_sequences=["END"]))
    m = r.json()
    assert (m["stop_reason"], m["stop_sequence"]) == ("stop_sequence", "END")


async def test_non_stream_cached_tokens(cortex: Cortex, fake: FakeNeuron) -> None:
    reply = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "x"}}],
        "usage": {
            "prompt_tokens": 100,
            "completion_tokens": 2,
            "prompt_tokens_details": {"cached_tokens": 60},
        },
    }
    fake.reply_override["/v1/chat/completions"] = (200, reply)
    m = (await post(cortex, body())).json()
    assert m["usage"] == {
        "input_tokens": 40,
        "output_tokens": 2,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 60,
    }


async def test_non_stream_reply_cut_short_is_502(cortex: Cortex, fake: FakeNeuron) -> None:
    fake.fault = "drop_after"
    r = await post(cortex, body())
    assert r.status_code == 502
    assert r.json()["error"]["type"] == "api_error"
    assert r.headers["x-helexa-node"] == "mock-node"
    assert cortex.metric("cortex_request_errors_total", **MN) == 1


async def test_prompt_tokens_header_reaches_the_client(cortex: Cortex, fake: FakeNeuron) -> None:
    fake.usage = (12, 3)
    r = await post(cortex, body())
    assert r.headers["x-helexa-prompt-tokens"] == "12"


async def test_failover_before_first_byte(start_cortex: CortexFactory) -> None:
    async with FakeNeuron(token=NODE_TOKEN) as a, FakeNeuron(token=NODE_TOKEN) as b:
        cortex = await start_cortex({"node-a": a, "node-b": b})
        warm = await post(cortex, body())
        assert warm.headers["x-helexa-node"] == "node-a"  # node-a wins ties by name
        await a.refuse()
        r = await post(cortex, body(stream=True))
        assert r.status_code == 200
        assert r.headers["x-helexa-node"] == "node-b"
        assert text_of(sse(r.text)) == "token0token1token2token3"
        assert cortex.metric("cortex_failovers_total", model="test-model") == 1


async def test_malformed_upstream_reply_is_502(cortex: Cortex, fake: FakeNeuron) -> None:
    fake.reply_override["/v1/chat/completions"] = (200, {"not": "a completion"})
    r = await post(cortex, body())
    assert r.status_code == 502
    err = r.json()
    assert err["type"] == "error" and err["error"]["type"] == "api_error"
    assert "not" not in err["error"]["message"] or "a completion" not in err["error"]["message"]


# -- streaming -------------------------------------------------------------------------------


async def test_stream_of_four_chunks(cortex: Cortex, fake: FakeNeuron) -> None:
    """The original's test_anthropic_streaming_sse_translation."""
    r = await post(cortex, body(stream=True))
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    assert r.headers["x-helexa-node"] == "mock-node"
    assert "chat.completion.chunk" not in r.text
    assert "[DONE]" not in r.text
    events = sse(r.text)
    assert [n for n, _ in events] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert text_of(events) == "token0token1token2token3"
    delta = first(events, "message_delta")
    assert delta["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert delta["usage"]["output_tokens"] == 4
    sent = upstream(fake)
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}


async def test_stream_without_usage_counts_deltas(cortex: Cortex, fake: FakeNeuron) -> None:
    """No finish_reason and no usage frame: end_turn, and output_tokens is the delta count."""
    fake.stream_usage = None
    fake.usage = (17, 5)
    r = await post(cortex, body(stream=True))
    events = sse(r.text)
    grammatical(events)
    assert first(events, "message_start")["message"]["usage"] == {
        "input_tokens": 17,
        "output_tokens": 0,
    }
    delta = first(events, "message_delta")
    assert delta["delta"]["stop_reason"] == "end_turn"
    assert delta["usage"] == {"input_tokens": 17, "output_tokens": 4}


async def test_stream_usage_propagation(cortex: Cortex, fake: FakeNeuron) -> None:
    """The original's test_anthropic_streaming_usage_propagation: 225/42."""
    fake.stream_chunks = 3
    fake.stream_usage = (225, 42)
    r = await post(cortex, body(stream=True))
    events = sse(r.text)
    grammatical(events)
    assert first(events, "message_delta")["usage"] == {"input_tokens": 225, "output_tokens": 42}


async def test_message_start_input_tokens_is_the_prompt_header(
    cortex: Cortex, fake: FakeNeuron
) -> None:
    fake.stream_usage = (321, 4)  # the fake sets x-helexa-prompt-tokens from this
    async with (
        httpx.AsyncClient(timeout=10) as c,
        c.stream("POST", cortex.url + "/v1/messages", json=body(stream=True)) as r,
    ):
        header = r.headers.get("x-helexa-prompt-tokens")
        raw = (await r.aread()).decode()
    start = first(sse(raw), "message_start")
    assert header == "321"
    assert start["message"]["usage"] == {"input_tokens": 321, "output_tokens": 0}
    assert start["message"]["model"] == "test-model"
    assert start["message"]["id"].startswith("msg_")


async def test_stream_reasoning_then_content(cortex: Cortex, fake: FakeNeuron) -> None:
    fake.stream_script = [
        {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
        reasoning_delta("Let me "),
        reasoning_delta("think."),
        content_delta("The "),
        content_delta("answer."),
        finish_chunk("stop"),
    ]
    r = await post(cortex, body(stream=True, thinking={"type": "enabled", "budget_tokens": 64}))
    events = sse(r.text)
    grammatical(events)
    starts = [d for n, d in events if n == "content_block_start"]
    assert [(s["index"], s["content_block"]["type"]) for s in starts] == [
        (0, "thinking"),
        (1, "text"),
    ]
    thinking = [d["delta"] for n, d in events if n == "content_block_delta" and d["index"] == 0]
    assert thinking == [
        {"type": "thinking_delta", "thinking": "Let me "},
        {"type": "thinking_delta", "thinking": "think."},
    ]
    assert text_of(events) == "The answer."
    assert upstream(fake)["chat_template_kwargs"] == {"enable_thinking": True}


async def test_stream_tool_calls(cortex: Cortex, fake: FakeNeuron) -> None:
    fake.stream_script = [
        content_delta("Reading it."),
        tool_call_head(0, "Read", "call_abc"),
        tool_call_args(0, '{"pa'),
        tool_call_args(0, 'th": "/etc'),
        tool_call_args(0, '/hosts"}'),
        finish_chunk("tool_calls"),
    ]
    r = await post(cortex, body(stream=True, tools=[READ_TOOL]))
    events = sse(r.text)
    grammatical(events)
    start = [d for n, d in events if n == "content_block_start"][1]
    assert start == {
        "type": "content_block_start",
        "index": 1,
        "content_block": {"type": "tool_use", "id": "call_abc", "name": "Read", "input": {}},
    }
    partial = "".join(
        d["delta"]["partial_json"]
        for n, d in events
        if n == "content_block_delta" and d["delta"]["type"] == "input_json_delta"
    )
    assert orjson.loads(partial) == {"path": "/etc/hosts"}
    assert first(events, "message_delta")["delta"]["stop_reason"] == "tool_use"


async def test_stream_length_and_stop_sequence(cortex: Cortex, fake: FakeNeuron) -> None:
    fake.stream_script = [content_delta("a"), finish_chunk("length")]
    d = first(sse((await post(cortex, body(stream=True))).text), "message_delta")
    assert d["delta"] == {"stop_reason": "max_tokens", "stop_sequence": None}
    fake.stream_script = [content_delta("a"), finish_chunk("stop", "END")]
    d = first(sse((await post(cortex, body(stream=True))).text), "message_delta")
    assert d["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": "END"}


async def test_stream_without_done_after_finish_is_closed(cortex: Cortex, fake: FakeNeuron) -> None:
    fake.stream_done = False
    fake.stream_finish_reason = "stop"
    events = sse((await post(cortex, body(stream=True))).text)
    grammatical(events)
    assert [n for n, _ in events][-2:] == ["message_delta", "message_stop"]
    assert cortex.metric("cortex_request_errors_total", **MN) == 0


async def test_stream_ending_without_finish_or_done_is_an_error(
    cortex: Cortex, fake: FakeNeuron
) -> None:
    fake.stream_done = False
    fake.stream_usage = None
    events = sse((await post(cortex, body(stream=True))).text)
    grammatical(events)
    names = [n for n, _ in events]
    assert names[-1] == "error" and "message_stop" not in names
    assert events[-1][1]["error"]["type"] == "api_error"
    await eventually(lambda: cortex.metric("cortex_request_errors_total", **MN) == 1)


async def test_upstream_dies_mid_stream(cortex: Cortex, fake: FakeNeuron) -> None:
    fake.fault = "drop_after"
    fake.fault_after = 2
    r = await post(cortex, body(stream=True))
    assert r.status_code == 200
    events = sse(r.text)
    grammatical(events)
    names = [n for n, _ in events]
    assert names[-1] == "error" and "message_stop" not in names
    assert events[-1][1] == {
        "type": "error",
        "error": {"type": "api_error", "message": events[-1][1]["error"]["message"]},
    }
    assert text_of(events) == "token0token1"
    await eventually(lambda: cortex.metric("cortex_request_errors_total", **MN) == 1)


@pytest.mark.parametrize(
    ("code", "kind"),
    [("model_not_ready", "overloaded_error"), ("internal_error", "api_error")],
)
async def test_upstream_error_frame_mid_stream(
    cortex: Cortex, fake: FakeNeuron, code: str, kind: str
) -> None:
    frame = orjson.dumps(error_body("the model is reloading", "server_error", code)).decode()
    fake.stream_script = [content_delta("a"), frame]
    fake.stream_usage = None
    events = sse((await post(cortex, body(stream=True))).text)
    grammatical(events)
    assert events[-1] == (
        "error",
        {"type": "error", "error": {"type": kind, "message": "the model is reloading"}},
    )
    await eventually(lambda: cortex.metric("cortex_request_errors_total", **MN) == 1)


async def test_stalled_stream_becomes_an_error_event(
    start_cortex: CortexFactory, fake: FakeNeuron
) -> None:
    cortex = await start_cortex({"mock-node": fake}, gateway={"request_timeout_secs": 1})
    fake.stream_chunks = 2
    fake.stream_delay = 3.0
    r = await post(cortex, body(stream=True))
    events = sse(r.text)
    grammatical(events)
    assert [n for n, _ in events] == ["message_start", "error"]
    assert events[-1][1]["error"] == {
        "type": "api_error",
        "message": "upstream stream stalled for 1s",
    }
    await eventually(lambda: cortex.metric("cortex_request_errors_total", **MN) == 1)


async def test_no_ping_in_a_fast_stream(cortex: Cortex, fake: FakeNeuron) -> None:
    fake.stream_chunks = 8
    r = await post(cortex, body(stream=True))
    assert "ping" not in [n for n, _ in sse(r.text)]


async def test_ping_after_upstream_silence(
    cortex: Cortex, fake: FakeNeuron, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(messages_mod, "PING_AFTER_SECS", 0.1)
    fake.stream_chunks = 2
    fake.stream_delay = 0.5
    r = await post(cortex, body(stream=True))
    events = sse(r.text)
    names = [n for n, _ in events]
    assert "ping" in names
    assert names.index("ping") > 0  # message_start goes first
    assert all(d == {"type": "ping"} for n, d in events if n == "ping")
    grammatical(events)
    assert text_of(events) == "token0token1"
    assert names[-1] == "message_stop"


async def test_ping_when_upstream_frames_translate_to_nothing(
    cortex: Cortex, fake: FakeNeuron, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The upstream is busy (role-only chunks every 0.1 s) but the client hears nothing: the
    ping clock counts events sent, not upstream frames."""
    monkeypatch.setattr(messages_mod, "PING_AFTER_SECS", 0.35)
    role = {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}
    fake.stream_script = [role] * 10 + [content_delta("done")]
    fake.stream_delay = 0.1
    r = await post(cortex, body(stream=True))
    events = sse(r.text)
    grammatical(events)
    names = [n for n, _ in events]
    assert names.count("ping") >= 1
    assert names.index("ping") < names.index("content_block_start")
    assert text_of(events) == "done"


async def test_client_disconnect_mid_stream_cancels_upstream_and_settles(
    start_cortex: CortexFactory, fake: FakeNeuron
) -> None:
    cortex = await start_cortex({"mock-node": fake}, entitlements=KEYS)
    principal = cortex.gw.auth.resolve(KEY)
    assert principal is not None
    fake.stream_chunks = 50
    fake.stream_delay = 0.1
    async with aiohttp.ClientSession() as s:
        resp = await s.post(
            cortex.url + "/v1/messages", json=body(stream=True), headers={"x-api-key": KEY}
        )
        assert resp.status == 200
        await resp.content.readuntil(b"content_block_delta")
        resp.close()
    async with asyncio.timeout(2):
        await fake.cancel_event.wait()
    await eventually(lambda: cortex.gw.auth.snapshot(principal).reserved == 0)
    await eventually(lambda: cortex.metric("cortex_model_in_flight", **MN) == 0)


# -- errors ----------------------------------------------------------------------------------


async def test_unknown_model_is_404_not_found(cortex: Cortex) -> None:
    r = await post(cortex, body(model="nope/nope"))
    assert r.status_code == 404
    assert r.json() == {
        "type": "error",
        "error": {
            "type": "not_found_error",
            "message": "model 'nope/nope' not found on any node and not in catalogue",
        },
    }


async def test_no_healthy_nodes_is_503_overloaded(start_cortex: CortexFactory) -> None:
    cortex = await start_cortex({"dead": "http://127.0.0.1:1"})
    r = await post(cortex, body())
    assert r.status_code == 503
    assert r.headers["retry-after"] == "5"
    assert r.json()["type"] == "error"
    assert r.json()["error"]["type"] == "overloaded_error"
    r = await post(
        cortex,
        {"model": "test-model", "messages": [{"role": "user", "content": "hi"}]},
        path="/v1/messages/count_tokens",
    )
    assert r.status_code == 503
    assert r.json()["error"]["type"] == "overloaded_error"


async def test_context_length_exceeded_uses_claude_code_wording(
    cortex: Cortex, fake: FakeNeuron
) -> None:
    fake.reply_override["/v1/chat/completions"] = (
        400,
        error_body(
            "prompt has 60000 tokens, over the 16384 limit",
            "invalid_request_error",
            "context_length_exceeded",
            prompt_len=60000,
            max=16384,
        ),
    )
    for stream in (False, True):
        r = await post(cortex, body(stream=stream))
        assert r.status_code == 400
        assert r.json() == {
            "type": "error",
            "error": {
                "type": "invalid_request_error",
                "message": "prompt is too long: 60000 tokens > 16384 maximum",
            },
        }


@pytest.mark.parametrize(
    ("param", "named"),
    [
        ("response_format.json_schema.schema", "output_config.format.schema"),
        ("tools[1].function.parameters", "tools[1].input_schema"),
    ],
)
async def test_a_bad_schema_is_named_by_its_anthropic_field(
    cortex: Cortex, fake: FakeNeuron, param: str, named: str
) -> None:
    """The neuron checks schemas under the chat fields the translation put them in; the
    Anthropic client hears the field it sent."""
    problem = "is not a supported JSON schema: Invalid type: thing"
    fake.reply_override["/v1/chat/completions"] = (
        400,
        error_body(f"'{param}' {problem}", "invalid_request_error", "invalid_value", param),
    )
    for stream in (False, True):
        r = await post(cortex, body(stream=stream))
        assert r.status_code == 400
        assert r.json() == {
            "type": "error",
            "error": {"type": "invalid_request_error", "message": f"'{named}' {problem}"},
        }


async def test_upstream_4xx_message_passes_and_5xx_is_summarised(
    cortex: Cortex, fake: FakeNeuron
) -> None:
    fake.reply_override["/v1/chat/completions"] = (
        400,
        error_body("temperature must be <= 2", "invalid_request_error", "invalid_value"),
    )
    r = await post(cortex, body())
    assert r.status_code == 400
    assert r.json()["error"] == {
        "type": "invalid_request_error",
        "message": "temperature must be <= 2",
    }
    fake.reply_override["/v1/chat/completions"] = (
        500,
        error_body("Traceback: secret internals", "server_error", "internal_error"),
    )
    r = await post(cortex, body())
    assert r.status_code == 500
    assert r.json()["error"] == {"type": "api_error", "message": "upstream returned 500"}
    fake.reply_override["/v1/chat/completions"] = (
        503,
        error_body("loading", "server_error", "model_not_ready"),
        {"Retry-After": "7"},
    )
    r = await post(cortex, body(stream=True))
    assert r.status_code == 503
    assert r.headers["retry-after"] == "7"
    assert r.json()["error"] == {"type": "overloaded_error", "message": "upstream returned 503"}


# -- auth ------------------------------------------------------------------------------------


async def test_x_api_key_on_messages_only(start_cortex: CortexFactory, fake: FakeNeuron) -> None:
    cortex = await start_cortex({"mock-node": fake}, entitlements={"require_auth": True, **KEYS})
    chat = {"model": "test-model", "messages": [{"role": "user", "content": "hi"}]}
    for version in ({}, {"anthropic-version": "2023-06-01"}, {"anthropic-version": "bogus"}):
        r = await post(cortex, body(), headers={"x-api-key": KEY, **version})
        assert r.status_code == 200, version
        r = await post(cortex, chat, headers={"x-api-key": KEY, **version}, path=CHAT)
        assert r.status_code == 401, version
        assert r.json()["error"]["code"] in ("missing_api_key", "invalid_api_key")
    # Forwarding never leaks the client's key to the neuron.
    sent = fake.last("/v1/chat/completions").headers
    assert "x-api-key" not in sent
    assert sent.get("authorization") == "Bearer node-secret"
    # Bearer works on /v1/messages too; no key at all is a 401 in the Anthropic envelope.
    r = await post(cortex, body(), headers={"authorization": f"Bearer {KEY}"})
    assert r.status_code == 200
    r = await post(cortex, body())
    assert r.status_code == 401
    assert r.json()["type"] == "error"
    assert r.json()["error"]["type"] == "authentication_error"
    r = await post(cortex, body(), headers={"x-api-key": "sk-wrong"})
    assert r.status_code == 401
    assert r.json()["error"]["type"] == "authentication_error"


async def test_authorization_wins_over_x_api_key(
    start_cortex: CortexFactory, fake: FakeNeuron
) -> None:
    cortex = await start_cortex({"mock-node": fake}, entitlements={"require_auth": True, **KEYS})
    r = await post(cortex, body(), headers={"authorization": "Bearer sk-wrong", "x-api-key": KEY})
    assert r.status_code == 401
    r = await post(
        cortex, body(), headers={"authorization": f"Bearer {KEY}", "x-api-key": "sk-wrong"}
    )
    assert r.status_code == 200


CHAT = "/v1/chat/completions"


# -- metrics and metering --------------------------------------------------------------------


async def test_stream_metrics_and_metering(start_cortex: CortexFactory, fake: FakeNeuron) -> None:
    cortex = await start_cortex({"mock-node": fake}, entitlements=KEYS)
    principal = cortex.gw.auth.resolve(KEY)
    assert principal is not None
    before = cortex.gw.auth.snapshot(principal)
    fake.stream_usage = (225, 42)
    fake.stream_delay = 0.02
    # A prompt that can be 225 tokens: cortex never charges more than it reserved for it.
    long = [{"role": "user", "content": "Hi " * 225}]
    r = await post(cortex, body(stream=True, messages=long), headers={"x-api-key": KEY})
    assert r.status_code == 200
    assert first(sse(r.text), "message_delta")["usage"] == {
        "input_tokens": 225,
        "output_tokens": 42,
    }
    await eventually(lambda: cortex.gw.auth.snapshot(principal).spent == before.spent + 267)
    assert cortex.gw.auth.snapshot(principal).reserved == 0
    assert cortex.metric("cortex_requests_total", **MN) == 1
    assert cortex.metric("cortex_time_to_first_token_seconds_count", **MN) == 1
    assert cortex.metric("cortex_tokens_per_second_count", **MN) == 1
    assert cortex.metric("cortex_tokens_per_second_sum", **MN) > 0
    assert cortex.metric("cortex_prompt_tokens_total", **MN) >= 225
    assert cortex.metric("cortex_completion_tokens_total", **MN) >= 42
    assert cortex.metric("cortex_request_errors_total", **MN) == 0
    acct = {"account": "acct", "key": principal.key_id}
    assert cortex.metric("cortex_spend_tokens_total", **acct) == 267
    assert cortex.metric("cortex_model_in_flight", **MN) == 0


async def test_non_stream_metering_and_release_on_error(
    start_cortex: CortexFactory, fake: FakeNeuron
) -> None:
    cortex = await start_cortex({"mock-node": fake}, entitlements=KEYS)
    principal = cortex.gw.auth.resolve(KEY)
    assert principal is not None
    r = await post(cortex, body(), headers={"x-api-key": KEY})
    assert r.status_code == 200
    await eventually(lambda: cortex.gw.auth.snapshot(principal).spent == 15)
    assert cortex.metric("cortex_prompt_tokens_total", **MN) == 10
    assert cortex.metric("cortex_completion_tokens_total", **MN) == 5
    assert cortex.metric("cortex_time_to_first_token_seconds_count", **MN) == 0
    fake.reply_override[CHAT] = (500, error_body("boom", "server_error", "internal_error"))
    r = await post(cortex, body(), headers={"x-api-key": KEY})
    assert r.status_code == 500
    snap = cortex.gw.auth.snapshot(principal)
    assert (snap.spent, snap.reserved) == (15, 0)
    r = await post(cortex, body(model="nope/nope"), headers={"x-api-key": KEY})
    assert r.status_code == 404
    assert cortex.gw.auth.snapshot(principal).reserved == 0


# -- count_tokens ----------------------------------------------------------------------------


async def test_count_tokens_uses_the_neuron_tokenizer(cortex: Cortex, fake: FakeNeuron) -> None:
    fake.tokenize_count = 57
    r = await post(
        cortex,
        {
            "model": "test-model",
            "system": "Be brief.",
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "read it"}]},
                {
                    "role": "assistant",
                    "content": [
                        {"type": "tool_use", "id": "toolu_1", "name": "Read", "input": {"p": 1}}
                    ],
                },
                {
                    "role": "user",
                    "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "x"}],
                },
            ],
            "tools": [READ_TOOL],
            "thinking": {"type": "enabled", "budget_tokens": 2000},
        },
        headers={"anthropic-version": "2023-06-01"},
        path="/v1/messages/count_tokens",
    )
    assert r.status_code == 200
    assert r.json() == {"input_tokens": 57}
    assert r.headers["x-helexa-node"] == "mock-node"
    assert r.headers["x-helexa-model"] == "test-model"
    sent = fake.last("/tokenize").json
    assert sent == {
        "model": "test-model",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "read it"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {
                        "id": "toolu_1",
                        "type": "function",
                        "function": {"name": "Read", "arguments": {"p": 1}},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "toolu_1", "content": "x"},
        ],
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "Read",
                    "description": "Read a file from disk",
                    "parameters": READ_TOOL["input_schema"],
                },
            }
        ],
        "chat_template_kwargs": {"enable_thinking": True},
    }
    assert fake.count("/models/load") == 0
    assert fake.count("/v1/chat/completions") == 0
    # Not metered and not counted as a request.
    assert cortex.metric("cortex_requests_total", **MN) == 0


@pytest.mark.parametrize(
    ("choice", "counted"), [({"type": "none"}, False), ({"type": "any"}, True)]
)
async def test_count_tokens_leaves_out_tools_the_prompt_will_not_hold(
    cortex: Cortex, fake: FakeNeuron, choice: dict[str, str], counted: bool
) -> None:
    body = {
        "model": "test-model",
        "messages": [{"role": "user", "content": "hi"}],
        "tools": [READ_TOOL],
        "tool_choice": choice,
    }
    r = await post(cortex, body, path="/v1/messages/count_tokens")
    assert r.status_code == 200, r.text
    assert ("tools" in fake.last("/tokenize").json) is counted


async def test_count_tokens_catalogue_model_sends_load_id_and_loads_nothing(
    start_cortex: CortexFactory, fake: FakeNeuron
) -> None:
    cortex = await start_cortex(
        {"mock-node": fake},
        models={"models": [{"id": "cat/model", "source": "hf", "vram_mb": 2000}]},
    )
    fake.tokenize_count = 9
    r = await post(
        cortex,
        {"model": "cat/model", "messages": [{"role": "user", "content": "hi"}]},
        path="/v1/messages/count_tokens",
    )
    assert r.status_code == 200 and r.json() == {"input_tokens": 9}
    sent = fake.last("/tokenize").json
    assert sent["model"] == "cat/model" and sent["model_id"] == "hf:cat/model"
    assert "tools" not in sent and "chat_template_kwargs" not in sent
    assert fake.count("/models/load") == 0


async def test_count_tokens_unknown_model_is_404(cortex: Cortex, fake: FakeNeuron) -> None:
    r = await post(
        cortex,
        {"model": "nope/nope", "messages": [{"role": "user", "content": "hi"}]},
        path="/v1/messages/count_tokens",
    )
    assert r.status_code == 404
    assert r.json()["type"] == "error"
    assert r.json()["error"]["type"] == "not_found_error"
    assert fake.count("/tokenize") == 0


async def test_count_tokens_invalid_body_and_neuron_errors(
    cortex: Cortex, fake: FakeNeuron
) -> None:
    r = await post(cortex, {"model": "test-model"}, path="/v1/messages/count_tokens")
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_request_error"
    fake.reply_override["/tokenize"] = (
        400,
        error_body(
            "too long", "invalid_request_error", "context_length_exceeded", prompt_len=9, max=8
        ),
    )
    r = await post(
        cortex,
        {"model": "test-model", "messages": [{"role": "user", "content": "hi"}]},
        path="/v1/messages/count_tokens",
    )
    assert r.status_code == 400
    assert r.json()["error"]["message"] == "prompt is too long: 9 tokens > 8 maximum"


# -- the anthropic SDK -----------------------------------------------------------------------


@pytest.fixture
async def sdk(start_cortex: CortexFactory, fake: FakeNeuron) -> anthropic.AsyncAnthropic:
    cortex = await start_cortex({"mock-node": fake}, entitlements=KEYS)
    return anthropic.AsyncAnthropic(base_url=cortex.url, api_key=KEY, max_retries=0)


async def test_sdk_create_and_stream_text(sdk: anthropic.AsyncAnthropic) -> None:
    msg = await sdk.messages.create(
        model="test-model",
        max_tokens=32,
        system="Be brief.",
        messages=[{"role": "user", "content": "hi"}],
    )
    assert msg.content[0].type == "text" and msg.content[0].text == MOCK_TEXT
    async with sdk.messages.stream(
        model="test-model", max_tokens=32, messages=[{"role": "user", "content": "hi"}]
    ) as stream:
        chunks = [t async for t in stream.text_stream]
        final = await stream.get_final_message()
    assert chunks == ["token0", "token1", "token2", "token3"]
    assert final.content[0].type == "text"
    assert final.content[0].text == "token0token1token2token3"
    assert final.stop_reason == "end_turn"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (10, 4)


async def test_sdk_tool_result_round_trip(sdk: anthropic.AsyncAnthropic, fake: FakeNeuron) -> None:
    fake.chat_message = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "Read", "arguments": '{"path": "/etc/hosts"}'},
            }
        ],
    }
    fake.finish_reason = "tool_calls"
    first_reply = await sdk.messages.create(
        model="test-model",
        max_tokens=64,
        tools=[READ_TOOL],  # type: ignore[list-item]
        messages=[{"role": "user", "content": "read /etc/hosts"}],
    )
    assert first_reply.stop_reason == "tool_use"
    tool_use = first_reply.content[0]
    assert tool_use.type == "tool_use" and tool_use.input == {"path": "/etc/hosts"}

    fake.chat_message = {"role": "assistant", "content": "It maps localhost."}
    fake.finish_reason = "stop"
    second = await sdk.messages.create(
        model="test-model",
        max_tokens=64,
        tools=[READ_TOOL],  # type: ignore[list-item]
        messages=[
            {"role": "user", "content": "read /etc/hosts"},
            {"role": "assistant", "content": first_reply.content},  # type: ignore[typeddict-item]
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": tool_use.id,
                        "content": [{"type": "text", "text": "127.0.0.1 localhost"}],
                        "is_error": False,
                    }
                ],
            },
        ],
    )
    assert second.content[0].type == "text"
    assert second.content[0].text == "It maps localhost."
    msgs = upstream(fake)["messages"]
    assert [m["role"] for m in msgs] == ["user", "assistant", "tool"]
    assert msgs[1]["tool_calls"] == [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "Read", "arguments": {"path": "/etc/hosts"}},
        }
    ]
    assert msgs[2] == {"role": "tool", "tool_call_id": "call_1", "content": "127.0.0.1 localhost"}


async def test_sdk_stream_multiple_tool_calls(
    sdk: anthropic.AsyncAnthropic, fake: FakeNeuron
) -> None:
    fake.stream_script = [
        content_delta("Both."),
        tool_call_head(0, "Read", "call_a"),
        tool_call_args(0, '{"path":'),
        tool_call_args(0, ' "/a"}'),
        tool_call_head(1, "Read", "call_b"),
        tool_call_args(1, '{"path": "/b"}'),
        finish_chunk("tool_calls"),
    ]
    async with sdk.messages.stream(
        model="test-model",
        max_tokens=64,
        tools=[READ_TOOL],  # type: ignore[list-item]
        messages=[{"role": "user", "content": "read two"}],
    ) as stream:
        final = await stream.get_final_message()
    assert [b.type for b in final.content] == ["text", "tool_use", "tool_use"]
    uses = [b for b in final.content if b.type == "tool_use"]
    assert [(u.id, u.name, u.input) for u in uses] == [
        ("call_a", "Read", {"path": "/a"}),
        ("call_b", "Read", {"path": "/b"}),
    ]
    assert final.stop_reason == "tool_use"


async def test_sdk_stream_thinking(sdk: anthropic.AsyncAnthropic, fake: FakeNeuron) -> None:
    fake.stream_script = [reasoning_delta("hmm "), reasoning_delta("ok"), content_delta("42")]
    async with sdk.messages.stream(
        model="test-model",
        max_tokens=64,
        thinking={"type": "enabled", "budget_tokens": 1024},
        messages=[{"role": "user", "content": "answer"}],
    ) as stream:
        final = await stream.get_final_message()
    assert [b.type for b in final.content] == ["thinking", "text"]
    assert final.content[0].thinking == "hmm ok"  # type: ignore[union-attr]
    assert final.content[1].text == "42"  # type: ignore[union-attr]


async def test_sdk_stop_sequences(sdk: anthropic.AsyncAnthropic, fake: FakeNeuron) -> None:
    fake.stream_script = [content_delta("one two"), finish_chunk("stop", "END")]
    async with sdk.messages.stream(
        model="test-model",
        max_tokens=64,
        stop_sequences=["END"],
        messages=[{"role": "user", "content": "count"}],
    ) as stream:
        final = await stream.get_final_message()
    assert final.stop_reason == "stop_sequence"
    assert final.stop_sequence == "END"
    assert upstream(fake)["stop"] == ["END"]


async def test_sdk_count_tokens_with_tools(sdk: anthropic.AsyncAnthropic, fake: FakeNeuron) -> None:
    fake.tokenize_count = 321
    res = await sdk.messages.count_tokens(
        model="test-model",
        tools=[READ_TOOL],  # type: ignore[list-item]
        messages=[{"role": "user", "content": "hi"}],
    )
    assert res.input_tokens == 321
    assert fake.last("/tokenize").json["tools"][0]["function"]["name"] == "Read"
    assert fake.count("/models/load") == 0


async def test_sdk_typed_errors(start_cortex: CortexFactory, fake: FakeNeuron) -> None:
    cortex = await start_cortex({"mock-node": fake}, entitlements=KEYS)
    sdk = anthropic.AsyncAnthropic(base_url=cortex.url, api_key=KEY, max_retries=0)
    hi: list[Any] = [{"role": "user", "content": "hi"}]
    with pytest.raises(anthropic.NotFoundError) as nf:
        await sdk.messages.create(model="nope/nope", max_tokens=8, messages=hi)
    assert nf.value.status_code == 404
    with pytest.raises(anthropic.NotFoundError):
        await sdk.messages.count_tokens(model="nope/nope", messages=hi)
    with pytest.raises(anthropic.BadRequestError) as bad:
        await sdk.messages.create(
            model="test-model",
            max_tokens=8,
            messages=[{"role": "user", "content": [{"type": "document"}]}],  # type: ignore[list-item]
        )
    assert bad.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    fake.reply_override[CHAT] = (
        400,
        error_body(
            "too long",
            "invalid_request_error",
            "context_length_exceeded",
            prompt_len=60000,
            max=16384,
        ),
    )
    with pytest.raises(anthropic.BadRequestError) as ctx_err:
        await sdk.messages.create(model="test-model", max_tokens=8, messages=hi)
    assert "prompt is too long" in str(ctx_err.value)
    with pytest.raises(anthropic.AuthenticationError):
        await anthropic.AsyncAnthropic(
            base_url=cortex.url, api_key="sk-wrong", max_retries=0
        ).messages.create(model="test-model", max_tokens=8, messages=hi)

    dead = await start_cortex({"dead": "http://127.0.0.1:1"}, entitlements=KEYS)
    sdk_dead = anthropic.AsyncAnthropic(base_url=dead.url, api_key=KEY, max_retries=0)
    with pytest.raises(anthropic.APIStatusError) as unavailable:
        await sdk_dead.messages.create(model="test-model", max_tokens=8, messages=hi)
    assert unavailable.value.status_code == 503
    assert unavailable.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]
    assert unavailable.value.response.headers["retry-after"] == "5"


async def test_sdk_stream_error_event_raises(
    sdk: anthropic.AsyncAnthropic, fake: FakeNeuron
) -> None:
    fake.fault = "drop_after"
    fake.fault_after = 2
    with pytest.raises(anthropic.APIError):
        async with sdk.messages.stream(
            model="test-model", max_tokens=8, messages=[{"role": "user", "content": "hi"}]
        ) as stream:
            await stream.get_final_message()


# -- aliases, envelopes on the edges ---------------------------------------------------------


async def test_alias_resolves_for_messages_and_count_tokens(
    start_cortex: CortexFactory, fake: FakeNeuron
) -> None:
    cortex = await start_cortex(
        {"mock-node": fake}, models={"aliases": {"helexa/small": "test-model"}}
    )
    r = await post(cortex, body(model="helexa/small"))
    assert r.status_code == 200
    assert r.json()["model"] == "test-model"
    assert r.headers["x-helexa-model"] == "test-model"
    assert upstream(fake)["model"] == "test-model"
    r = await post(cortex, body(model="helexa/small", stream=True))
    assert first(sse(r.text), "message_start")["message"]["model"] == "test-model"
    r = await post(
        cortex,
        {"model": "helexa/small", "messages": [{"role": "user", "content": "hi"}]},
        path="/v1/messages/count_tokens",
    )
    assert r.status_code == 200
    assert fake.last("/tokenize").json["model"] == "test-model"


async def test_edge_errors_use_the_anthropic_envelope(
    start_cortex: CortexFactory, fake: FakeNeuron
) -> None:
    cortex = await start_cortex(
        {"mock-node": fake},
        gateway={"max_body_mb": 0.001},
        entitlements={"keys": [{"key": KEY, "account_id": "acct", "hard_cap": 10}]},
    )
    async with httpx.AsyncClient(timeout=10) as c:
        r = await c.get(cortex.url + "/v1/messages")
        assert r.status_code == 405
        assert r.json()["error"]["type"] == "invalid_request_error"
        r = await c.post(cortex.url + "/v1/messages/nope", json=body())
        assert r.status_code == 404
        assert r.json()["type"] == "error"
        assert r.json()["error"]["type"] == "not_found_error"
    r = await post(cortex, body(messages=[{"role": "user", "content": "x" * 5000}]))
    assert r.status_code == 413
    assert r.json()["error"]["type"] == "request_too_large"
    r = await post(cortex, body(), headers={"x-api-key": KEY})
    assert r.status_code == 429
    assert r.json()["type"] == "error"
    assert r.json()["error"]["type"] == "rate_limit_error"
    assert fake.count("/v1/chat/completions") == 0


async def test_claude_code_style_request_with_beta_query(cortex: Cortex, fake: FakeNeuron) -> None:
    """Claude Code posts to `/v1/messages?beta=true` with cache_control everywhere, metadata,
    thinking blocks carrying signatures, and a streamed reply."""
    cached = {"cache_control": {"type": "ephemeral"}}
    claude_code = {
        "model": "test-model",
        "max_tokens": 32000,
        "stream": True,
        "metadata": {"user_id": "user_abc_account__session_1"},
        "system": [
            {"type": "text", "text": "You are Claude Code.", **cached},
            {"type": "text", "text": "Be concise."},
        ],
        "tools": [{**READ_TOOL, **cached}],
        "thinking": {"type": "enabled", "budget_tokens": 31999},
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "read hosts", **cached}]},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "Use Read.", "signature": "EqQBCkYI"},
                    {
                        "type": "tool_use",
                        "id": "toolu_01",
                        "name": "Read",
                        "input": {"path": "/etc/hosts"},
                    },
                ],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_01",
                        "content": "127.0.0.1 localhost",
                        **cached,
                    }
                ],
            },
        ],
    }
    headers = {
        "anthropic-version": "2023-06-01",
        "anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14",
    }
    r = await post(cortex, claude_code, headers=headers, path="/v1/messages?beta=true")
    assert r.status_code == 200
    events = sse(r.text)
    grammatical(events)
    assert text_of(events) == "token0token1token2token3"
    sent = upstream(fake)
    assert "cache_control" not in orjson.dumps(sent).decode()
    assert sent["messages"][0] == {
        "role": "system",
        "content": "You are Claude Code.\n\nBe concise.",
    }
    assert sent["messages"][2]["reasoning_content"] == "Use Read."
    assert sent["messages"][3] == {
        "role": "tool",
        "tool_call_id": "toolu_01",
        "content": "127.0.0.1 localhost",
    }
    del claude_code["max_tokens"], claude_code["stream"]
    r = await post(cortex, claude_code, headers=headers, path="/v1/messages/count_tokens?beta=true")
    assert r.status_code == 200 and r.json() == {"input_tokens": 42}


async def test_late_system_message_reaches_the_neuron_in_place(
    cortex: Cortex, fake: FakeNeuron
) -> None:
    """Claude Code's first request: `[user, system(text blocks with cache_control)]`."""
    late = {
        "role": "system",
        "content": [{"type": "text", "text": "# Env", "cache_control": {"type": "ephemeral"}}],
    }
    r = await post(cortex, body(messages=[{"role": "user", "content": "hi"}, late]))
    assert r.status_code == 200
    assert upstream(fake)["messages"] == [
        {"role": "user", "content": "hi"},
        {"role": "system", "content": "# Env"},
    ]


async def test_unsupported_system_content_is_a_400_clients_can_fall_back_on(
    cortex: Cortex, fake: FakeNeuron
) -> None:
    image = {"type": "image", "source": {"type": "url", "url": "http://x/y.png"}}
    late = {"role": "system", "content": [image]}
    r = await post(cortex, body(messages=[{"role": "user", "content": "hi"}, late]))
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error"
    assert "not supported" in err["message"] and "role 'system'" in err["message"]
    assert fake.count("/v1/chat/completions") == 0
