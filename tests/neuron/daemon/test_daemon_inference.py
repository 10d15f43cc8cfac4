"""Inference over HTTP against fake workers: replies, stream grammar, admission,
faults mid-stream, cancellation, prompt and output caps."""

from __future__ import annotations

import asyncio
import base64
import json
import struct
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from daemon_rig import (
    NeuronFactory,
    Rig,
    chat_body,
    chat_prompt_len,
    set_fake,
    until,
    worker_events,
)
from daemon_rig import start_neuron as start_neuron  # the fixture

from rig.sse import sse_data, sse_events


async def loaded(
    rig: Rig, name: str = "m", fake: dict[str, Any] | None = None, **spec: Any
) -> Path:
    d = rig.model(name, fake)
    r = await rig.load(d, **spec)
    assert r.status_code == 200, r.text
    return d


def last_generate(d: Path) -> dict[str, Any]:
    return dict(json.loads((d / "last_generate.json").read_text()))


async def test_chat_non_streaming(start_neuron: NeuronFactory) -> None:
    rig = await start_neuron()
    d = await loaded(rig, fake={"reply": {"pieces": ["Hel", "lo", "!"]}})
    r = await rig.client.post(
        "/v1/chat/completions",
        json=chat_body("local/m", temperature=0.5, seed=7, stop=["xx"]),
        headers={"x-request-id": "req-abc"},
    )
    assert r.status_code == 200, r.text
    n = chat_prompt_len("hi")
    assert r.headers["x-helexa-prompt-tokens"] == str(n)
    assert r.headers["x-request-id"] == "req-abc"
    body = r.json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert body["model"] == "local/m"
    choice = body["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": "Hello!"}
    assert choice["finish_reason"] == "stop" and choice["stop_reason"] is None
    assert body["usage"]["prompt_tokens"] == n
    assert body["usage"]["completion_tokens"] == 3
    assert body["usage"]["total_tokens"] == n + 3
    frame = last_generate(d)
    assert frame["prompt_ids"][:12] == [ord(c) for c in "<|im_start|>"]
    assert len(frame["prompt_ids"]) == n
    assert frame["sampling"] == {"temperature": 0.5, "seed": 7}
    assert frame["stop"] == ["xx"]
    assert set(frame["hold"]) == {"<think>", "</think>", "<tool_call>", "</tool_call>"}
    assert frame["max_tokens"] == 4096 - n  # clamped to the context left
    assert rig.metric("neuron_requests_total", model="local/m", endpoint="chat", status="200") == 1
    assert rig.metric("neuron_prompt_tokens_total", model="local/m") == n
    assert rig.metric("neuron_generated_tokens_total", model="local/m") == 3
    assert rig.metric("neuron_time_to_first_token_seconds_count", model="local/m") == 1
    info = await rig.info("local/m")
    assert info["last_used_at"] is not None


async def test_chat_stream_grammar(start_neuron: NeuronFactory) -> None:
    rig = await start_neuron()
    await loaded(rig, fake={"reply": {"pieces": ["Hel", "lo"]}})
    async with rig.client.stream(
        "POST", "/v1/chat/completions", json=chat_body("local/m", stream=True)
    ) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["cache-control"] == "no-cache"
        assert r.headers["x-helexa-prompt-tokens"] == str(chat_prompt_len("hi"))
        frames = await sse_data(r)
    assert frames[-1] == "[DONE]"
    chunks = frames[:-1]
    ids = {c["id"] for c in chunks}
    assert len(ids) == 1 and all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks[1:-1])
    assert text == "Hello"
    final = chunks[-1]["choices"][0]
    assert final["delta"] == {} and final["finish_reason"] == "stop"
    # no usage chunk and no `usage` key unless the client asks (the README's example relies on it)
    assert all("usage" not in c for c in chunks)
    body = chat_body("local/m", stream=True, stream_options={"include_usage": True})
    async with rig.client.stream("POST", "/v1/chat/completions", json=body) as r:
        frames = await sse_data(r)
    assert frames[-1] == "[DONE]"
    assert all("usage" not in c for c in frames[:-2])
    usage = frames[-2]
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 2


async def test_reasoning_and_tool_calls(start_neuron: NeuronFactory) -> None:
    rig = await start_neuron()
    call = '{"name": "Read", "arguments": {"path": "/etc/hosts"}}'
    pieces = [
        "<think>",
        "Let me",
        " read.",
        "</think>",
        "\n\n",
        "<tool_call>",
        call,
        "</tool_call>",
    ]
    await loaded(rig, fake={"reply": {"pieces": pieces}})
    tools = [{"type": "function", "function": {"name": "Read", "parameters": {"type": "object"}}}]
    r = await rig.client.post("/v1/chat/completions", json=chat_body("local/m", tools=tools))
    body = r.json()
    msg = body["choices"][0]["message"]
    assert msg["reasoning_content"] == "Let me read."
    assert msg["content"] is None
    assert msg["tool_calls"][0]["function"] == {
        "name": "Read",
        "arguments": '{"path":"/etc/hosts"}',
    }
    assert body["choices"][0]["finish_reason"] == "tool_calls"
    assert body["usage"]["completion_tokens_details"]["reasoning_tokens"] == 4
    # streaming: the tool call as a head and an args frame
    async with rig.client.stream(
        "POST", "/v1/chat/completions", json=chat_body("local/m", tools=tools, stream=True)
    ) as resp:
        frames = await sse_data(resp)
    deltas = [f["choices"][0]["delta"] for f in frames[:-1] if f["choices"]]
    reasoning = "".join(d.get("reasoning_content", "") for d in deltas)
    assert reasoning == "Let me read."
    tcs = [d["tool_calls"][0] for d in deltas if "tool_calls" in d]
    assert tcs[0]["function"] == {"name": "Read", "arguments": ""} and tcs[0]["id"]
    assert tcs[1]["function"] == {"arguments": '{"path":"/etc/hosts"}'}
    assert frames[-2]["choices"][0]["finish_reason"] == "tool_calls"
    # without tools nothing is parsed as a call
    r = await rig.client.post("/v1/chat/completions", json=chat_body("local/m"))
    msg = r.json()["choices"][0]["message"]
    assert "tool_calls" not in msg and "<tool_call>" in msg["content"]


async def test_template_opened_think(start_neuron: NeuronFactory) -> None:
    rig = await start_neuron()
    fake = {"tokenizer": {"opens_think": True}, "reply": {"pieces": ["hmm", "</think>", "Hi"]}}
    await loaded(rig, fake=fake)
    r = await rig.client.post("/v1/chat/completions", json=chat_body("local/m"))
    msg = r.json()["choices"][0]["message"]
    assert msg == {"role": "assistant", "content": "Hi", "reasoning_content": "hmm"}


async def test_prompt_cap_and_output_clamp(start_neuron: NeuronFactory) -> None:
    rig = await start_neuron(max_prompt_tokens=60, max_output_tokens=20)
    d = await loaded(rig)
    long = "x" * 100
    r = await rig.client.post("/v1/chat/completions", json=chat_body("local/m", long))
    assert r.status_code == 400
    assert "retry-after" not in r.headers
    n = chat_prompt_len(long)
    assert r.json()["error"] == {
        "message": f"prompt is {n} tokens; this neuron accepts at most 60",
        "type": "invalid_request_error",
        "code": "context_length_exceeded",
        "param": None,
        "prompt_len": n,
        "max": 60,
    }
    r = await rig.client.post("/v1/chat/completions", json=chat_body("local/m", max_tokens=10**6))
    assert r.status_code == 200
    assert last_generate(d)["max_tokens"] == 20
    assert (await rig.info("local/m"))["limit"] == {"context": 80, "input": 60, "output": 20}


async def test_completions(start_neuron: NeuronFactory) -> None:
    rig = await start_neuron()
    d = await loaded(rig, fake={"reply": {"pieces": ["a", "b"], "finish_reason": "length"}})
    r = await rig.client.post("/v1/completions", json={"model": "local/m", "prompt": "abc"})
    assert r.status_code == 200
    assert r.headers["x-helexa-prompt-tokens"] == "3"
    body = r.json()
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-")
    assert body["choices"][0]["text"] == "ab"
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    frame = last_generate(d)
    assert frame["max_tokens"] == 16 and frame["hold"] == [] and frame["prompt_ids"] == [97, 98, 99]
    asked = {"include_usage": True}
    async with rig.client.stream(
        "POST",
        "/v1/completions",
        json={"model": "local/m", "prompt": ["abc"], "stream": True, "stream_options": asked},
    ) as resp:
        frames = await sse_data(resp)
    assert frames[-1] == "[DONE]"
    assert "".join(f["choices"][0]["text"] for f in frames[:-2]) == "ab"
    assert frames[-3]["choices"][0]["finish_reason"] == "length"
    assert frames[-2]["choices"] == [] and frames[-2]["usage"]["prompt_tokens"] == 3


async def test_responses(start_neuron: NeuronFactory) -> None:
    rig = await start_neuron()
    await loaded(rig, fake={"reply": {"pieces": ["<think>", "r", "</think>", "Hi"]}})
    r = await rig.client.post("/v1/responses", json={"model": "local/m", "input": "hello"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "response" and body["status"] == "completed"
    assert [i["type"] for i in body["output"]] == ["reasoning", "message"]
    assert body["output"][1]["content"][0]["text"] == "Hi"
    assert int(r.headers["x-helexa-prompt-tokens"]) == body["usage"]["input_tokens"]
    async with rig.client.stream(
        "POST", "/v1/responses", json={"model": "local/m", "input": "hello", "stream": True}
    ) as resp:
        events = await sse_events(resp)
    names = [e for e, _ in events]
    assert names[:2] == ["response.created", "response.in_progress"]
    assert names[-1] == "response.completed"
    seqs = [json.loads(d)["sequence_number"] for _, d in events]
    assert seqs == list(range(len(events)))
    assert "response.reasoning_text.delta" in names and "response.output_text.delta" in names
    r = await rig.client.post(
        "/v1/responses", json={"model": "local/m", "input": "x", "previous_response_id": "r"}
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "previous_response_id"


async def test_responses_crash_mid_stream(start_neuron: NeuronFactory) -> None:
    rig = await start_neuron()
    await loaded(rig, fake={"reply": {"pieces": ["a", "b", "c"], "crash_after": 2}})
    async with rig.client.stream(
        "POST", "/v1/responses", json={"model": "local/m", "input": "x", "stream": True}
    ) as resp:
        events = await sse_events(resp)
    name, data = events[-1]
    assert name == "error"
    err = json.loads(data)
    assert err["type"] == "error" and err["code"] == "worker_crashed"
    assert err["sequence_number"] == len(events) - 1


async def test_embeddings(start_neuron: NeuronFactory) -> None:
    rig = await start_neuron()
    await loaded(rig)
    r = await rig.client.post("/v1/embeddings", json={"model": "local/m", "input": ["ab", "c"]})
    assert r.status_code == 200, r.text
    assert r.headers["x-helexa-prompt-tokens"] == "3"
    body = r.json()
    assert body["usage"] == {"prompt_tokens": 3, "total_tokens": 3}
    vecs = [d["embedding"] for d in body["data"]]
    assert vecs == [[2.0, float((97 + 98) % 7), 1.0], [1.0, float(99 % 7), 1.0]]
    r = await rig.client.post(
        "/v1/embeddings",
        json={"model": "local/m", "input": ["ab", "c"], "encoding_format": "base64"},
    )
    decoded = [
        list(struct.unpack("<3f", base64.b64decode(d["embedding"]))) for d in r.json()["data"]
    ]
    assert decoded == vecs
    r = await rig.client.post("/v1/embeddings", json={"model": "local/m", "input": [[5, 6, 7]]})
    assert r.json()["usage"]["prompt_tokens"] == 3
    r = await rig.client.post(
        "/v1/embeddings", json={"model": "local/m", "input": "x", "encoding_format": "hex"}
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_value"


async def test_capability_checks(start_neuron: NeuronFactory) -> None:
    rig = await start_neuron()
    await loaded(rig, "emb", {"info": {"capabilities": ["embedding"]}})
    r = await rig.client.post("/v1/chat/completions", json=chat_body("local/emb"))
    assert r.status_code == 400 and r.json()["error"]["code"] == "unsupported_model_capability"
    r = await rig.client.post("/v1/completions", json={"model": "local/emb", "prompt": "x"})
    assert r.status_code == 400
    assert (await rig.info("local/emb"))["capabilities"] == ["embedding"]
    await loaded(rig, "plain", {"tokenizer": {"template": False}})
    r = await rig.client.post("/v1/chat/completions", json=chat_body("local/plain"))
    assert r.status_code == 400
    assert r.json()["error"]["message"] == (
        "model 'local/plain' has no chat template; use /v1/completions"
    )
    r = await rig.client.post("/v1/completions", json={"model": "local/plain", "prompt": "x"})
    assert r.status_code == 200


async def test_request_validation_errors(start_neuron: NeuronFactory) -> None:
    rig = await start_neuron()
    await loaded(rig)
    r = await rig.client.post("/v1/chat/completions", json=chat_body("local/m", n=2))
    assert r.status_code == 400 and r.json()["error"]["code"] == "unsupported_parameter"
    r = await rig.client.post("/v1/chat/completions", json=chat_body("local/m", temperature=9))
    assert r.status_code == 400 and r.json()["error"]["param"] == "temperature"
    r = await rig.client.post("/v1/chat/completions", json={"messages": []})
    assert r.json()["error"]["code"] == "missing_model_field"
    r = await rig.client.post("/v1/chat/completions", json=chat_body("no/such"))
    assert r.status_code == 404
    assert r.json()["error"]["message"] == "model 'no/such' is not loaded on this neuron"


async def test_admission_over_http(start_neuron: NeuronFactory) -> None:
    rig = await start_neuron()
    await loaded(
        rig,
        fake={"reply": {"pieces": ["a"] * 10, "delay": 0.05}},
        max_in_flight=1,
        max_queue_depth=1,
        max_wait_secs=30,
    )
    body = chat_body("local/m")
    first = asyncio.create_task(rig.client.post("/v1/chat/completions", json=body))
    adm = rig.registry.records["local/m"].admission
    await until(lambda: adm.in_flight == 1)
    second = asyncio.create_task(rig.client.post("/v1/chat/completions", json=body))
    await until(lambda: adm.queue_depth == 1)
    health = (await rig.client.get("/health")).json()
    assert health["models"] == [
        {"id": "local/m", "status": "loaded", "in_flight": 1, "queue_depth": 1}
    ]
    third = await rig.client.post("/v1/chat/completions", json=body)
    assert third.status_code == 429 and third.headers["retry-after"] == "2"
    err = third.json()["error"]
    assert err["type"] == "rate_limit_error" and err["code"] == "rate_limit_exceeded"
    assert err["message"] == ("model 'local/m' is at capacity (1 running, 1 queued); retry shortly")
    assert third.headers["x-helexa-prompt-tokens"] == str(chat_prompt_len("hi"))
    r1, r2 = await asyncio.gather(first, second)
    assert r1.status_code == 200 and r2.status_code == 200
    assert (
        rig.metric("neuron_admission_rejections_total", model="local/m", reason="queue_full") == 1
    )
    metrics = (await rig.client.get("/metrics")).text
    assert 'neuron_model_in_flight{model="local/m"} 0.0' in metrics
    assert 'neuron_requests_total{endpoint="chat",model="local/m",status="429"} 1.0' in metrics


async def test_queue_wait_timeout(start_neuron: NeuronFactory) -> None:
    rig = await start_neuron()
    await loaded(
        rig,
        fake={"reply": {"pieces": ["a"] * 20, "delay": 0.05}},
        max_wait_secs=0.2,
        max_in_flight=1,  # the second request queues
    )
    body = chat_body("local/m")
    first = asyncio.create_task(rig.client.post("/v1/chat/completions", json=body))
    adm = rig.registry.records["local/m"].admission
    await until(lambda: adm.in_flight == 1)
    t0 = time.monotonic()
    r = await rig.client.post("/v1/chat/completions", json=body)
    assert 0.2 <= time.monotonic() - t0 < 2
    assert r.status_code == 503 and r.headers["retry-after"] == "5"
    assert r.json()["error"]["code"] == "service_unavailable"
    assert r.json()["error"]["message"] == (
        "request for model 'local/m' waited 0.2s in the queue without starting"
    )
    assert (await first).status_code == 200


async def test_first_frame_waits_for_the_first_token(start_neuron: NeuronFactory) -> None:
    rig = await start_neuron()
    await loaded(rig, fake={"reply": {"pieces": ["a"], "first_delay": 0.4}})
    t0 = time.monotonic()
    async with rig.client.stream(
        "POST", "/v1/chat/completions", json=chat_body("local/m", stream=True)
    ) as r:
        assert time.monotonic() - t0 >= 0.35  # no headers before the first token
        assert r.status_code == 200
        await r.aread()


async def test_crash_mid_stream_then_recovers(start_neuron: NeuronFactory) -> None:
    rig = await start_neuron(restart_backoff=(1.0, 0.01, 0.01))
    d = await loaded(rig, fake={"reply": {"pieces": ["a", "b", "c"], "crash_after": 2}})
    async with rig.client.stream(
        "POST", "/v1/chat/completions", json=chat_body("local/m", stream=True)
    ) as r:
        assert r.status_code == 200
        frames = await sse_data(r)
    assert frames[-1] == "[DONE]"
    assert frames[-2] == {
        "error": {
            "message": "model worker for 'local/m' crashed during the request; "
            "it is being restarted",
            "type": "api_error",
            "code": "worker_crashed",
            "param": None,
        }
    }
    text = "".join(f["choices"][0]["delta"].get("content", "") for f in frames[:-2])
    assert text == "ab"
    assert await rig.status("local/m") == "recovering"
    set_fake(d, {})
    await rig.wait_status("local/m", "loaded")
    assert (await rig.info("local/m"))["restarts"] == 1


async def test_crash_before_first_token_is_a_clean_503(start_neuron: NeuronFactory) -> None:
    rig = await start_neuron()
    await loaded(rig, fake={"reply": {"crash_after": 0}})
    r = await rig.client.post("/v1/chat/completions", json=chat_body("local/m", stream=True))
    assert r.status_code == 503 and r.headers["retry-after"] == "2"
    assert r.headers["content-type"].startswith("application/json")
    assert r.json()["error"]["code"] == "worker_crashed"


async def test_client_disconnect_cancels_generation(start_neuron: NeuronFactory) -> None:
    rig = await start_neuron()
    d = await loaded(rig, fake={"reply": {"pieces": ["x"] * 500, "delay": 0.01}})
    async with rig.client.stream(
        "POST", "/v1/chat/completions", json=chat_body("local/m", stream=True)
    ) as r:
        async for _ in r.aiter_bytes():
            break
    await until(lambda: any(e.startswith("cancelled") for e in worker_events(d)))
    adm = rig.registry.records["local/m"].admission
    await until(lambda: adm.in_flight == 0)
    # non-streaming too: a client that gives up cancels its generation
    with_timeout = httpx.Timeout(0.2)
    try:
        await rig.client.post(
            "/v1/chat/completions", json=chat_body("local/m"), timeout=with_timeout
        )
    except httpx.TimeoutException:
        pass
    await until(lambda: sum(e.startswith("cancelled") for e in worker_events(d)) == 2)
    await until(lambda: adm.in_flight == 0)


async def test_force_unload_mid_stream(start_neuron: NeuronFactory) -> None:
    rig = await start_neuron()
    await loaded(rig, fake={"reply": {"pieces": ["x"] * 300, "delay": 0.01}}, max_in_flight=1)
    frames: list[Any] = []

    async def stream() -> None:
        async with rig.client.stream(
            "POST", "/v1/chat/completions", json=chat_body("local/m", stream=True)
        ) as r:
            frames.extend(await sse_data(r))

    task = asyncio.create_task(stream())
    plain = asyncio.create_task(rig.client.post("/v1/chat/completions", json=chat_body("local/m")))
    adm = rig.registry.records["local/m"].admission
    await until(lambda: adm.in_flight == 1 and adm.queue_depth == 1)
    await asyncio.sleep(0.05)
    r = await rig.unload("local/m", force=True)
    assert r.status_code == 200
    await task
    assert frames[-1] == "[DONE]"
    assert frames[-2]["error"] == {
        "message": "model 'local/m' was unloaded",
        "type": "api_error",
        "code": "model_unloaded",
        "param": None,
    }
    queued = await plain
    assert queued.status_code == 503 and queued.headers["retry-after"] == "2"
    assert queued.json()["error"]["code"] == "model_not_ready"


async def test_force_unload_non_streaming(start_neuron: NeuronFactory) -> None:
    rig = await start_neuron()
    await loaded(rig, fake={"reply": {"pieces": ["x"] * 300, "delay": 0.01}})
    req = asyncio.create_task(rig.client.post("/v1/chat/completions", json=chat_body("local/m")))
    adm = rig.registry.records["local/m"].admission
    await until(lambda: adm.in_flight == 1)
    await asyncio.sleep(0.05)
    assert (await rig.unload("local/m", force=True)).status_code == 200
    r = await req
    assert r.status_code == 503 and r.headers["retry-after"] == "2"
    assert r.json()["error"]["code"] == "model_unloaded"


async def test_openai_sdk_against_the_neuron(start_neuron: NeuronFactory) -> None:
    openai = pytest.importorskip("openai")
    rig = await start_neuron()
    await loaded(rig, fake={"reply": {"pieces": ["<think>", "hm", "</think>", "Hi", " there"]}})
    client = openai.AsyncOpenAI(
        base_url=rig.url + "/v1",
        api_key="node-secret",
        http_client=httpx.AsyncClient(trust_env=False),
    )
    async with client:
        msgs = [{"role": "user", "content": "hello"}]
        r = await client.chat.completions.create(model="local/m", messages=msgs)
        assert r.choices[0].message.content == "Hi there"
        assert r.choices[0].message.model_extra["reasoning_content"] == "hm"
        stream = await client.chat.completions.create(model="local/m", messages=msgs, stream=True)
        text = ""
        async for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
            else:
                assert chunk.usage is not None and chunk.usage.completion_tokens == 5
        assert text == "Hi there"
        resp = await client.responses.create(model="local/m", input="hello")
        assert resp.output_text == "Hi there"
        emb = await client.embeddings.create(model="local/m", input=["ab"])
        assert emb.data[0].embedding[0] == 2.0 and emb.usage.prompt_tokens == 2
        models = await client.models.list()
        assert [m.id for m in models.data] == ["local/m"]
