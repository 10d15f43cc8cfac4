"""Errors — every cortex error is an enveloped JSON reply with the exact code,
message and Retry-After of the error catalogue; neuron errors pass through unchanged."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import orjson
import pytest

from rig.cortex_rig import Cortex, CortexFactory
from rig.fake_neuron import FakeNeuron, error_body, model_info

CHAT = {"model": "test-model", "messages": [{"role": "user", "content": "hi"}]}
INFERENCE = ("/chat/completions", "/completions", "/responses", "/embeddings")


def envelope(r: httpx.Response, status: int, code: str, type_: str | None = None) -> dict[str, Any]:
    """Assert the OpenAI envelope and return its `error` object."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"error"}
    err = body["error"]
    assert {"message", "type", "code", "param"} <= set(err)
    assert isinstance(err["message"], str) and err["message"]
    assert err["code"] == code
    expected_type = type_ or ("invalid_request_error" if status < 500 else "api_error")
    assert err["type"] == expected_type
    return err


async def post(url: str, **kw: Any) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as c:
        return await c.post(url, **kw)


@pytest.mark.parametrize("route", INFERENCE)
async def test_unknown_model_404(cortex: Cortex, fake: FakeNeuron, route: str) -> None:
    r = await post(cortex.base + route, json={**CHAT, "model": "x/y"})
    err = envelope(r, 404, "model_not_found")
    assert err["param"] is None
    assert err["message"] == "model 'x/y' not found on any node and not in catalogue"
    assert "retry-after" not in r.headers
    assert r.headers["x-helexa-model"] == "x/y"
    assert "x-helexa-node" not in r.headers
    assert fake.count("/v1" + route) == 0


async def test_unknown_model_is_openai_not_found_error(
    start_cortex: CortexFactory, fake: FakeNeuron
) -> None:
    keys = {"keys": [{"key": "sk-e", "account_id": "acct"}]}
    cortex = await start_cortex({"mock-node": fake}, entitlements=keys)
    client = openai.AsyncOpenAI(base_url=cortex.base, api_key="sk-e", max_retries=0)
    try:
        with pytest.raises(openai.NotFoundError) as ei:
            await client.chat.completions.create(
                model="x/y", messages=[{"role": "user", "content": "hi"}]
            )
        assert ei.value.status_code == 404
        assert ei.value.code == "model_not_found"
        with pytest.raises(openai.BadRequestError) as bi:
            await client.embeddings.create(model="", input="hi")
        assert bi.value.code == "missing_model_field"
    finally:
        await client.close()


@pytest.mark.parametrize(
    "body",
    [
        {"messages": []},
        {"model": None, "messages": []},
        {"model": 7},
        {"model": ""},
        {"model": ["test-model"]},
        {"model": {"id": "test-model"}},
    ],
)
async def test_missing_model_400(cortex: Cortex, fake: FakeNeuron, body: dict[str, Any]) -> None:
    r = await post(cortex.base + "/chat/completions", json=body)
    err = envelope(r, 400, "missing_model_field")
    assert err["param"] is None
    assert err["message"] == "missing 'model' field in request body"
    assert "model" in err["message"]
    assert fake.count("/v1/chat/completions") == 0


@pytest.mark.parametrize("raw", [b'{"model": "test-model",', b"", b"\xff\xfe{}", b"nul"])
async def test_broken_json_400(cortex: Cortex, fake: FakeNeuron, raw: bytes) -> None:
    r = await post(
        cortex.base + "/chat/completions",
        content=raw,
        headers={"content-type": "application/json"},
    )
    err = envelope(r, 400, "invalid_json")
    assert err["param"] is None
    assert err["message"].startswith("request body is not valid JSON: ")
    assert fake.count("/v1/chat/completions") == 0


async def test_broken_json_message_has_line_and_column(cortex: Cortex) -> None:
    r = await post(cortex.base + "/chat/completions", content=b'{\n  "model": "x",\n  oops\n}')
    err = envelope(r, 400, "invalid_json")
    assert "line 3" in err["message"] and "column" in err["message"]


@pytest.mark.parametrize("raw", [b'["test-model"]', b'"test-model"', b"42", b"null", b"true"])
async def test_non_object_json_400(cortex: Cortex, fake: FakeNeuron, raw: bytes) -> None:
    r = await post(cortex.base + "/chat/completions", content=raw)
    err = envelope(r, 400, "invalid_json")
    assert err["message"] == "request body must be a JSON object"
    assert fake.count("/v1/chat/completions") == 0


async def test_body_over_limit_413(start_cortex: CortexFactory, fake: FakeNeuron) -> None:
    cortex = await start_cortex({"mock-node": fake}, gateway={"max_body_mb": 1})
    big = orjson.dumps({**CHAT, "pad": "x" * (2 * 2**20)})
    r = await post(cortex.base + "/chat/completions", content=big)
    err = envelope(r, 413, "request_too_large")
    assert err["message"] == "request body exceeds the 1 MB limit"
    assert "retry-after" not in r.headers
    assert fake.count("/v1/chat/completions") == 0


async def test_chunked_body_over_limit_413(start_cortex: CortexFactory, fake: FakeNeuron) -> None:
    cortex = await start_cortex({"mock-node": fake}, gateway={"max_body_mb": 1})

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"model": "test-model", "pad": "'
        for _ in range(40):
            yield b"x" * 65536
        yield b'"}'

    r = await post(cortex.base + "/chat/completions", content=chunks())
    envelope(r, 413, "request_too_large")
    assert fake.count("/v1/chat/completions") == 0


async def test_body_just_under_limit_passes(start_cortex: CortexFactory, fake: FakeNeuron) -> None:
    cortex = await start_cortex({"mock-node": fake}, gateway={"max_body_mb": 1})
    body = orjson.dumps({**CHAT, "pad": "x" * (2**20 - 200)})
    assert len(body) <= 2**20
    r = await post(cortex.base + "/chat/completions", content=body)
    assert r.status_code == 200
    assert fake.last("/v1/chat/completions").body == body


async def test_never_polled_dead_neuron_503(start_cortex: CortexFactory) -> None:
    cortex = await start_cortex({"mock-node": "http://127.0.0.1:1"}, poll=False)
    r = await post(cortex.base + "/chat/completions", json=CHAT)
    err = envelope(r, 503, "service_unavailable", "api_error")
    assert err["param"] is None
    assert err["message"] == "no healthy nodes available"
    assert r.headers["retry-after"] == "5"


async def test_recovering_503_and_still_listed(cortex: Cortex, fake: FakeNeuron) -> None:
    fake.models = [model_info("test-model", status="recovering")]
    await cortex.poll()
    r = await post(cortex.base + "/chat/completions", json=CHAT)
    err = envelope(r, 503, "service_unavailable", "api_error")
    assert r.headers["retry-after"] == "2"
    assert "recovering" in err["message"] and "retry" in err["message"]
    assert err["message"] == (
        "model 'test-model' is recovering on node 'mock-node' (worker restart in progress); "
        "retry shortly"
    )
    assert fake.count("/v1/chat/completions") == 0
    assert fake.count("/models/load") == 0
    async with httpx.AsyncClient() as c:
        models = (await c.get(cortex.base + "/models")).json()["data"]
    entry = next(e for e in models if e["id"] == "test-model")
    assert [loc["status"] for loc in entry["locations"]] == ["recovering"]
    assert entry["loaded"] is False


async def test_infeasible_catalogue_model_404_not_servable(
    start_cortex: CortexFactory, fake: FakeNeuron
) -> None:
    async with FakeNeuron(token="node-secret") as other:
        cat = {"models": [{"id": "big/model", "min_devices": 2}]}
        cortex = await start_cortex({"node-a": fake, "node-b": other}, models=cat)
        r = await post(cortex.base + "/chat/completions", json={**CHAT, "model": "big/model"})
    err = envelope(r, 404, "model_not_servable")
    assert err["message"] == (
        "model 'big/model' is in the catalogue but no configured neuron's topology can "
        "satisfy its constraints"
    )
    assert "retry-after" not in r.headers
    assert fake.count("/models/load") == 0 and other.count("/models/load") == 0


async def test_feasible_only_on_unhealthy_discovered_node_503(
    start_cortex: CortexFactory, fake: FakeNeuron
) -> None:
    async with FakeNeuron(token="node-secret") as healthy:
        cat = {"models": [{"id": "cat/pinned", "pinned_on": ["node-a"]}]}
        cortex = await start_cortex({"node-a": fake, "node-b": healthy}, models=cat)
        assert cortex.gw.fleet.nodes["node-a"].discovery is not None
        fake.reply_override["/models"] = (500, error_body("boom", "api_error", None))
        await cortex.poll()
        assert not cortex.gw.fleet.nodes["node-a"].healthy
        assert cortex.gw.fleet.nodes["node-b"].healthy
        r = await post(cortex.base + "/chat/completions", json={**CHAT, "model": "cat/pinned"})
    err = envelope(r, 503, "service_unavailable", "api_error")
    assert r.headers["retry-after"] == "3"
    assert err["message"] == (
        "no healthy neuron can serve model 'cat/pinned' right now; retry shortly"
    )
    assert healthy.count("/models/load") == 0


async def test_cold_load_failure_502_hides_neuron_message(
    start_cortex: CortexFactory, fake: FakeNeuron
) -> None:
    cortex = await start_cortex({"mock-node": fake}, models={"models": [{"id": "cat-model"}]})
    fake.load_response = (500, error_body("secret detail", "api_error", "load_failed"))
    r = await post(cortex.base + "/chat/completions", json={**CHAT, "model": "cat-model"})
    err = envelope(r, 502, "cold_load_failed", "api_error")
    assert err["message"] == (
        "cold-load of 'cat-model' on 'mock-node' failed: neuron returned HTTP 500 (load_failed)"
    )
    assert err["node"] == "mock-node"
    assert err["neuron_status"] == 500
    assert err["neuron_code"] == "load_failed"
    assert "secret detail" not in r.text
    assert "retry-after" not in r.headers
    assert r.headers["x-helexa-model"] == "cat-model"
    assert r.headers["x-helexa-node"] == "mock-node"  # a node was chosen before the failure
    assert fake.count("/models/load") == 1
    assert fake.count("/v1/chat/completions") == 0


async def test_endpoint_lookup_failure_502(cortex: Cortex, fake: FakeNeuron) -> None:
    fake.reply_override["/models/test-model/endpoint"] = (
        500,
        error_body("endpoint secret", "api_error", "internal"),
    )
    r = await post(cortex.base + "/chat/completions", json=CHAT)
    err = envelope(r, 502, "upstream_error", "api_error")
    assert err["message"] == (
        "failed to resolve inference endpoint for model 'test-model' on node 'mock-node'"
    )
    assert "endpoint secret" not in r.text
    assert r.headers["x-helexa-node"] == "mock-node"
    assert fake.count("/v1/chat/completions") == 0


@pytest.mark.parametrize("reply", [(200, {"nope": 1}), (200, b"not json")])
async def test_endpoint_reply_without_url_502(
    cortex: Cortex, fake: FakeNeuron, reply: tuple[int, Any]
) -> None:
    fake.reply_override["/models/test-model/endpoint"] = reply
    r = await post(cortex.base + "/chat/completions", json=CHAT)
    envelope(r, 502, "upstream_error", "api_error")


async def test_neuron_context_length_error_passes_through(cortex: Cortex, fake: FakeNeuron) -> None:
    raw = orjson.dumps(
        error_body(
            "prompt is too long: 60000 tokens > 16384 maximum",
            "invalid_request_error",
            "context_length_exceeded",
            "messages",
            prompt_len=60000,
            max=16384,
        )
    )
    fake.reply_override["/v1/chat/completions"] = (400, raw, {"x-neuron-extra": "kept"})
    r = await post(cortex.base + "/chat/completions", json=CHAT)
    assert r.status_code == 400
    assert r.content == raw
    assert r.headers["x-neuron-extra"] == "kept"
    assert r.headers["content-type"].startswith("application/json")
    assert r.headers["x-helexa-node"] == "mock-node"
    assert cortex.metric("cortex_rejections_total", code="context_length_exceeded") == 0


async def test_unknown_path_404(cortex: Cortex) -> None:
    async with httpx.AsyncClient() as c:
        for method, path in [("GET", "/v1/nope"), ("POST", "/v2/chat/completions"), ("GET", "/x")]:
            r = await c.request(method, cortex.url + path)
            err = envelope(r, 404, "unknown_route")
            assert err["message"] == f"no route for {method} {path}"
            assert err["param"] is None


async def test_wrong_method_405(cortex: Cortex) -> None:
    async with httpx.AsyncClient() as c:
        cases = [
            ("GET", "/v1/chat/completions"),
            ("PUT", "/v1/embeddings"),
            ("DELETE", "/v1/models"),
            ("POST", "/health"),
            ("POST", "/version"),
        ]
        for method, path in cases:
            r = await c.request(method, cortex.url + path)
            err = envelope(r, 405, "method_not_allowed")
            assert err["message"] == f"method {method} is not allowed on {path}"


async def test_cortex_errors_count_rejections(cortex: Cortex) -> None:
    before = cortex.metric("cortex_rejections_total", code="model_not_found")
    await post(cortex.base + "/chat/completions", json={**CHAT, "model": "x/y"})
    assert cortex.metric("cortex_rejections_total", code="model_not_found") == before + 1


@pytest.mark.parametrize("route", ["/chat/completions", "/embeddings"])
async def test_undecodable_body_is_400_not_500(
    cortex: Cortex, fake: FakeNeuron, route: str
) -> None:
    # Plain JSON labelled as deflate: aiohttp fails to inflate it while the handler reads.
    r = await post(
        cortex.base + route,
        content=orjson.dumps(CHAT),
        headers={"content-encoding": "deflate", "content-type": "application/json"},
    )
    err = envelope(r, 400, "invalid_json")
    assert err["message"] == (
        "request body is not valid JSON: the body could not be read (content-encoding: deflate)"
    )
    assert cortex.metric("cortex_rejections_total", code="internal_server_error") == 0
    assert fake.count("/v1" + route) == 0
