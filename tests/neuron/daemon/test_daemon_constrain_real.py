"""Tier 1: structured output and forced tool calls end to end on a tiny random-weight Qwen3
(the real worker, CPU): its output is noise unaided, so every valid answer here is the grammar's
doing, in both harnesses. Thinking is off (the template pre-fills an empty think block); seeds
vary per request."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from daemon_rig import NeuronFactory, Rig, chat_body
from daemon_rig import start_neuron as start_neuron  # the fixture
from test_daemon_gguf_real import MODEL as GGUF_MODEL
from test_daemon_gguf_real import gguf_neuron

from helexa.neuron.tokenizer import ChatTokenizer
from rig.sse import sse_data

pytest.importorskip("torch")
pytest.importorskip("transformers")
jsonschema = pytest.importorskip("jsonschema")

pytestmark = pytest.mark.torch

ENGINE_CMD = [sys.executable, "-m", "helexa.neuron.engine.worker"]
MODEL = "tiny/qwen3"
OFF = {"enable_thinking": False}

WORD = {"type": "string", "maxLength": 6}
ORDER = {
    "type": "object",
    "properties": {
        "id": {"type": "integer", "minimum": 0, "maximum": 999},
        "status": {"enum": ["open", "shipped", "lost"]},
        "customer": {
            "type": "object",
            "properties": {"name": WORD, "vip": {"type": "boolean"}},
            "required": ["name", "vip"],
            "additionalProperties": False,
        },
        "items": {
            "type": "array",
            "maxItems": 3,
            "items": {
                "type": "object",
                "properties": {"sku": WORD, "qty": {"type": "integer", "minimum": 1, "maximum": 9}},
                "required": ["sku", "qty"],
                "additionalProperties": False,
            },
        },
    },
    "required": ["id", "status", "customer", "items"],
    "additionalProperties": False,
}
FORMAT = {"type": "json_schema", "json_schema": {"name": "order", "schema": ORDER, "strict": True}}
READ = {
    "type": "object",
    "properties": {"path": WORD, "lines": {"type": "integer", "minimum": 1, "maximum": 99}},
    "required": ["path"],
    "additionalProperties": False,
}
NO_ARGS = {"type": "object", "properties": {}, "additionalProperties": False}
TOOLS = [
    {"type": "function", "function": {"name": "Read", "parameters": READ}},
    {"type": "function", "function": {"name": "ls", "parameters": NO_ARGS}},
]


@dataclass
class Served:
    rig: Rig
    model: str


@pytest.fixture(params=["torch", "llamacpp"])
async def served(
    request: pytest.FixtureRequest,
    start_neuron: NeuronFactory,
    tiny_qwen3: Path,
    tmp_path: Path,
) -> Served:
    """The tiny Qwen3 behind the daemon, in the torch harness or as its GGUF in llamacpp."""
    if request.param == "llamacpp":
        gguf = request.getfixturevalue("tiny_gguf")["qwen3-F32"]
        return Served(await gguf_neuron(start_neuron, gguf, tmp_path), GGUF_MODEL)
    rig = await start_neuron(tokenizer_for=None, estimate_mb=None)
    rig.neuron.supervisor.worker_cmd = ENGINE_CMD
    r = await rig.client.post(
        "/models/load", json={"model_id": str(tiny_qwen3), "served_model_id": MODEL}
    )
    assert r.status_code == 200, r.text
    return Served(rig, MODEL)


async def chat(s: Served, stream: bool, **extra: Any) -> tuple[dict[str, Any], str]:
    """(the message as one object, the finish reason), streamed or not."""
    rig = s.rig
    body = chat_body(s.model, "Order?", chat_template_kwargs=OFF, **{"max_tokens": 400, **extra})
    if not stream:
        r = await rig.client.post("/v1/chat/completions", json=body)
        assert r.status_code == 200, r.text
        choice = r.json()["choices"][0]
        return choice["message"], choice["finish_reason"]
    async with rig.client.stream(
        "POST", "/v1/chat/completions", json={**body, "stream": True}
    ) as r:
        assert r.status_code == 200
        frames = await sse_data(r)
    content, calls, finish = "", {}, ""
    for f in frames[:-1]:
        choice = f["choices"][0]
        delta = choice["delta"]
        content += delta.get("content") or ""
        for c in delta.get("tool_calls") or []:
            call = calls.setdefault(c["index"], {"name": "", "arguments": ""})
            fn = c.get("function") or {}
            call["name"] += fn.get("name") or ""
            call["arguments"] += fn.get("arguments") or ""
        finish = choice["finish_reason"] or finish
    message: dict[str, Any] = {"content": content}
    if calls:
        message["tool_calls"] = [{"function": calls[i]} for i in sorted(calls)]
    return message, finish


async def test_json_schema_answers_validate(served: Served, tiny_qwen3: Path) -> None:
    for stream in (False, True):
        for seed in range(3):
            message, finish = await chat(served, stream, response_format=FORMAT, seed=seed)
            assert finish == "stop", message
            jsonschema.validate(json.loads(message["content"]), ORDER)
    # any object: free keys and strings, which random weights rarely close; a bias on the
    # closing characters (logit_bias at work) makes them close
    tok = ChatTokenizer(tiny_qwen3)
    bias = {str(tok.token_to_id(c)): 10 for c in ('"', "}")}
    for stream in (False, True):
        message, finish = await chat(
            served, stream, response_format={"type": "json_object"}, seed=7, logit_bias=bias
        )
        assert finish == "stop" and isinstance(json.loads(message["content"]), dict)


async def test_forced_tool_calls_are_valid_calls(served: Served) -> None:
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
    named = {"type": "function", "function": {"name": "Read"}}
    for stream, seed in ((False, 0), (True, 1), (False, 2), (True, 3)):
        for choice, name in (("required", None), (named, "Read")):
            message, finish = await chat(
                served,
                stream,
                tools=TOOLS,
                tool_choice=choice,
                parallel_tool_calls=False,
                seed=seed,
            )
            assert finish == "tool_calls", message
            assert not message["content"] and len(message["tool_calls"]) == 1
            fn = message["tool_calls"][0]["function"]
            assert fn["name"] in schemas and (name is None or fn["name"] == name)
            jsonschema.validate(json.loads(fn["arguments"]), schemas[fn["name"]])


async def test_tool_choice_none_calls_nothing_and_renders_no_tools(served: Served) -> None:
    rig = served.rig
    body = chat_body(served.model, "Order?", chat_template_kwargs=OFF, max_tokens=40, seed=1)
    plain = (await rig.client.post("/v1/chat/completions", json=body)).json()
    body["tools"], body["tool_choice"] = TOOLS, "none"
    r = (await rig.client.post("/v1/chat/completions", json=body)).json()
    assert r["usage"]["prompt_tokens"] == plain["usage"]["prompt_tokens"]
    assert "tool_calls" not in r["choices"][0]["message"]


async def test_auto_without_parallel_calls_gives_one_valid_call_at_most(served: Served) -> None:
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
    for seed in range(4):
        message, finish = await chat(
            served, seed % 2 == 1, tools=TOOLS, parallel_tool_calls=False, seed=seed, max_tokens=80
        )
        calls = message.get("tool_calls") or []
        assert len(calls) <= 1
        if finish == "length":  # cut: a call's head may be left as text
            continue
        assert "<tool_call>" not in (message["content"] or "")
        if calls:
            fn = calls[0]["function"]
            jsonschema.validate(json.loads(fn["arguments"]), schemas[fn["name"]])
