"""Proxy basics — passthrough, x-helexa-* headers, /health, /version,
request ids and the header allow-list toward neurons."""

from __future__ import annotations

import re

import httpx
import openai

from rig.cortex_rig import Cortex, CortexFactory
from rig.fake_neuron import FakeNeuron

CHAT = {"model": "test-model", "messages": [{"role": "user", "content": "hi"}]}
KEYS = {"keys": [{"key": "sk-test", "account_id": "acct"}]}


async def test_chat_reply_is_the_mock_body_verbatim(cortex: Cortex, fake: FakeNeuron) -> None:
    # Odd spacing, key order and unicode: any re-serialisation would change these bytes.
    raw = (
        b'{ "id" : "chatcmpl-verbatim",  "object":"chat.completion", "model":"test-model",'
        b'"choices":[{"index":0,"message":{"role":"assistant","content":"Hello from mock '
        b'backend \\u00e9 \xc3\xa9"},"finish_reason":"stop"}],'
        b'"usage":{"prompt_tokens":10,"completion_tokens":5,"total_tokens":15}}   \n'
    )
    fake.reply_override["/v1/chat/completions"] = (200, raw)
    async with httpx.AsyncClient() as c:
        r = await c.post(cortex.base + "/chat/completions", json=CHAT)
    assert r.status_code == 200
    assert r.content == raw
    assert r.headers["content-type"].startswith("application/json")


async def test_default_mock_chat_round_trip(cortex: Cortex, fake: FakeNeuron) -> None:
    async with httpx.AsyncClient() as c:
        r = await c.post(cortex.base + "/chat/completions", json=CHAT)
    assert r.status_code == 200
    body = r.json()
    assert body["model"] == "test-model"
    assert body["choices"][0]["message"]["content"] == "Hello from mock backend"
    assert body["usage"] == {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
    assert fake.count("/v1/chat/completions") == 1


async def test_reply_carries_helexa_headers(cortex: Cortex) -> None:
    async with httpx.AsyncClient() as c:
        r = await c.post(cortex.base + "/chat/completions", json=CHAT)
    assert r.status_code == 200
    assert r.headers["x-helexa-node"] == "mock-node"
    assert r.headers["x-helexa-model"] == "test-model"
    assert re.fullmatch(r"\d+\.\d{3}", r.headers["x-helexa-overhead-ms"])
    assert "x-helexa-cold-start" not in r.headers


async def test_streamed_reply_carries_helexa_headers(cortex: Cortex) -> None:
    async with httpx.AsyncClient() as c:
        r = await c.post(cortex.base + "/chat/completions", json={**CHAT, "stream": True})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    assert r.headers["x-helexa-node"] == "mock-node"
    assert r.headers["x-helexa-model"] == "test-model"
    assert re.fullmatch(r"\d+\.\d{3}", r.headers["x-helexa-overhead-ms"])
    assert r.text.rstrip().endswith("data: [DONE]")


async def test_health_ok_and_root_identical(cortex: Cortex) -> None:
    async with httpx.AsyncClient() as c:
        h = await c.get(cortex.url + "/health")
        root = await c.get(cortex.url + "/")
    assert h.status_code == 200 and root.status_code == 200
    assert h.json() == {"status": "ok", "nodes": {"healthy": 1, "total": 1}}
    assert root.json() == h.json()
    assert h.headers["content-type"].startswith("application/json")


async def test_health_degraded_without_a_healthy_node(start_cortex: CortexFactory) -> None:
    cortex = await start_cortex({"dead": "http://127.0.0.1:1"})
    async with httpx.AsyncClient() as c:
        h = await c.get(cortex.url + "/health")
        root = await c.get(cortex.url + "/")
    assert h.status_code == 200
    assert h.json() == {"status": "degraded", "nodes": {"healthy": 0, "total": 1}}
    assert root.status_code == 200 and root.json() == h.json()


async def test_health_counts_healthy_among_configured(
    start_cortex: CortexFactory, fake: FakeNeuron
) -> None:
    cortex = await start_cortex({"a-live": fake, "b-dead": "http://127.0.0.1:1"})
    async with httpx.AsyncClient() as c:
        h = await c.get(cortex.url + "/health")
    assert h.json() == {"status": "ok", "nodes": {"healthy": 1, "total": 2}}


async def test_models_lists_test_model_and_version_has_package_version(cortex: Cortex) -> None:
    async with httpx.AsyncClient() as c:
        m = await c.get(cortex.base + "/models")
        v = await c.get(cortex.url + "/version")
    assert m.status_code == 200
    ids = [e["id"] for e in m.json()["data"]]
    assert "test-model" in ids
    assert v.status_code == 200
    info = v.json()
    assert isinstance(info["package_version"], str) and info["package_version"]
    assert "git_sha" in info


async def test_request_id_echoed_and_forwarded(cortex: Cortex, fake: FakeNeuron) -> None:
    async with httpx.AsyncClient() as c:
        r = await c.post(
            cortex.base + "/chat/completions", json=CHAT, headers={"x-request-id": "my-req-42"}
        )
    assert r.status_code == 200
    assert r.headers["x-request-id"] == "my-req-42"
    assert fake.last("/v1/chat/completions").headers["x-request-id"] == "my-req-42"


async def test_request_id_made_when_absent(cortex: Cortex, fake: FakeNeuron) -> None:
    async with httpx.AsyncClient() as c:
        r1 = await c.post(cortex.base + "/chat/completions", json=CHAT)
        r2 = await c.post(cortex.base + "/chat/completions", json=CHAT)
    rid = r1.headers["x-request-id"]
    assert re.fullmatch(r"req_[0-9a-f]{24}", rid)
    assert r2.headers["x-request-id"] != rid
    seen = [r.headers["x-request-id"] for r in fake.calls("/v1/chat/completions")]
    assert seen == [rid, r2.headers["x-request-id"]]


async def test_request_id_on_errors_and_public_routes(cortex: Cortex) -> None:
    async with httpx.AsyncClient() as c:
        e = await c.post(
            cortex.base + "/chat/completions",
            json={**CHAT, "model": "nope/nope"},
            headers={"x-request-id": "err-1"},
        )
        h = await c.get(cortex.url + "/health")
    assert e.status_code == 404 and e.headers["x-request-id"] == "err-1"
    assert re.fullmatch(r"req_[0-9a-f]{24}", h.headers["x-request-id"])


async def test_client_authorization_never_reaches_neuron(
    start_cortex: CortexFactory, fake: FakeNeuron
) -> None:
    cortex = await start_cortex({"mock-node": fake}, entitlements=KEYS)
    async with httpx.AsyncClient() as c:
        r = await c.post(
            cortex.base + "/chat/completions",
            json=CHAT,
            headers={
                "authorization": "Bearer sk-test",
                "x-api-key": "sk-test",
                "cookie": "session=abc",
                "x-custom-thing": "1",
                "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            },
        )
    assert r.status_code == 200
    seen = fake.last("/v1/chat/completions").headers
    assert seen.getall("authorization") == ["Bearer node-secret"]
    assert "x-api-key" not in seen
    assert "cookie" not in seen
    assert "x-custom-thing" not in seen
    assert seen["traceparent"].startswith("00-0af7651916cd43dd8448eb211c80319c")
    assert seen["accept-encoding"] == "identity"
    assert all("sk-test" not in v for v in seen.values())


async def test_no_node_token_configured_sends_no_authorization(
    start_cortex: CortexFactory,
) -> None:
    async with FakeNeuron() as open_fake:
        cortex = await start_cortex({"open": open_fake}, entitlements=KEYS, token=None)
        async with httpx.AsyncClient() as c:
            r = await c.post(
                cortex.base + "/chat/completions",
                json=CHAT,
                headers={"authorization": "Bearer sk-test"},
            )
        assert r.status_code == 200
        assert "authorization" not in open_fake.last("/v1/chat/completions").headers


async def test_openai_sdk_chat_stream_responses_embeddings_models(
    start_cortex: CortexFactory, fake: FakeNeuron
) -> None:
    cortex = await start_cortex({"mock-node": fake}, entitlements=KEYS)
    client = openai.AsyncOpenAI(base_url=cortex.base, api_key="sk-test", max_retries=0)
    try:
        chat = await client.chat.completions.create(
            model="test-model", messages=[{"role": "user", "content": "hi"}]
        )
        assert chat.choices[0].message.content == "Hello from mock backend"

        stream = await client.chat.completions.create(
            model="test-model",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        parts, usage = [], None
        async for chunk in stream:
            if chunk.choices:
                parts.append(chunk.choices[0].delta.content)
            if chunk.usage is not None:
                usage = chunk.usage
        assert parts == ["token0", "token1", "token2", "token3"]
        assert usage is not None and usage.completion_tokens == 4

        resp = await client.responses.create(model="test-model", input="hi")
        assert resp.id == "resp-test-001"
        assert resp.output_text == "Hello from mock backend"
        assert resp.usage is not None and resp.usage.total_tokens == 10

        emb = await client.embeddings.create(model="test-model", input=["a", "b"])
        assert len(emb.data) == 2 and len(emb.data[0].embedding) == fake.embedding_dim
        assert emb.usage.prompt_tokens == fake.embedding_tokens
        assert fake.last("/v1/embeddings").json["input"] == ["a", "b"]

        models = [m.id async for m in client.models.list()]
        assert "test-model" in models
    finally:
        await client.close()


async def test_unusable_request_id_replaced(cortex: Cortex, fake: FakeNeuron) -> None:
    # Bytes that aren't UTF-8 can't be echoed or stored as JSON: cortex makes its own id, and
    # the history view keeps working afterwards.
    async with httpx.AsyncClient() as c:
        r = await c.post(
            cortex.base + "/chat/completions", json=CHAT, headers=[(b"x-request-id", b"id-\xff")]
        )
        assert r.status_code == 200
        rid = r.headers["x-request-id"]
        assert re.fullmatch(r"req_[0-9a-f]{24}", rid)
        assert fake.last("/v1/chat/completions").headers["x-request-id"] == rid
        h = await c.get(cortex.url + "/api/history")
    assert h.status_code == 200
    assert h.json()["data"][0]["request_id"] == rid
