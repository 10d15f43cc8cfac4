"""Streaming through cortex: SSE passes through as it arrives,
mid-stream failures become the route's own error event, a client that leaves cancels upstream,
and a neuron that never answers is a 504."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import aiohttp
import httpx
import openai
import orjson
import pytest
from aiohttp import web

from helexa.cortex.auth import Snapshot
from rig.cortex_rig import NODE_TOKEN, Cortex, CortexFactory
from rig.fake_neuron import FakeNeuron

CHAT = [{"role": "user", "content": "hi"}]
KEY = "sk-stream"
KEYS = {"keys": [{"key": KEY, "account_id": "acct-s", "key_id": "key-s"}]}


async def read_sse_lines(
    client: httpx.AsyncClient, url: str, body: dict[str, Any], **kw: Any
) -> tuple[httpx.Response, list[tuple[float, str]]]:
    """POST and collect every non-empty SSE line with the monotonic time it arrived."""
    lines: list[tuple[float, str]] = []
    async with client.stream("POST", url, json=body, **kw) as r:
        async for line in r.aiter_lines():
            if line:
                lines.append((time.monotonic(), line))
    return r, lines


def key_snapshot(cortex: Cortex) -> Snapshot:
    principal = cortex.gw.auth.resolve(KEY)
    assert principal is not None
    return cortex.gw.auth.snapshot(principal)


def data_payloads(lines: list[tuple[float, str]]) -> list[str]:
    return [line.removeprefix("data: ") for _, line in lines if line.startswith("data: ")]


async def test_sse_passthrough_arrives_incrementally(cortex: Cortex, fake: FakeNeuron) -> None:
    fake.stream_chunks = 5
    fake.stream_delay = 0.05
    async with httpx.AsyncClient(timeout=10) as client:
        r, lines = await read_sse_lines(
            client,
            cortex.base + "/chat/completions",
            {"model": "test-model", "messages": CHAT, "stream": True},
        )
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    assert r.headers["x-helexa-node"] == "mock-node"
    data = data_payloads(lines)
    assert len(data) >= 5 + 1
    assert data[-1] == "[DONE]"
    content_lines = []
    for t, line in lines:
        payload = line.removeprefix("data: ")
        if payload == "[DONE]":
            continue
        chunk = orjson.loads(payload)
        if chunk["choices"]:
            content_lines.append((t, chunk["choices"][0]["delta"]["content"]))
    assert [c for _, c in content_lines] == [f"token{i}" for i in range(5)]
    # Relayed as produced, not buffered to the end: 4 gaps of 50 ms lie between first and last.
    spread = content_lines[-1][0] - content_lines[0][0]
    assert spread >= 0.1, f"chunks arrived together ({spread:.3f}s apart): the stream was buffered"


async def test_sse_passthrough_with_openai_sdk(
    start_cortex: CortexFactory, fake: FakeNeuron
) -> None:
    cortex = await start_cortex({"mock-node": fake}, entitlements=KEYS)
    fake.stream_chunks = 3
    client = openai.AsyncOpenAI(base_url=cortex.base, api_key=KEY, max_retries=0)
    try:
        stream = await client.chat.completions.create(
            model="test-model", messages=CHAT, stream=True
        )
        texts = [c.choices[0].delta.content async for c in stream if c.choices]
    finally:
        await client.close()
    assert texts == ["token0", "token1", "token2"]
    # The streamed request is metered from its final usage chunk.
    snap = key_snapshot(cortex)
    assert (snap.spent, snap.reserved) == (14, 0)


async def test_chat_upstream_drop_mid_stream_sends_error_frame_then_done(
    cortex: Cortex, fake: FakeNeuron
) -> None:
    fake.stream_chunks = 6
    fake.fault = "drop_after"
    fake.fault_after = 2
    errors_before = cortex.metric(
        "cortex_request_errors_total", model="test-model", node="mock-node"
    )
    async with httpx.AsyncClient(timeout=10) as client:
        r, lines = await read_sse_lines(
            client,
            cortex.base + "/chat/completions",
            {"model": "test-model", "messages": CHAT, "stream": True},
        )
    assert r.status_code == 200
    data = data_payloads(lines)
    assert [orjson.loads(d)["choices"][0]["delta"]["content"] for d in data[:2]] == [
        "token0",
        "token1",
    ]
    assert data[-1] == "[DONE]"
    assert orjson.loads(data[-2]) == {
        "error": {
            "message": "upstream connection lost mid-stream",
            "type": "api_error",
            "code": "upstream_connection_error",
            "param": None,
        }
    }
    assert len(data) == 4  # two tokens, the error frame, [DONE]: nothing else was invented
    after = cortex.metric("cortex_request_errors_total", model="test-model", node="mock-node")
    assert after == errors_before + 1


async def test_completions_upstream_drop_mid_stream(cortex: Cortex, fake: FakeNeuron) -> None:
    fake.fault = "drop_after"
    fake.fault_after = 1
    async with httpx.AsyncClient(timeout=10) as client:
        r, lines = await read_sse_lines(
            client,
            cortex.base + "/completions",
            {"model": "test-model", "prompt": "hi", "stream": True},
        )
    data = data_payloads(lines)
    assert r.status_code == 200
    assert orjson.loads(data[0])["choices"][0]["text"] == "token0"
    assert orjson.loads(data[-2])["error"]["code"] == "upstream_connection_error"
    assert data[-1] == "[DONE]"


async def test_responses_upstream_drop_mid_stream_sends_error_event(
    cortex: Cortex, fake: FakeNeuron
) -> None:
    fake.fault = "drop_after"
    fake.fault_after = 3
    before = cortex.metric("cortex_request_errors_total", model="test-model", node="mock-node")
    async with httpx.AsyncClient(timeout=10) as client:
        r, lines = await read_sse_lines(
            client,
            cortex.base + "/responses",
            {"model": "test-model", "input": "hi", "stream": True},
        )
    assert r.status_code == 200
    text = [line for _, line in lines]
    assert text[-2] == "event: error"
    assert orjson.loads(text[-1].removeprefix("data: ")) == {
        "type": "error",
        "code": "upstream_connection_error",
        "message": "upstream connection lost mid-stream",
        "param": None,
    }
    assert "data: [DONE]" not in text
    assert text.count("event: error") == 1
    assert [t for t in text if t.startswith("event: ")][:3] == [
        "event: response.created",
        "event: response.in_progress",
        "event: response.output_item.added",
    ]
    after = cortex.metric("cortex_request_errors_total", model="test-model", node="mock-node")
    assert after == before + 1


async def test_upstream_error_frame_passes_through_unchanged(
    cortex: Cortex, fake: FakeNeuron
) -> None:
    """A neuron's own mid-stream error frame is the neuron's business: relayed as sent."""
    frame = (
        '{"error":{"message":"worker crashed","type":"api_error",'
        '"code":"worker_crashed","param":null}}'
    )
    fake.stream_script = [{"choices": [{"index": 0, "delta": {"content": "a"}}]}, frame]
    fake.stream_usage = None
    async with httpx.AsyncClient(timeout=10) as client:
        r, lines = await read_sse_lines(
            client,
            cortex.base + "/chat/completions",
            {"model": "test-model", "messages": CHAT, "stream": True},
        )
    assert r.status_code == 200
    data = data_payloads(lines)
    assert data[-2:] == [frame, "[DONE]"]
    assert not any("upstream_connection_error" in d for d in data)


async def test_client_disconnect_cancels_upstream_and_settles_metering(
    start_cortex: CortexFactory, fake: FakeNeuron
) -> None:
    cortex = await start_cortex({"mock-node": fake}, entitlements=KEYS)
    fake.stream_chunks = 50
    fake.stream_delay = 0.1
    principal = cortex.gw.auth.resolve(KEY)
    assert principal is not None
    node = cortex.gw.fleet.nodes["mock-node"]
    async with aiohttp.ClientSession() as session:
        resp = await session.post(
            cortex.base + "/chat/completions",
            json={"model": "test-model", "messages": CHAT, "stream": True, "max_tokens": 100},
            headers={"Authorization": f"Bearer {KEY}"},
        )
        assert resp.status == 200
        first = await resp.content.readline()
        assert first.startswith(b"data: ")
        # While the stream runs the key holds a reservation and the model is busy.
        assert cortex.gw.auth.snapshot(principal).reserved > 0
        assert node.local_in_flight["test-model"] == 1
        assert not fake.cancelled
        left_at = time.monotonic()
        resp.close()  # the client goes away mid-stream
        await asyncio.wait_for(fake.cancel_event.wait(), 1.0)
        assert time.monotonic() - left_at <= 1.0
    assert fake.cancelled == ["/v1/chat/completions"]

    # cortex closed the upstream from the cancelled handler's cleanup, which settled the
    # reservation and dropped the busy mark first: by now both are done.
    assert node.local_in_flight.get("test-model", 0) == 0
    assert cortex.gw.accounting.history[-1]["route"] == "/v1/chat/completions"
    snap = cortex.gw.auth.snapshot(principal)
    assert snap.reserved == 0
    # No usage arrived before the drop: charged what it observably used, the prompt the
    # neuron announced (10) and a token per frame cortex saw (at least the one read).
    assert 10 + 1 <= snap.spent < 10 + 50
    assert cortex.metric("cortex_model_in_flight", node="mock-node", model="test-model") == 0


async def test_upstream_never_sends_headers_is_504(
    start_cortex: CortexFactory, fake: FakeNeuron
) -> None:
    cortex = await start_cortex(
        {"mock-node": fake}, gateway={"request_timeout_secs": 1}, entitlements=KEYS
    )
    fake.fault = "delay_headers"
    fake.header_delay = 30
    failovers = cortex.metric("cortex_failovers_total", model="test-model")
    async with httpx.AsyncClient(timeout=15) as client:
        t0 = time.monotonic()
        r = await client.post(
            cortex.base + "/chat/completions",
            json={"model": "test-model", "messages": CHAT},
            headers={"Authorization": f"Bearer {KEY}"},
        )
        elapsed = time.monotonic() - t0
    assert r.status_code == 504
    assert r.headers["content-type"].startswith("application/json")
    assert r.json() == {
        "error": {
            "message": "upstream did not respond within 1s",
            "type": "api_error",
            "code": "upstream_timeout",
            "param": None,
        }
    }
    assert "retry-after" not in r.headers
    assert r.headers["x-helexa-node"] == "mock-node"
    assert 0.9 <= elapsed < 10
    # A read timeout is never retried: the generation may still be running.
    assert fake.count("/v1/chat/completions") == 1
    assert cortex.metric("cortex_failovers_total", model="test-model") == failovers
    # The node is not blamed for being slow, and the key's reservation is released.
    assert cortex.gw.fleet.nodes["mock-node"].healthy
    snap = key_snapshot(cortex)
    assert (snap.spent, snap.reserved) == (0, 0)


async def test_stream_stall_mid_stream_is_upstream_timeout_event(
    start_cortex: CortexFactory, fake: FakeNeuron
) -> None:
    """request_timeout_secs also bounds the gap between two chunks."""
    cortex = await start_cortex({"mock-node": fake}, gateway={"request_timeout_secs": 1})
    fake.stream_chunks = 1
    fake.stream_delay = 1.6  # headers go out at once, then 1.6 s of silence
    before = cortex.metric("cortex_request_errors_total", model="test-model", node="mock-node")
    async with httpx.AsyncClient(timeout=10) as client:
        r, lines = await read_sse_lines(
            client,
            cortex.base + "/chat/completions",
            {"model": "test-model", "messages": CHAT, "stream": True},
        )
    assert r.status_code == 200
    assert data_payloads(lines) == [
        '{"error":{"message":"upstream stream stalled for 1s","type":"api_error",'
        '"code":"upstream_timeout","param":null}}',
        "[DONE]",
    ]
    after = cortex.metric("cortex_request_errors_total", model="test-model", node="mock-node")
    assert after == before + 1
    assert fake.count("/v1/chat/completions") == 1  # never retried


async def test_streamed_responses_pass_through_byte_identical(
    cortex: Cortex, fake: FakeNeuron
) -> None:
    body = {"model": "test-model", "input": "hi", "stream": True}
    async with httpx.AsyncClient(timeout=10) as client:
        direct = await client.post(
            fake.url + "/v1/responses",
            json=body,
            headers={"Authorization": f"Bearer {NODE_TOKEN}"},
        )
        via = await client.post(cortex.base + "/responses", json=body)
    assert direct.status_code == via.status_code == 200
    assert via.headers["content-type"] == direct.headers["content-type"] == "text/event-stream"
    assert via.content == direct.content
    events = [ln for ln in via.text.split("\n") if ln.startswith("event: ")]
    assert events[0] == "event: response.created"
    assert events[-1] == "event: response.completed"
    assert "event: response.output_text.delta" in events
    assert "[DONE]" not in via.text


async def test_responses_stream_with_openai_sdk(
    start_cortex: CortexFactory, fake: FakeNeuron
) -> None:
    cortex = await start_cortex({"mock-node": fake}, entitlements=KEYS)
    client = openai.AsyncOpenAI(base_url=cortex.base, api_key=KEY, max_retries=0)
    try:
        stream = await client.responses.create(model="test-model", input="hi", stream=True)
        kinds = []
        text = ""
        async for ev in stream:
            kinds.append(ev.type)
            if ev.type == "response.output_text.delta":
                text += ev.delta
    finally:
        await client.close()
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert text == "token0token1token2token3"
    snap = key_snapshot(cortex)
    assert snap.spent == 10  # input_tokens 5 + output_tokens 5


async def test_completions_proxied_to_same_path(cortex: Cortex, fake: FakeNeuron) -> None:
    body = b'{"model": "test-model", "prompt": "Once upon", "max_tokens": 3}'
    async with httpx.AsyncClient(timeout=10) as client:
        r = await client.post(
            cortex.base + "/completions",
            content=body,
            headers={"content-type": "application/json"},
        )
    assert r.status_code == 200
    seen = fake.last("/v1/completions")
    assert seen.method == "POST"
    assert seen.body == body  # forwarded untouched
    assert r.json()["object"] == "text_completion"
    assert r.json()["choices"][0]["text"] == "Hello from mock backend"
    assert r.headers["x-helexa-model"] == "test-model"

    # Streaming shares the path, and the upstream content-type is passed through.
    async with httpx.AsyncClient(timeout=10) as client:
        r, lines = await read_sse_lines(
            client,
            cortex.base + "/completions",
            {"model": "test-model", "prompt": "x", "stream": True},
        )
    assert r.headers["content-type"] == "text/event-stream"
    data = data_payloads(lines)
    assert [orjson.loads(d)["choices"][0]["text"] for d in data[:4]] == [
        f"token{i}" for i in range(4)
    ]
    assert data[-1] == "[DONE]"


async def test_embeddings_proxied_and_metered_on_prompt_tokens(
    start_cortex: CortexFactory, fake: FakeNeuron
) -> None:
    cortex = await start_cortex({"mock-node": fake}, entitlements=KEYS)
    fake.embedding_tokens = 7
    prompt0 = cortex.metric("cortex_prompt_tokens_total", model="test-model", node="mock-node")
    client = openai.AsyncOpenAI(base_url=cortex.base, api_key=KEY, max_retries=0)
    try:
        reply = await client.embeddings.create(model="test-model", input=["a", "b"])
    finally:
        await client.close()
    assert len(reply.data) == 2
    assert len(reply.data[0].embedding) == fake.embedding_dim
    assert reply.usage.prompt_tokens == 7
    seen = fake.last("/v1/embeddings")
    assert seen.json["model"] == "test-model" and seen.json["input"] == ["a", "b"]
    assert "authorization" in seen.headers and KEY not in seen.headers["authorization"]
    snap = key_snapshot(cortex)
    assert (snap.spent, snap.reserved) == (7, 0)
    assert cortex.metric("cortex_spend_prompt_tokens_total", account="acct-s", key="key-s") == 7
    assert cortex.metric("cortex_spend_completion_tokens_total", account="acct-s", key="key-s") == 0
    assert (
        cortex.metric("cortex_prompt_tokens_total", model="test-model", node="mock-node")
        == prompt0 + 7
    )


@pytest.mark.parametrize("route", ["/chat/completions", "/messages"])
async def test_clients_that_hang_up_mid_stream_are_not_errors_of_ours(
    start_cortex: CortexFactory, fake: FakeNeuron, caplog: Any, monkeypatch: Any, route: str
) -> None:
    """A client that goes away while cortex writes a stream is the client's choice: no
    traceback, no internal_server_error, no blame on the node. aiohttp raises
    ClientConnectionResetError when the client's transport closed just before a write (a race
    the soak hits ~2 % of hang-ups); that is reproduced here on cortex's own replies."""
    cortex = await start_cortex({"mock-node": fake}, entitlements=KEYS)
    fake.stream_chunks = 20
    fake.stream_delay = 0.01  # one relay write per chunk
    real_write = web.StreamResponse.write
    writes: dict[int, int] = {}

    async def write(self: web.StreamResponse, data: bytes) -> None:
        if "x-helexa-node" in self.headers:  # cortex's relay, not the fake neuron's reply
            writes[id(self)] = writes.get(id(self), 0) + 1
            if writes[id(self)] > 3:
                raise aiohttp.ClientConnectionResetError("Cannot write to closing transport")
        await real_write(self, data)

    monkeypatch.setattr(web.StreamResponse, "write", write)
    caplog.set_level(logging.DEBUG, logger="helexa")
    principal = cortex.gw.auth.resolve(KEY)
    assert principal is not None
    async with aiohttp.ClientSession() as session:
        resp = await session.post(
            cortex.base + route,
            json={"model": "test-model", "messages": CHAT, "stream": True, "max_tokens": 100},
            headers={"Authorization": f"Bearer {KEY}"},
        )
        with contextlib.suppress(aiohttp.ClientError):
            await asyncio.wait_for(resp.read(), 10)  # the reply ends: it doesn't hang
    node = cortex.gw.fleet.nodes["mock-node"]
    assert not node.local_in_flight.get("test-model")
    assert cortex.gw.auth.snapshot(principal).reserved == 0
    assert cortex.metric("cortex_rejections_total", code="internal_server_error") == 0
    ours = [r for r in caplog.records if r.name.startswith("helexa.cortex")]
    assert not [r for r in ours if r.levelno >= logging.WARNING], [r.getMessage() for r in ours]
    assert any("client left" in r.getMessage() for r in ours)
