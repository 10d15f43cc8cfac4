"""The Open Responses compliance suite's checks, ported, against the neuron's /v1/responses.

The suite (openresponses/openresponses, `src/lib/compliance-tests.ts`) sends a dozen requests and
checks each reply against the `ResponseResource` schema, then a few semantic rules; streamed
replies must have every event valid against the streaming-event union and a final response from
`response.completed` / `response.incomplete` / `response.failed`. Here the same requests go to a
real neuron (fake workers scripted to answer each one), every object and event is validated with
the `openresponses-types` package and with the `openai` SDK's own types, and the suite's rules
are asserted. Where we depart (no stored responses, no file or vision input, no built-in tools)
the test pins the clear 400 a client gets instead, and the function-call round trip is run the
stateless way (replaying the call in `input`). Beyond the suite: the `max_output_tokens` cut
(`response.incomplete`) and the mid-stream `error` event.
"""

from __future__ import annotations

import json
from typing import Any

import openresponses_types as ort
import pytest
from daemon_rig import NeuronFactory, Rig, set_fake
from daemon_rig import start_neuron as start_neuron  # the fixture
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import BaseModel, TypeAdapter

from rig.sse import sse_events

OPENAI_EVENT: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)


def _event_type(cls: type[BaseModel]) -> str:
    """The one value of an event model's `type` enum."""
    enum: Any = cls.model_fields["type"].annotation
    return str(next(iter(enum)).value)


# The streaming-event union of the suite's SSE parser, by event type.
_EVENT_MODELS: dict[str, type[BaseModel]] = {
    _event_type(cls): cls
    for cls in (getattr(ort, n) for n in dir(ort) if n.endswith("StreamingEvent"))
}
# openresponses-types 2.4.0 still calls these `response.reasoning.*`; the spec renamed them to
# OpenAI's `response.reasoning_text.*` (schema/components/schemas/ResponseReasoning*Event.json),
# which is what we send: same fields, validated with the package's model under the old name.
_RENAMED = {
    "response.reasoning_text.delta": "response.reasoning.delta",
    "response.reasoning_text.done": "response.reasoning.done",
}

WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Get the current weather for a location",
    "parameters": {
        "type": "object",
        "properties": {
            "location": {
                "type": "string",
                "description": "The city and state, e.g. San Francisco, CA",
            }
        },
        "required": ["location"],
    },
}
WEATHER_CALL = (
    '<tool_call>{"name": "get_weather", "arguments": {"location": "San Francisco, CA"}}</tool_call>'
)


def user(text: str) -> dict[str, Any]:
    return {"type": "message", "role": "user", "content": text}


def valid_resource(obj: Any) -> dict[str, Any]:
    """The suite's schema check, with both type sets (the SDK's usage type also wants
    `cache_write_tokens`, which Open Responses does not have)."""
    assert isinstance(obj, dict)
    ort.ResponseResource.model_validate(obj)
    usage = obj.get("usage")
    fixed = obj
    if usage is not None:
        details = {**usage["input_tokens_details"], "cache_write_tokens": 0}
        fixed = {**obj, "usage": {**usage, "input_tokens_details": details}}
    Response.model_validate(fixed)
    return obj


def valid_event(name: str, data: bytes) -> dict[str, Any]:
    obj = json.loads(data)
    assert obj["type"] == name
    model = _EVENT_MODELS[_RENAMED.get(name, name)]
    model.model_validate({**obj, "type": _RENAMED.get(name, name)})
    if "response" in obj:
        valid_resource(obj["response"])
    else:
        OPENAI_EVENT.validate_python(obj)
    return dict(obj)


async def create(rig: Rig, body: dict[str, Any]) -> dict[str, Any]:
    r = await rig.client.post("/v1/responses", json={"model": "local/m", **body})
    assert r.status_code == 200, r.text
    return valid_resource(r.json())


async def stream(rig: Rig, body: dict[str, Any]) -> list[dict[str, Any]]:
    req = {"model": "local/m", **body, "stream": True}
    async with rig.client.stream("POST", "/v1/responses", json=req) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        raw = await sse_events(r)
    events = []
    for name, data in raw:
        assert name is not None and data != b"[DONE]"
        events.append(valid_event(name, data))
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    return events


def final_response(events: list[dict[str, Any]]) -> dict[str, Any]:
    """As the suite's parser: the response of the terminal event, which must be the last."""
    terminal = ("response.completed", "response.incomplete", "response.failed")
    assert events[-1]["type"] in terminal
    assert sum(e["type"] in terminal for e in events) == 1
    return dict(events[-1]["response"])


async def scripted(start_neuron: NeuronFactory, pieces: list[str]) -> Rig:
    rig = await start_neuron()
    d = rig.model("m", {"reply": {"pieces": pieces}})
    r = await rig.load(d)
    assert r.status_code == 200, r.text
    return rig


# -- the suite's six (seven) checks ---------------------------------------------------------------


async def test_basic_response(start_neuron: NeuronFactory) -> None:
    rig = await scripted(start_neuron, ["Hello ", "there, ", "friend."])
    resp = await create(rig, {"input": [user("Say hello in exactly 3 words.")]})
    assert resp["output"] and resp["status"] == "completed"
    assert resp["output"][0]["content"][0]["text"] == "Hello there, friend."


async def test_streaming_response(start_neuron: NeuronFactory) -> None:
    rig = await scripted(start_neuron, ["<think>", "count", "</think>", "1, 2, ", "3, 4, 5"])
    events = await stream(rig, {"input": [user("Count from 1 to 5.")]})
    resp = final_response(events)
    assert resp["status"] == "completed"
    assert [i["type"] for i in resp["output"]] == ["reasoning", "message"]
    text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert text == "1, 2, 3, 4, 5" == resp["output"][1]["content"][0]["text"]
    assert events[0]["type"] == "response.created" and events[1]["type"] == "response.in_progress"


async def test_system_prompt(start_neuron: NeuronFactory) -> None:
    rig = await scripted(start_neuron, ["Ahoy, matey!"])
    resp = await create(
        rig,
        {
            "input": [
                {
                    "type": "message",
                    "role": "system",
                    "content": "You are a pirate. Always respond in pirate speak.",
                },
                user("Say hello."),
            ]
        },
    )
    assert resp["output"] and resp["status"] == "completed"


async def test_tool_calling(start_neuron: NeuronFactory) -> None:
    rig = await scripted(start_neuron, [WEATHER_CALL])
    body = {"input": [user("What's the weather like in San Francisco?")], "tools": [WEATHER_TOOL]}
    resp = await create(rig, body)
    calls = [i for i in resp["output"] if i["type"] == "function_call"]
    assert len(calls) == 1 and calls[0]["name"] == "get_weather"
    assert json.loads(calls[0]["arguments"]) == {"location": "San Francisco, CA"}
    assert resp["tools"] == [{**WEATHER_TOOL, "strict": None}]


async def test_tool_calling_streaming(start_neuron: NeuronFactory) -> None:
    rig = await scripted(start_neuron, [WEATHER_CALL])
    body = {"input": [user("What's the weather like in San Francisco?")], "tools": [WEATHER_TOOL]}
    events = await stream(rig, body)
    types = [e["type"] for e in events]
    assert any(
        e["type"] == "response.output_item.added" and e["item"]["type"] == "function_call"
        for e in events
    )
    assert "response.function_call_arguments.delta" in types
    assert "response.function_call_arguments.done" in types
    assert any(
        e["type"] == "response.output_item.done" and e["item"]["type"] == "function_call"
        for e in events
    )
    assert final_response(events)["status"] == "completed"


async def test_image_input_on_a_text_model_is_a_clear_400(start_neuron: NeuronFactory) -> None:
    """The suite's image check needs a vision model; a text-only model (all the neuron serves
    until vision lands) refuses the image in the OpenAI envelope instead of dropping it."""
    rig = await scripted(start_neuron, ["A red heart."])
    image = {"type": "input_image", "image_url": "data:image/png;base64,iVBORw0KGgo="}
    text = {"type": "input_text", "text": "What do you see in this image?"}
    req = {
        "model": "local/m",
        "input": [{"type": "message", "role": "user", "content": [text, image]}],
    }
    r = await rig.client.post("/v1/responses", json=req)
    assert r.status_code == 400
    assert r.json()["error"] == {
        "message": "model 'local/m' does not accept image input",
        "type": "invalid_request_error",
        "code": "unsupported_content",
        "param": None,
    }


async def test_multi_turn(start_neuron: NeuronFactory) -> None:
    rig = await scripted(start_neuron, ["Your name is Alice."])
    resp = await create(
        rig,
        {
            "input": [
                user("My name is Alice."),
                {
                    "type": "message",
                    "role": "assistant",
                    "content": "Hello Alice! Nice to meet you. How can I help you today?",
                },
                user("What is my name?"),
            ]
        },
    )
    assert resp["output"] and resp["status"] == "completed"


async def test_function_call_round_trip_stateless(start_neuron: NeuronFactory) -> None:
    """The suite's round trip continues with `previous_response_id`; we store nothing, so the
    client replays the call and sends its output, and the model answers."""
    rig = await scripted(start_neuron, [WEATHER_CALL])
    ask = user("Use the weather tool to get the temperature in San Francisco.")
    first = await create(rig, {"input": [ask], "tools": [WEATHER_TOOL]})
    call = next(i for i in first["output"] if i["type"] == "function_call")
    set_fake(rig.root / "m", {"reply": {"pieces": ["It is 64 degrees and clear."]}})
    replay = {k: call[k] for k in ("type", "call_id", "name", "arguments")}
    output = {
        "type": "function_call_output",
        "call_id": call["call_id"],
        "output": "64 degrees and clear",
    }
    second = await create(rig, {"input": [ask, replay, output], "tools": [WEATHER_TOOL]})
    assert second["status"] == "completed" and second["output"]
    assert second["output"][-1]["content"][0]["text"] == "It is 64 degrees and clear."


@pytest.mark.parametrize(
    "extra,code,param,message",
    [
        (
            {"previous_response_id": "resp_1"},
            "unsupported_parameter",
            "previous_response_id",
            "previous_response_id is not supported: this server does not store responses",
        ),
        (
            {
                "input": [
                    {
                        "type": "message",
                        "role": "user",
                        "content": [
                            {"type": "input_file", "filename": "a.pdf", "file_data": "data:,x"}
                        ],
                    }
                ]
            },
            "unsupported_content",
            None,
            "file input is not supported",
        ),
        (
            {"tools": [{"type": "web_search", "external_web_access": False}]},
            "unsupported_parameter",
            "tools",
            "tool type 'web_search' is not supported; only 'function' tools are",
        ),
        (
            {"tools": [{"type": "file_search", "vector_store_ids": ["vs_1"]}]},
            "unsupported_parameter",
            "tools",
            "tool type 'file_search' is not supported; only 'function' tools are",
        ),
    ],
)
async def test_the_suites_other_checks_get_clear_400s(
    start_neuron: NeuronFactory, extra: dict[str, Any], code: str, param: str | None, message: str
) -> None:
    rig = await scripted(start_neuron, ["unused"])
    r = await rig.client.post("/v1/responses", json={"model": "local/m", "input": "hi", **extra})
    assert r.status_code == 400
    assert r.json()["error"] == {
        "message": message,
        "type": "invalid_request_error",
        "code": code,
        "param": param,
    }


# -- beyond the suite -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "pieces,cut",
    [(["Once", " upon", " a", " time"], "message"), (["<think>", "hmm", " more"], "reasoning")],
)
async def test_max_output_tokens_ends_incomplete(
    start_neuron: NeuronFactory, pieces: list[str], cut: str
) -> None:
    rig = await scripted(start_neuron, pieces)
    body = {"input": [user("Tell me a story.")], "max_output_tokens": 2}
    events = await stream(rig, body)
    resp = final_response(events)
    assert events[-1]["type"] == "response.incomplete"
    assert resp["status"] == "incomplete"
    assert resp["incomplete_details"] == {"reason": "max_output_tokens"}
    assert resp["completed_at"] is None and resp["usage"]["output_tokens"] == 2
    done = [e["item"] for e in events if e["type"] == "response.output_item.done"]
    assert [(i["type"], i["status"]) for i in done] == [(cut, "incomplete")]
    assert resp["output"] == done
    once = await create(rig, body)
    assert once["status"] == "incomplete"
    assert [(i["type"], i["status"]) for i in once["output"]] == [(cut, "incomplete")]


async def test_mid_stream_fault_is_a_valid_error_event(start_neuron: NeuronFactory) -> None:
    rig = await start_neuron()
    d = rig.model("m", {"reply": {"pieces": ["a", "b", "c"], "crash_after": 2}})
    assert (await rig.load(d)).status_code == 200
    events = await stream(rig, {"input": "hi"})
    assert events[-1]["type"] == "error"
    assert events[-1]["error"]["code"] == events[-1]["code"] == "worker_crashed"
    assert not any(e["type"].startswith("response.complete") for e in events)
