"""Structured output and forced tool calls through the daemon (issue 15), fake workers: the
generate frame carries the grammar (and `logit_bias`), the reply parses what the grammar allowed,
bad schemas and out-of-vocabulary biases are enveloped 400s before any generation, and a
constrained reply cut by `max_tokens` says it is unfinished."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from daemon_rig import CHATML, NeuronFactory, Rig, chat_body, write_tokenizer
from daemon_rig import start_neuron as start_neuron  # the fixture
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from rig.sse import sse_data

llguidance = pytest.importorskip("llguidance")

SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
    "required": ["city", "unit"],
    "additionalProperties": False,
}
FORMAT = {"type": "json_schema", "json_schema": {"name": "w", "schema": SCHEMA, "strict": True}}
ANSWER = '{"city": "Oslo", "unit": "c"}'
TOOLS = [
    {"type": "function", "function": {"name": "Read", "parameters": SCHEMA}},
    {"type": "function", "function": {"name": "ls"}},
]
CALL = '<tool_call>\n{"name": "Read", "arguments": ' + ANSWER + "}\n</tool_call>"


async def loaded(rig: Rig, fake: dict[str, Any]) -> Path:
    d = rig.model("m", fake)
    r = await rig.load(d)
    assert r.status_code == 200, r.text
    return d


def sent(d: Path) -> dict[str, Any]:
    """The last generate frame the worker got."""
    return dict(json.loads((d / "last_generate.json").read_text()))


class _Chars:
    def __init__(self) -> None:
        self.eos_token_id = 0
        self.bos_token_id = None
        self.tokens = [bytes([i]) for i in range(256)]
        self.special_token_ids = [0]

    def __call__(self, s: bytes) -> list[int]:
        return list(s)


def matches(grammar: str, text: str) -> bool:
    tok = llguidance.LLTokenizer(llguidance.TokenizerWrapper(_Chars()))
    m = llguidance.LLMatcher(tok, grammar, log_level=0)
    return not m.is_error() and m.consume_tokens(list(text.encode())) and m.is_accepting()


@pytest.mark.parametrize("stream", [False, True])
async def test_json_schema_reply_is_the_constrained_json(
    start_neuron: NeuronFactory, stream: bool
) -> None:
    rig = await start_neuron()
    d = await loaded(rig, {"reply": {"pieces": ['{"city": ', '"Oslo", ', '"unit": "c"}']}})
    body = chat_body("local/m", response_format=FORMAT, stream=stream)
    async with rig.client.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        if stream:
            frames = await sse_data(r)
            chunks = [ChatCompletionChunk.model_validate(f) for f in frames[:-1]]
            content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        else:
            await r.aread()
            content = ChatCompletion.model_validate(r.json()).choices[0].message.content or ""
    assert json.loads(content) == {"city": "Oslo", "unit": "c"}
    c = sent(d)["constraint"]
    assert c["after"] is None  # the prompt doesn't open a think block
    assert matches(c["grammar"], ANSWER) and not matches(c["grammar"], '{"city": "Oslo"}')
    assert matches(c["grammar"], "<think>x</think>\n\n" + ANSWER)  # the model may think first


async def test_a_prompt_that_opens_think_constrains_after_it(
    start_neuron: NeuronFactory,
) -> None:
    rig = await start_neuron()
    fake = {"reply": {"pieces": ["hm", "</think>\n\n", ANSWER]}, "tokenizer": {"opens_think": True}}
    d = await loaded(rig, fake)
    r = await rig.client.post(
        "/v1/chat/completions", json=chat_body("local/m", response_format=FORMAT)
    )
    msg = r.json()["choices"][0]["message"]
    assert (msg["reasoning_content"], msg["content"]) == ("hm", ANSWER)
    c = sent(d)["constraint"]
    assert c["after"] == "</think>" and matches(c["grammar"], "\n\n" + ANSWER)


async def test_json_object_and_unconstrained_requests(start_neuron: NeuronFactory) -> None:
    rig = await start_neuron()
    d = await loaded(rig, {"reply": {"pieces": ["{}"]}})
    body = chat_body("local/m", response_format={"type": "json_object"})
    assert (await rig.client.post("/v1/chat/completions", json=body)).status_code == 200
    assert matches(sent(d)["constraint"]["grammar"], '{"any": [1]}')
    for extra in ({}, {"tools": TOOLS}, {"response_format": {"type": "text"}}):
        body = chat_body("local/m", **extra)
        assert (await rig.client.post("/v1/chat/completions", json=body)).status_code == 200
        assert sent(d)["constraint"] is None


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "Read"}}])
async def test_forced_tool_choice_constrains_to_a_call(
    start_neuron: NeuronFactory, choice: Any
) -> None:
    rig = await start_neuron()
    d = await loaded(rig, {"reply": {"pieces": [CALL[:15], CALL[15:]]}})
    body = chat_body("local/m", tools=TOOLS, tool_choice=choice)
    reply = ChatCompletion.model_validate(
        (await rig.client.post("/v1/chat/completions", json=body)).json()
    )
    calls = reply.choices[0].message.tool_calls
    assert calls is not None and [c.function.name for c in calls] == ["Read"]
    assert json.loads(calls[0].function.arguments) == {"city": "Oslo", "unit": "c"}
    assert reply.choices[0].finish_reason == "tool_calls"
    g = sent(d)["constraint"]["grammar"]
    assert matches(g, CALL) and not matches(g, "Sure. " + CALL)
    ls = '<tool_call>\n{"name": "ls", "arguments": {}}\n</tool_call>'
    assert matches(g, ls) is (choice == "required")


async def test_responses_text_format_and_named_tool(start_neuron: NeuronFactory) -> None:
    rig = await start_neuron()
    d = await loaded(rig, {"reply": {"pieces": [ANSWER]}})
    fmt = {"type": "json_schema", "name": "w", "schema": SCHEMA, "strict": True}
    body = {"model": "local/m", "input": "hi", "text": {"format": fmt}}
    resp = (await rig.client.post("/v1/responses", json=body)).json()
    assert resp["text"]["format"] == fmt
    assert resp["output"][-1]["content"][0]["text"] == ANSWER
    assert matches(sent(d)["constraint"]["grammar"], ANSWER)
    flat = [{"type": "function", "name": "Read", "parameters": SCHEMA}]
    choice = {"type": "function", "name": "Read"}
    body = {"model": "local/m", "input": "hi", "tools": flat, "tool_choice": choice}
    resp = (await rig.client.post("/v1/responses", json=body)).json()
    assert resp["tool_choice"] == choice
    assert matches(sent(d)["constraint"]["grammar"], CALL)


@pytest.mark.parametrize(
    "path,body,param",
    [
        (
            "/v1/chat/completions",
            chat_body(
                "local/m",
                response_format={"type": "json_schema", "json_schema": {"schema": {"type": "x"}}},
            ),
            "response_format.json_schema.schema",
        ),
        (
            "/v1/chat/completions",
            chat_body(
                "local/m",
                tools=[{"type": "function", "function": {"name": "f", "parameters": {"$ref": 1}}}],
                tool_choice="required",
            ),
            "tools[0].function.parameters",
        ),
        (
            "/v1/chat/completions",
            chat_body("local/m", tools=TOOLS, tool_choice={"type": "function", "name": "rm"}),
            "tool_choice",
        ),
        (
            "/v1/responses",
            {"model": "local/m", "input": "x", "text": {"format": {"type": "json_schema",
                                                                  "schema": {"minimum": "a"}}}},
            "text.format.schema",
        ),
        ("/v1/chat/completions", chat_body("local/m", logit_bias={"1": 101}), "logit_bias"),
        ("/v1/chat/completions", chat_body("local/m", logit_bias={"x": 1}), "logit_bias"),
        (
            "/v1/completions",
            {"model": "local/m", "prompt": "x", "logit_bias": {str(0x110000): 1}},
            "logit_bias",
        ),
    ],
)  # fmt: skip
async def test_bad_constraints_are_enveloped_400s_before_generation(
    start_neuron: NeuronFactory, path: str, body: dict[str, Any], param: str
) -> None:
    rig = await start_neuron()
    d = await loaded(rig, {"reply": {"pieces": ["ok"]}})
    r = await rig.client.post(path, json=body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert (err["type"], err["code"], err["param"]) == (
        "invalid_request_error", "invalid_value", param
    )  # fmt: skip
    assert err["message"].startswith(f"'{param}' ")
    assert not (d / "last_generate.json").exists()


async def test_logit_bias_reaches_the_worker(start_neuron: NeuronFactory) -> None:
    rig = await start_neuron()
    d = await loaded(rig, {"reply": {"pieces": ["ok"]}})
    body = chat_body("local/m", logit_bias={"65": -100, "0066": 2.5})
    assert (await rig.client.post("/v1/chat/completions", json=body)).status_code == 200
    assert sent(d)["sampling"]["logit_bias"] == {"65": -100.0, "66": 2.5}
    body = {"model": "local/m", "prompt": "x", "logit_bias": {"7": 1}}
    assert (await rig.client.post("/v1/completions", json=body)).status_code == 200
    assert sent(d)["sampling"]["logit_bias"] == {"7": 1.0}


@pytest.mark.parametrize("stream", [False, True])
async def test_a_constrained_reply_cut_by_the_cap_says_it_is_unfinished(
    start_neuron: NeuronFactory, stream: bool
) -> None:
    rig = await start_neuron()
    await loaded(rig, {"reply": {"pieces": ['{"city": "Os'], "finish_reason": "length"}})

    async def finish(**extra: Any) -> dict[str, Any]:
        body = chat_body("local/m", stream=stream, **extra)
        async with rig.client.stream("POST", "/v1/chat/completions", json=body) as r:
            if stream:
                return dict((await sse_data(r))[-2]["choices"][0])
            await r.aread()
            return dict(r.json()["choices"][0])

    cut = await finish(response_format=FORMAT)
    assert cut["finish_reason"] == "length"
    assert cut["incomplete_details"]["reason"] == "max_tokens"
    assert "before it completed the requested format" in cut["incomplete_details"]["message"]
    free = await finish()
    assert free["finish_reason"] == "length" and "incomplete_details" not in free


async def test_forced_call_arguments_stream_as_generated(start_neuron: NeuronFactory) -> None:
    rig = await start_neuron()
    pieces = [CALL[i : i + 4] for i in range(0, len(CALL), 4)]
    await loaded(rig, {"reply": {"pieces": pieces}})
    body = chat_body("local/m", tools=TOOLS, tool_choice="required", stream=True)
    async with rig.client.stream("POST", "/v1/chat/completions", json=body) as r:
        frames = await sse_data(r)
    chunks = [ChatCompletionChunk.model_validate(f) for f in frames[:-1]]
    calls = [tc for c in chunks for tc in (c.choices[0].delta.tool_calls or [])]
    assert calls[0].id and calls[0].function and calls[0].function.name == "Read"
    args = [tc.function.arguments for tc in calls[1:] if tc.function]
    assert len(args) > 3 and json.loads("".join(a or "" for a in args)) == json.loads(ANSWER)
    assert chunks[-1].choices[0].finish_reason == "tool_calls"

    flat = [{"type": "function", "name": "Read", "parameters": SCHEMA}]
    body = {"model": "local/m", "input": "hi", "tools": flat, "tool_choice": "required"}
    async with rig.client.stream("POST", "/v1/responses", json={**body, "stream": True}) as r:
        events = await sse_data(r)
    deltas = [e["delta"] for e in events if e["type"] == "response.function_call_arguments.delta"]
    done = [e for e in events if e["type"] == "response.output_item.done"]
    assert len(deltas) > 3 and "".join(deltas) == done[0]["item"]["arguments"]
    assert json.loads(done[0]["item"]["arguments"]) == json.loads(ANSWER)
    assert events[-1]["type"] == "response.completed"


async def test_a_template_with_xml_calls_gets_xml_grammars_and_typed_calls(
    start_neuron: NeuronFactory,
) -> None:
    rig = await start_neuron()
    xml = (
        "<tool_call>\n<function=Read>\n<parameter=city>\n7\n</parameter>\n"
        "<parameter=unit>\nc\n</parameter>\n</function>\n</tool_call>"
    )
    pieces = [xml[i : i + 5] for i in range(0, len(xml), 5)]
    fake = {"reply": {"pieces": pieces}, "tokenizer": {"xml_calls": True}}
    d = await loaded(rig, fake)
    named = {"type": "function", "function": {"name": "Read"}}
    for stream in (False, True):
        body = chat_body("local/m", tools=TOOLS, tool_choice=named, stream=stream)
        async with rig.client.stream("POST", "/v1/chat/completions", json=body) as r:
            if stream:
                frames = await sse_data(r)
                calls = [
                    c for f in frames[:-1] for c in f["choices"][0]["delta"].get("tool_calls", [])
                ]
                args = "".join(c["function"]["arguments"] for c in calls)
                # the call streams: its name first, then its arguments as JSON, piece by piece
                assert calls[0]["function"]["name"] == "Read" and len(calls) > 4
            else:
                await r.aread()
                args = r.json()["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"]
        assert json.loads(args) == {"city": "7", "unit": "c"}  # city: a string, as its schema says
        g = sent(d)["constraint"]["grammar"]
        assert matches(g, xml) and not matches(g, CALL)


async def test_xml_calls_are_read_from_the_real_template(start_neuron: NeuronFactory) -> None:
    """The real tokenizer: a template that writes `<function=` gets XML call grammars."""
    rig = await start_neuron(tokenizer_for=None)
    coder = CHATML + (
        "{% if tools %}{% for t in tools %}<tool_call>\n<function={{ t.function.name }}>\n"
        "</function>\n</tool_call>{% endfor %}{% endif %}"
    )
    d = rig.model("m", {"reply": {"pieces": ["x"]}})
    write_tokenizer(d, coder)
    assert (await rig.load(d)).status_code == 200
    body = chat_body("local/m", tools=TOOLS, tool_choice="required")
    assert (await rig.client.post("/v1/chat/completions", json=body)).status_code == 200
    xml = "<tool_call>\n<function=ls>\n</function>\n</tool_call>"
    assert matches(sent(d)["constraint"]["grammar"], xml)
    write_tokenizer(d, CHATML)
    await rig.unload("local/m")
    assert (await rig.load(d)).status_code == 200
    assert (await rig.client.post("/v1/chat/completions", json=body)).status_code == 200
    assert not matches(sent(d)["constraint"]["grammar"], xml)


async def test_tool_choice_none_counts_as_it_renders(start_neuron: NeuronFactory) -> None:
    rig = await start_neuron()
    await loaded(rig, {"reply": {"pieces": ["ok"]}})
    body = chat_body("local/m", tools=TOOLS, tool_choice="none")
    count = (await rig.client.post("/tokenize", json=body)).json()["count"]
    usage = (await rig.client.post("/v1/chat/completions", json=body)).json()["usage"]
    plain = (await rig.client.post("/tokenize", json=chat_body("local/m"))).json()["count"]
    assert count == usage["prompt_tokens"] == plain
