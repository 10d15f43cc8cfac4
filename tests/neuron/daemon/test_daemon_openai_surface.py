"""The OpenAI surface over HTTP (issue 9): the thinking switch reaches the real chat template,
unimplemented fields are refused in the OpenAI envelope naming them, `parallel_tool_calls:
false` gives one call, and every chat chunk the neuron streams is valid for the SDK's type."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from daemon_rig import CHATML, NeuronFactory, Rig, chat_body, write_tokenizer
from daemon_rig import start_neuron as start_neuron  # the fixture
from openai.types import Completion
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from helexa.neuron.tokenizer import ChatTokenizer
from rig.sse import sse_data

# Qwen3's switch, reduced: thinking off pre-fills an empty think block.
SWITCH = CHATML + (
    "{% if add_generation_prompt and enable_thinking is defined and enable_thinking is false %}"
    "<think></think>{% endif %}"
)
OFF = "<|im_start|>assistant\n<think></think>"
TOOLS = [{"type": "function", "function": {"name": "Read", "parameters": {"type": "object"}}}]
TWO_CALLS = ['<tool_call>{"name": "Read"}</tool_call>', '<tool_call>{"name": "Read"}</tool_call>']


async def loaded(rig: Rig, fake: dict[str, Any], template: str = CHATML) -> Path:
    d = rig.model("m", fake)
    write_tokenizer(d, template)
    r = await rig.load(d)
    assert r.status_code == 200, r.text
    return d


def prompt_of(d: Path) -> str:
    frame = json.loads((d / "last_generate.json").read_text())
    return ChatTokenizer(d).decode(frame["prompt_ids"])


@pytest.mark.parametrize(
    "path,extra,off",
    [
        ("/v1/chat/completions", {}, False),
        ("/v1/chat/completions", {"chat_template_kwargs": {"enable_thinking": False}}, True),
        ("/v1/chat/completions", {"enable_thinking": False}, True),
        ("/v1/chat/completions", {"reasoning_effort": "none"}, True),
        ("/v1/chat/completions", {"reasoning_effort": "high"}, False),
        ("/v1/responses", {"reasoning": {"effort": "minimal"}}, True),
        ("/v1/responses", {"reasoning": {"effort": "medium"}}, False),
    ],
)
async def test_thinking_switch_reaches_the_template(
    start_neuron: NeuronFactory, path: str, extra: dict[str, Any], off: bool
) -> None:
    rig = await start_neuron(tokenizer_for=None)
    d = await loaded(rig, {"reply": {"pieces": ["ok"]}}, SWITCH)
    body = {"model": "local/m", **extra}
    if path == "/v1/responses":
        body["input"] = "hi"
    else:
        body["messages"] = [{"role": "user", "content": "hi"}]
    r = await rig.client.post(path, json=body)
    assert r.status_code == 200, r.text
    assert prompt_of(d).endswith(OFF) is off


@pytest.mark.parametrize(
    "path,body,param",
    [
        ("/v1/chat/completions", chat_body("local/m", audio={"voice": "x"}), "audio"),
        ("/v1/chat/completions", chat_body("local/m", logprobs=True), "logprobs"),
        ("/v1/completions", {"model": "local/m", "prompt": "x", "echo": True}, "echo"),
        ("/v1/responses", {"model": "local/m", "input": "x", "background": True}, "background"),
    ],
)
async def test_refusals_are_enveloped_400s(
    start_neuron: NeuronFactory, path: str, body: dict[str, Any], param: str
) -> None:
    rig = await start_neuron()
    d = await loaded(rig, {"reply": {"pieces": ["ok"]}})
    r = await rig.client.post(path, json=body)
    assert r.status_code == 400
    err = r.json()["error"]
    assert (err["type"], err["code"], err["param"]) == (
        "invalid_request_error",
        "unsupported_parameter",
        param,
    )
    assert not (d / "last_generate.json").exists()  # refused before any generation


async def test_parallel_tool_calls_false_and_max_tool_calls_cap_the_calls(
    start_neuron: NeuronFactory,
) -> None:
    rig = await start_neuron()
    await loaded(rig, {"reply": {"pieces": TWO_CALLS}})
    r = await rig.client.post("/v1/chat/completions", json=chat_body("local/m", tools=TOOLS))
    assert len(r.json()["choices"][0]["message"]["tool_calls"]) == 2
    body = chat_body("local/m", tools=TOOLS, parallel_tool_calls=False)
    reply = ChatCompletion.model_validate(
        (await rig.client.post("/v1/chat/completions", json=body)).json()
    )
    calls = reply.choices[0].message.tool_calls
    assert calls is not None and len(calls) == 1
    assert reply.choices[0].finish_reason == "tool_calls"
    flat = [{"type": "function", "name": "Read", "parameters": {"type": "object"}}]
    req = {"model": "local/m", "input": "hi", "tools": flat, "parallel_tool_calls": False}
    out = (await rig.client.post("/v1/responses", json=req)).json()["output"]
    assert [i["type"] for i in out] == ["function_call"]
    req = {"model": "local/m", "input": "hi", "tools": flat, "max_tool_calls": 1}
    resp = (await rig.client.post("/v1/responses", json=req)).json()
    assert [i["type"] for i in resp["output"]] == ["function_call"]
    assert resp["max_tool_calls"] == 1
    req["max_tool_calls"] = 2
    out = (await rig.client.post("/v1/responses", json=req)).json()["output"]
    assert [i["type"] for i in out] == ["function_call", "function_call"]


@pytest.mark.parametrize("include_usage", [None, False, True])
async def test_every_streamed_chunk_is_valid_for_the_sdk(
    start_neuron: NeuronFactory, include_usage: bool | None
) -> None:
    rig = await start_neuron()
    pieces = ["<think>", "hm", "</think>", "Hi ", TWO_CALLS[0]]
    await loaded(rig, {"reply": {"pieces": pieces}})
    extra: dict[str, Any] = {"stream": True}
    if include_usage is not None:
        extra["stream_options"] = {"include_usage": include_usage}
    async with rig.client.stream(
        "POST", "/v1/chat/completions", json=chat_body("local/m", tools=TOOLS, **extra)
    ) as r:
        frames = await sse_data(r)
    assert frames[-1] == "[DONE]"
    chunks = [ChatCompletionChunk.model_validate(f) for f in frames[:-1]]
    usage_chunks = [c for c in chunks if not c.choices]
    assert len(usage_chunks) == (1 if include_usage else 0)
    if include_usage:
        assert usage_chunks[0].usage is not None and usage_chunks[0].usage.completion_tokens == 5
    assert all(c.choices[0].index == 0 for c in chunks if c.choices)
    async with rig.client.stream(
        "POST", "/v1/completions", json={"model": "local/m", "prompt": "x", **extra}
    ) as r:
        frames = await sse_data(r)
    texts = [f for f in frames[:-1] if f["choices"]]
    assert all("usage" not in f for f in texts)
    assert len(frames) - 1 - len(texts) == (1 if include_usage else 0)
    # the SDK's Completion type wants a finish reason: the frame that carries it validates
    Completion.model_validate(texts[-1])
