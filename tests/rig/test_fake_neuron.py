"""Self-tests for the fake neuron: the cortex suite trusts it, so its behaviour is pinned here."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import aiohttp
import pytest

from .fake_neuron import FakeNeuron, error_body, model_info


def _data_lines(text: str) -> list[str]:
    return [line[len("data: ") :] for line in text.splitlines() if line.startswith("data: ")]


async def test_models_health_discovery_defaults() -> None:
    async with FakeNeuron() as n, aiohttp.ClientSession() as s:
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", n.url)
        async with s.get(f"{n.url}/models") as r:
            assert r.status == 200
            models = await r.json()
        assert models == [model_info("test-model")]
        async with s.get(f"{n.url}/health") as r:
            health = await r.json()
        assert health["status"] == "ok"
        assert health["devices"][0]["vram_free_mb"] == 20000
        assert health["models"] == [
            {"id": "test-model", "status": "loaded", "in_flight": 0, "queue_depth": 0}
        ]
        assert health["activation"]["state"] == "ready"
        async with s.get(f"{n.url}/discovery") as r:
            disc = await r.json()
        assert disc["max_prompt_tokens"] == 16384
        assert disc["devices"][0]["kind"] == "cpu"
        for path in ("/models/test-model/endpoint", "/models/test%2Dmodel/endpoint"):
            async with s.get(f"{n.url}{path}") as r:
                assert (await r.json()) == {"url": n.url}
        async with s.get(f"{n.url}/models/org%2Fnope/endpoint") as r:
            assert r.status == 404
            assert (await r.json())["error"]["code"] == "model_not_found"
        assert n.count("/models") == 1
        assert n.count("/models/org/nope/endpoint") == 1


async def test_chat_non_stream_echoes_model_and_request_id() -> None:
    async with FakeNeuron() as n, aiohttp.ClientSession() as s:
        body = {"model": "test-model", "messages": [{"role": "user", "content": "hi"}]}
        async with s.post(
            f"{n.url}/v1/chat/completions", json=body, headers={"x-request-id": "req-1"}
        ) as r:
            assert r.status == 200
            assert r.headers["x-helexa-prompt-tokens"] == "10"
            assert r.headers["x-request-id"] == "req-1"
            out = await r.json()
        assert out["model"] == "test-model"
        assert re.fullmatch(r"chatcmpl-[A-Za-z0-9]{24}", out["id"])
        assert out["choices"][0]["message"]["content"] == "Hello from mock backend"
        assert out["usage"] == {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
        rec = n.calls("/v1/chat/completions")[0]
        assert rec.json == body
        assert rec.headers["x-request-id"] == "req-1"


async def test_chat_stream_chunks_usage_done() -> None:
    async with FakeNeuron() as n, aiohttp.ClientSession() as s:
        n.stream_delay = 0.01
        body: dict[str, Any] = {"model": "test-model", "stream": True, "messages": []}
        body["stream_options"] = {"include_usage": True}
        async with s.post(f"{n.url}/v1/chat/completions", json=body) as r:
            assert r.headers["content-type"] == "text/event-stream"
            assert r.headers["cache-control"] == "no-cache"
            text = await r.text()
        data = _data_lines(text)
        assert data[-1] == "[DONE]"
        chunks = [json.loads(d) for d in data[:-1]]
        assert [c["choices"][0]["delta"]["content"] for c in chunks[:4]] == [
            f"token{i}" for i in range(4)
        ]
        assert chunks[4]["choices"] == []
        assert chunks[4]["usage"]["completion_tokens"] == 4
        assert len(chunks) == 5

        del body["stream_options"]  # like the neuron: no usage chunk unless asked
        async with s.post(f"{n.url}/v1/chat/completions", json=body) as r:
            data = _data_lines(await r.text())
        assert data[-1] == "[DONE]" and len(data) == 5
        assert all(json.loads(d)["choices"] for d in data[:-1])


async def test_stream_script_and_override() -> None:
    async with FakeNeuron() as n, aiohttp.ClientSession() as s:
        n.stream_script = [{"choices": [{"index": 0, "delta": {"reasoning_content": "hm"}}]}]
        n.stream_usage = None
        async with s.post(f"{n.url}/v1/chat/completions", json={"model": "m", "stream": True}) as r:
            data = _data_lines(await r.text())
        assert len(data) == 2
        assert json.loads(data[0])["choices"][0]["delta"]["reasoning_content"] == "hm"
        assert json.loads(data[0])["model"] == "m"

        err = error_body(
            "prompt is 60000 tokens", "invalid_request_error", "context_length_exceeded"
        )
        n.reply_override["/v1/chat/completions"] = (429, err, {"Retry-After": "2"})
        async with s.post(f"{n.url}/v1/chat/completions", json={"model": "m"}) as r:
            assert r.status == 429
            assert r.headers["Retry-After"] == "2"
            assert await r.json() == err


async def test_responses_stream_named_events() -> None:
    async with FakeNeuron() as n, aiohttp.ClientSession() as s:
        async with s.post(f"{n.url}/v1/responses", json={"model": "m", "input": "x"}) as r:
            out = await r.json()
        assert out["id"] == "resp-test-001"
        assert out["output"][0]["content"][0]["text"] == "Hello from mock backend"
        assert out["usage"]["total_tokens"] == 10
        async with s.post(
            f"{n.url}/v1/responses", json={"model": "m", "input": "x", "stream": True}
        ) as r:
            text = await r.text()
        events = [line[7:] for line in text.splitlines() if line.startswith("event: ")]
        assert events[0] == "response.created"
        assert events[-1] == "response.completed"
        assert "[DONE]" not in text


async def test_token_enforced_except_public() -> None:
    async with FakeNeuron(token="sekrit") as n, aiohttp.ClientSession() as s:
        async with s.get(f"{n.url}/models") as r:
            assert r.status == 401
            assert (await r.json())["error"]["code"] == "invalid_node_token"
        async with s.get(f"{n.url}/models", headers={"Authorization": "Bearer nope"}) as r:
            assert r.status == 401
        async with s.get(f"{n.url}/models", headers={"Authorization": "Bearer sekrit"}) as r:
            assert r.status == 200
        for path in ("/health", "/version"):
            async with s.get(f"{n.url}{path}") as r:
                assert r.status == 200


async def test_load_unload_state_and_memory() -> None:
    async with FakeNeuron() as n, aiohttp.ClientSession() as s:
        async with s.post(f"{n.url}/models/load", json={"model_id": "org/new"}) as r:
            out = await r.json()
        assert out["status"] == "loaded" and out["already_loaded"] is False
        assert out["vram_used_mb"] == 4000
        assert n.model("org/new")["status"] == "loaded"  # type: ignore[index]
        assert n.devices[0]["vram_free_mb"] == 16000
        async with s.post(f"{n.url}/models/load", json={"model_id": "org/new"}) as r:
            assert (await r.json())["already_loaded"] is True

        async with s.post(f"{n.url}/models/unload", json={"model_id": "org/new"}) as r:
            assert await r.json() == {"status": "unloaded", "model": "org/new", "freed_mb": 4000}
        assert n.model("org/new")["status"] == "unloaded"  # type: ignore[index]
        assert n.devices[0]["vram_free_mb"] == 20000

        failure = error_body("secret detail", "api_error", "load_failed")
        n.load_responses = [(500, failure)]
        async with s.post(f"{n.url}/models/load", json={"model_id": "org/other"}) as r:
            assert r.status == 500
            assert await r.json() == failure
        assert n.model("org/other") is None
        async with s.post(f"{n.url}/models/load", json={"model_id": "org/other"}) as r:
            assert r.status == 200


async def test_concurrent_loads_single_flight() -> None:
    async with FakeNeuron() as n, aiohttp.ClientSession() as s:
        n.load_delay = 0.1

        async def load() -> dict[str, object]:
            async with s.post(f"{n.url}/models/load", json={"model_id": "org/x"}) as r:
                return await r.json()  # type: ignore[no-any-return]

        a, b = await asyncio.gather(load(), load())
        assert a == b
        assert a["already_loaded"] is False


async def test_drop_after_fault() -> None:
    async with FakeNeuron() as n, aiohttp.ClientSession() as s:
        n.fault, n.fault_after = "drop_after", 2
        got: list[bytes] = []
        with pytest.raises(aiohttp.ClientPayloadError):
            async with s.post(
                f"{n.url}/v1/chat/completions", json={"model": "m", "stream": True}
            ) as r:
                async for line in r.content:
                    got.append(line)
        data = [g for g in got if g.startswith(b"data: ")]
        assert len(data) == 2
        assert b"[DONE]" not in b"".join(got)


async def test_close_before_headers_and_delay_headers() -> None:
    async with FakeNeuron() as n, aiohttp.ClientSession() as s:
        n.fault, n.fault_count = "close_before_headers", 1
        with pytest.raises(aiohttp.ServerDisconnectedError):
            async with s.post(f"{n.url}/v1/chat/completions", json={"model": "m"}):
                pass
        assert n.fault is None  # consumed
        async with s.post(f"{n.url}/v1/chat/completions", json={"model": "m"}) as r:
            assert r.status == 200

        n.fault, n.header_delay = "delay_headers", 5
        with pytest.raises(asyncio.TimeoutError):
            await s.post(
                f"{n.url}/v1/chat/completions",
                json={"model": "m"},
                timeout=aiohttp.ClientTimeout(total=0.2),
            )
        await asyncio.wait_for(n.cancel_event.wait(), 2)
        assert n.cancelled == ["/v1/chat/completions"]


async def test_client_disconnect_mid_stream_is_seen() -> None:
    async with FakeNeuron() as n, aiohttp.ClientSession() as s:
        n.stream_chunks, n.stream_delay = 50, 0.05
        r = await s.post(f"{n.url}/v1/chat/completions", json={"model": "m", "stream": True})
        await r.content.readline()
        r.close()
        await asyncio.wait_for(n.cancel_event.wait(), 2)
        assert n.cancelled == ["/v1/chat/completions"]


async def test_refuse_and_restart_same_port() -> None:
    n = FakeNeuron()
    await n.start()
    try:
        url = n.url
        async with aiohttp.ClientSession() as s:
            await n.refuse()
            with pytest.raises(aiohttp.ClientConnectorError):
                await s.get(f"{url}/health")
            await n.start()
            assert n.url == url
            async with s.get(f"{url}/health") as r:
                assert r.status == 200
    finally:
        await n.stop()


async def test_other_endpoints() -> None:
    async with FakeNeuron() as n, aiohttp.ClientSession() as s:
        async with s.post(f"{n.url}/tokenize", json={"model": "m", "messages": []}) as r:
            assert await r.json() == {"model": "m", "count": 42}
        async with s.post(f"{n.url}/v1/embeddings", json={"model": "m", "input": ["a", "b"]}) as r:
            out = await r.json()
        assert len(out["data"]) == 2 and len(out["data"][0]["embedding"]) == 8
        assert out["usage"] == {"prompt_tokens": 7, "total_tokens": 7}
        async with s.post(f"{n.url}/v1/completions", json={"model": "m", "prompt": "x"}) as r:
            out = await r.json()
        assert out["object"] == "text_completion"
        assert out["choices"][0]["text"] == "Hello from mock backend"
        async with s.post(f"{n.url}/v1/completions", json={"prompt": "x"}) as r:
            assert r.status == 400
        async with s.get(f"{n.url}/version") as r:
            assert (await r.json())["git_sha"] == "fakesha"
        await n.wait_for("/version")


async def test_slash_ids_drop_non_stream_and_fast_stop() -> None:
    n = FakeNeuron(models=[model_info("Qwen/Qwen3-8B")])
    await n.start()
    async with aiohttp.ClientSession() as s:
        for path in ("/models/Qwen%2FQwen3-8B/endpoint", "/models/Qwen/Qwen3-8B/endpoint"):
            async with s.get(f"{n.url}{path}") as r:
                assert r.status == 200
        n.fault = "drop_after"
        with pytest.raises(aiohttp.ClientPayloadError):
            async with s.post(f"{n.url}/v1/chat/completions", json={"model": "m"}) as r:
                await r.read()
        # A handler parked in delay_headers must not hold stop() for its full delay.
        n.fault, n.header_delay = "delay_headers", 30
        pending = asyncio.ensure_future(s.post(f"{n.url}/v1/chat/completions", json={"model": "m"}))
        await n.wait_for("/v1/chat/completions", 2)
        await asyncio.wait_for(n.stop(), 2)
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await pending
        assert n.cancelled == []  # our own shutdown is not a client disconnect
