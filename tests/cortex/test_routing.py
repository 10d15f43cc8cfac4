"""Routing and aliases — alias rewrite, untouched bodies, least-busy
replica choice, pass-through of neuron 429s, unhealthy and failed locations."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest

from helexa.cortex.router import rewrite_loopback
from rig.cortex_rig import Cortex, CortexFactory
from rig.fake_neuron import FakeNeuron, error_body, model_info

CHAT = {"model": "test-model", "messages": [{"role": "user", "content": "hi"}]}
ALIASES = {"aliases": {"helexa/small": "test-model"}}


async def post(url: str, **kw: Any) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as c:
        return await c.post(url, **kw)


def health_models(model: str, in_flight: int, queue_depth: int = 0) -> list[dict[str, Any]]:
    return [{"id": model, "status": "loaded", "in_flight": in_flight, "queue_depth": queue_depth}]


async def test_alias_rewrites_model(start_cortex: CortexFactory, fake: FakeNeuron) -> None:
    cortex = await start_cortex({"mock-node": fake}, models=ALIASES)
    r = await post(cortex.base + "/chat/completions", json={**CHAT, "model": "helexa/small"})
    assert r.status_code == 200
    assert r.headers["x-helexa-model"] == "test-model"
    assert r.headers["x-helexa-node"] == "mock-node"
    seen = fake.last("/v1/chat/completions").json
    assert seen == {**CHAT, "model": "test-model"}
    assert cortex.metric("cortex_requests_total", model="test-model", node="mock-node") == 1
    assert cortex.metric("cortex_requests_total", model="helexa/small", node="mock-node") == 0


@pytest.mark.parametrize("route", ["/completions", "/responses", "/embeddings"])
async def test_alias_on_every_openai_route(
    start_cortex: CortexFactory, fake: FakeNeuron, route: str
) -> None:
    cortex = await start_cortex({"mock-node": fake}, models=ALIASES)
    body = {"model": "helexa/small", "prompt": "hi", "input": "hi"}
    r = await post(cortex.base + route, json=body)
    assert r.status_code == 200
    assert r.headers["x-helexa-model"] == "test-model"
    assert fake.last("/v1" + route).json["model"] == "test-model"


async def test_alias_listed_in_models(start_cortex: CortexFactory, fake: FakeNeuron) -> None:
    cortex = await start_cortex({"mock-node": fake}, models=ALIASES)
    async with httpx.AsyncClient() as c:
        data = (await c.get(cortex.base + "/models")).json()["data"]
    by_id = {e["id"]: e for e in data}
    assert {"helexa/small", "test-model"} <= set(by_id)
    alias = by_id["helexa/small"]
    assert alias["loaded"] is True
    assert alias["alias_of"] == "test-model"
    assert [loc["node"] for loc in alias["locations"]] == ["mock-node"]
    assert "alias_of" not in by_id["test-model"]


async def test_alias_is_one_flat_lookup(start_cortex: CortexFactory, fake: FakeNeuron) -> None:
    # No chaining: a -> b -> test-model resolves a to b, which nobody serves.
    models = {"aliases": {"x/a": "x/b", "x/b": "test-model"}}
    cortex = await start_cortex({"mock-node": fake}, models=models)
    r = await post(cortex.base + "/chat/completions", json={**CHAT, "model": "x/a"})
    assert r.status_code == 404
    assert r.json()["error"]["message"] == (
        "model 'x/b' not found on any node and not in catalogue"
    )
    assert r.headers["x-helexa-model"] == "x/b"
    assert fake.count("/v1/chat/completions") == 0


async def test_non_alias_body_bytes_untouched(cortex: Cortex, fake: FakeNeuron) -> None:
    raw = (
        b'{"messages":[{"role":"user","content":"caf\\u00e9 \xc3\xa9"}],   "model" : "test-model",'
        b' "temperature": 0.70, "n": 1e0, "zzz": {"b":1,"a":2}}'
    )
    r = await post(
        cortex.base + "/chat/completions",
        content=raw,
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 200
    assert r.headers["x-helexa-model"] == "test-model"
    seen = fake.last("/v1/chat/completions")
    assert seen.body == raw
    assert seen.headers["content-type"] == "application/json"


async def test_alias_rewrite_keeps_every_other_field(
    start_cortex: CortexFactory, fake: FakeNeuron
) -> None:
    cortex = await start_cortex({"mock-node": fake}, models=ALIASES)
    body = {
        "model": "helexa/small",
        "messages": [{"role": "system", "content": "be terse"}, {"role": "user", "content": "é"}],
        "temperature": 0.25,
        "unknown_field": {"nested": [1, None, True]},
    }
    r = await post(cortex.base + "/chat/completions", json=body)
    assert r.status_code == 200
    assert fake.last("/v1/chat/completions").json == {**body, "model": "test-model"}


async def test_least_busy_replica_wins(start_cortex: CortexFactory) -> None:
    async with (
        FakeNeuron(token="node-secret", health_models=health_models("test-model", 2)) as a,
        FakeNeuron(token="node-secret", health_models=health_models("test-model", 0)) as b,
    ):
        cortex = await start_cortex({"node-a": a, "node-b": b})
        r = await post(cortex.base + "/chat/completions", json=CHAT)
        assert r.status_code == 200
        assert r.headers["x-helexa-node"] == "node-b"
        assert a.count("/v1/chat/completions") == 0 and b.count("/v1/chat/completions") == 1

        # queue_depth counts too: a is 0+0, b is 0+3 now.
        a.health_models = health_models("test-model", 0)
        b.health_models = health_models("test-model", 0, queue_depth=3)
        await cortex.poll()
        r = await post(cortex.base + "/chat/completions", json=CHAT)
        assert r.headers["x-helexa-node"] == "node-a"


async def test_equal_load_goes_to_first_name(start_cortex: CortexFactory) -> None:
    async with (
        FakeNeuron(token="node-secret") as b,
        FakeNeuron(token="node-secret") as a,
    ):
        # Configured in reverse order: the tie-break is the name, not the config order.
        cortex = await start_cortex({"node-b": b, "node-a": a})
        for _ in range(3):
            r = await post(cortex.base + "/chat/completions", json=CHAT)
            assert r.headers["x-helexa-node"] == "node-a"
        assert b.count("/v1/chat/completions") == 0


async def test_local_in_flight_counts_toward_busy(start_cortex: CortexFactory) -> None:
    async with FakeNeuron(token="node-secret") as a, FakeNeuron(token="node-secret") as b:
        a.stream_delay = 5.0  # keeps the first stream open while the second request routes
        cortex = await start_cortex({"node-a": a, "node-b": b})
        async with (
            httpx.AsyncClient(timeout=10) as c,
            c.stream(
                "POST", cortex.base + "/chat/completions", json={**CHAT, "stream": True}
            ) as first,
        ):
            assert first.status_code == 200
            assert first.headers["x-helexa-node"] == "node-a"
            assert cortex.gw.fleet.nodes["node-a"].local_in_flight["test-model"] == 1
            second = await c.post(cortex.base + "/chat/completions", json=CHAT)
            assert second.headers["x-helexa-node"] == "node-b"
        assert b.count("/v1/chat/completions") == 1


async def test_neuron_429_reaches_client_intact(cortex: Cortex, fake: FakeNeuron) -> None:
    raw = orjson.dumps(
        error_body("server busy: 1 in flight, 1 queued", "rate_limit_error", "rate_limit_exceeded")
    )
    fake.reply_override["/v1/chat/completions"] = (429, raw, {"Retry-After": "7"})
    r = await post(cortex.base + "/chat/completions", json=CHAT)
    assert r.status_code == 429
    assert r.headers["retry-after"] == "7"
    assert r.content == raw
    assert r.headers["x-helexa-node"] == "mock-node"
    assert cortex.metric("cortex_rejections_total", code="rate_limit_exceeded") == 0


async def test_loaded_only_on_unhealthy_node_503_not_404(
    start_cortex: CortexFactory, fake: FakeNeuron
) -> None:
    async with FakeNeuron(token="node-secret", models=[model_info("other/model")]) as a:
        cortex = await start_cortex({"node-a": a, "node-b": fake})
        a.reply_override["/models"] = (500, error_body("boom", "api_error", None))
        await cortex.poll()
        assert not cortex.gw.fleet.nodes["node-a"].healthy
        assert cortex.gw.fleet.nodes["node-b"].healthy
        r = await post(cortex.base + "/chat/completions", json={**CHAT, "model": "other/model"})
        assert r.status_code == 503
        assert r.headers["retry-after"] == "3"
        err = r.json()["error"]
        assert err["code"] == "service_unavailable" and err["type"] == "api_error"
        assert err["message"] == (
            "no healthy neuron can serve model 'other/model' right now; retry shortly"
        )
        assert a.count("/v1/chat/completions") == 0
        assert fake.count("/models/load") == 0


async def test_failed_location_never_routed(start_cortex: CortexFactory) -> None:
    failed = model_info("test-model", status="failed", error="worker crashed 3 times")
    async with (
        FakeNeuron(token="node-secret", models=[failed]) as a,
        FakeNeuron(token="node-secret") as b,
    ):
        # node-a would win the name tie-break if its failed copy counted as routable.
        cortex = await start_cortex({"node-a": a, "node-b": b})
        for _ in range(3):
            r = await post(cortex.base + "/chat/completions", json=CHAT)
            assert r.status_code == 200
            assert r.headers["x-helexa-node"] == "node-b"
        assert a.count("/v1/chat/completions") == 0
        assert a.count("/models/load") == 0

        # With the healthy replica gone, the failed copy still isn't used.
        b.reply_override["/models"] = (500, error_body("boom", "api_error", None))
        await cortex.poll()
        r = await post(cortex.base + "/chat/completions", json=CHAT)
        assert r.status_code >= 400
        assert a.count("/v1/chat/completions") == 0
        assert a.count("/models/load") == 0


async def test_failed_model_outside_the_catalogue_is_not_retryable(
    start_cortex: CortexFactory,
) -> None:
    failed = model_info("test-model", status="failed", error="secret traceback text")
    async with FakeNeuron(token="node-secret", models=[failed]) as a:
        cortex = await start_cortex({"node-a": a})
        r = await post(cortex.base + "/chat/completions", json=CHAT)
        assert r.status_code == 502 and "retry-after" not in r.headers
        err = r.json()["error"]
        assert err["code"] == "cold_load_failed"
        assert err["message"] == (
            "cold-load of 'test-model' on 'node-a' failed: "
            "model is marked failed on this node; unload it to reset"
        )
        assert "secret" not in r.text
        assert a.count("/v1/chat/completions") == 0 and a.count("/models/load") == 0


async def test_failed_catalogue_model_is_cold_load_failed(start_cortex: CortexFactory) -> None:
    failed = model_info("cat/m", status="failed", error="boom")
    async with FakeNeuron(token="node-secret", models=[failed]) as a:
        cortex = await start_cortex({"node-a": a}, models={"models": [{"id": "cat/m"}]})
        r = await post(cortex.base + "/chat/completions", json={**CHAT, "model": "cat/m"})
        assert r.status_code == 502
        err = r.json()["error"]
        assert err["code"] == "cold_load_failed"
        assert err["message"] == (
            "cold-load of 'cat/m' on 'node-a' failed: "
            "model is marked failed on this node; unload it to reset"
        )
        assert a.count("/models/load") == 0 and a.count("/v1/chat/completions") == 0


async def test_loopback_endpoint_rewritten_to_configured_host(
    start_cortex: CortexFactory, fake: FakeNeuron
) -> None:
    # The neuron reports a loopback bind URL by "localhost": cortex swaps in the configured
    # host (127.0.0.1 here) and keeps the port.
    fake.endpoint_url = f"http://localhost:{fake.port}/"
    cortex = await start_cortex({"mock-node": fake})
    r = await post(cortex.base + "/chat/completions", json=CHAT)
    assert r.status_code == 200
    node = cortex.gw.fleet.nodes["mock-node"]
    assert node.endpoint_cache["test-model"] == f"http://127.0.0.1:{fake.port}"
    assert fake.last("/models/test-model/endpoint").raw_path == "/models/test-model/endpoint"


async def test_endpoint_lookup_url_encodes_slash(start_cortex: CortexFactory) -> None:
    async with FakeNeuron(token="node-secret", models=[model_info("Qwen/Qwen3-8B")]) as n:
        cortex = await start_cortex({"n": n})
        r = await post(cortex.base + "/chat/completions", json={**CHAT, "model": "Qwen/Qwen3-8B"})
        assert r.status_code == 200
        assert n.last("/models/Qwen/Qwen3-8B/endpoint").raw_path == (
            "/models/Qwen%2FQwen3-8B/endpoint"
        )


@pytest.mark.parametrize(
    ("url", "endpoint", "expected"),
    [
        (
            "http://localhost:13131",
            "http://beast.hanzalova.internal:13131",
            "http://beast.hanzalova.internal:13131",
        ),
        ("http://127.0.0.1:8080", "http://beast.lan:13131", "http://beast.lan:8080"),
        ("http://0.0.0.0:8080/", "http://beast.lan:13131", "http://beast.lan:8080"),
        ("http://other.host:1234", "http://beast.lan:13131", "http://other.host:1234"),
        ("not a url", "http://beast.lan:13131", "not a url"),
    ],
)
def test_loopback_rewrite_vectors(url: str, endpoint: str, expected: str) -> None:
    assert rewrite_loopback(url, endpoint) == expected
