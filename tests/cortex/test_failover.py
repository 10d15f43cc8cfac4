"""Failover before the first byte and passive health.

Two fake neurons both serve `test-model`; node-a wins ties by name, so it is always tried first.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from helexa.cortex.router import rewrite_loopback
from rig.cortex_rig import NODE_TOKEN, Cortex, CortexFactory
from rig.fake_neuron import FakeNeuron

CHAT = {"model": "test-model", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
async def pair() -> AsyncIterator[tuple[FakeNeuron, FakeNeuron]]:
    async with FakeNeuron(token=NODE_TOKEN) as a, FakeNeuron(token=NODE_TOKEN) as b:
        yield a, b


async def chat(
    cortex: Cortex, headers: dict[str, str] | None = None, **kw: object
) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as client:
        return await client.post(
            cortex.base + "/chat/completions", json={**CHAT, **kw}, headers=headers
        )


async def test_connection_refused_fails_over_to_second_replica(
    start_cortex: CortexFactory, pair: tuple[FakeNeuron, FakeNeuron]
) -> None:
    a, b = pair
    cortex = await start_cortex({"node-a": a, "node-b": b})
    warm = await chat(cortex)  # caches node-a's inference endpoint
    assert warm.headers["x-helexa-node"] == "node-a"
    await a.refuse()
    before = cortex.metric("cortex_failovers_total", model="test-model")

    r = await chat(cortex)

    assert r.status_code == 200
    assert r.headers["x-helexa-node"] == "node-b"
    assert r.json()["choices"][0]["message"]["content"] == "Hello from mock backend"
    assert b.count("/v1/chat/completions") == 1
    assert cortex.metric("cortex_failovers_total", model="test-model") == before + 1
    # Passive health: node-a is unhealthy at once, without waiting for a poll.
    assert cortex.gw.fleet.nodes["node-a"].healthy is False
    assert cortex.metric("cortex_node_healthy", node="node-a") == 0
    # The next request goes straight to node-b: no second failover.
    r2 = await chat(cortex)
    assert r2.headers["x-helexa-node"] == "node-b"
    assert cortex.metric("cortex_failovers_total", model="test-model") == before + 1
    # The busy mark followed the request to node-b and was released there.
    assert cortex.gw.fleet.nodes["node-a"].local_in_flight.get("test-model", 0) == 0
    assert cortex.gw.fleet.nodes["node-b"].local_in_flight.get("test-model", 0) == 0


async def test_dead_node_fails_over_before_its_endpoint_is_known(
    start_cortex: CortexFactory, pair: tuple[FakeNeuron, FakeNeuron]
) -> None:
    """The node dies between its last poll and the first request: the endpoint lookup is the
    first connect to fail, and that counts as a connect failure too."""
    a, b = pair
    cortex = await start_cortex({"node-a": a, "node-b": b})
    await a.refuse()
    r = await chat(cortex)
    assert r.status_code == 200
    assert r.headers["x-helexa-node"] == "node-b"
    assert cortex.gw.fleet.nodes["node-a"].healthy is False
    assert cortex.metric("cortex_failovers_total", model="test-model") == 1


async def test_inference_endpoint_refusing_fails_over(
    start_cortex: CortexFactory, pair: tuple[FakeNeuron, FakeNeuron]
) -> None:
    """node-a's management API answers but its inference URL refuses connections."""
    a, b = pair
    a.endpoint_url = "http://127.0.0.1:1"
    cortex = await start_cortex({"node-a": a, "node-b": b})
    r = await chat(cortex, stream=True)
    assert r.status_code == 200
    assert r.headers["x-helexa-node"] == "node-b"
    assert r.text.endswith("data: [DONE]\n\n")
    assert cortex.metric("cortex_failovers_total", model="test-model") == 1
    assert cortex.gw.fleet.nodes["node-a"].healthy is False


async def test_connection_refused_without_replica_is_503_retry_3(
    start_cortex: CortexFactory, fake: FakeNeuron
) -> None:
    keys = {"keys": [{"key": "sk-f", "account_id": "acct-f"}]}
    cortex = await start_cortex({"mock-node": fake}, entitlements=keys)
    auth = {"headers": {"Authorization": "Bearer sk-f"}}
    assert (await chat(cortex, **auth)).status_code == 200
    await fake.refuse()
    r = await chat(cortex, **auth)
    assert r.status_code == 503
    assert r.headers["retry-after"] == "3"
    assert r.json() == {
        "error": {
            "message": "node 'mock-node' is unreachable and no other replica of model "
            "'test-model' is loaded; retry shortly",
            "type": "api_error",
            "code": "service_unavailable",
            "param": None,
        }
    }
    assert r.headers["x-helexa-node"] == "mock-node"
    assert cortex.gw.fleet.nodes["mock-node"].healthy is False
    assert cortex.metric("cortex_failovers_total", model="test-model") == 0
    # The reservation made before dispatch is released on this failure path.
    principal = cortex.gw.auth.resolve("sk-f")
    assert principal is not None
    snap = cortex.gw.auth.snapshot(principal)
    assert (snap.spent, snap.reserved) == (15, 0)  # only the first, successful request


async def test_close_before_headers_is_retried_once_on_the_replica(
    start_cortex: CortexFactory, pair: tuple[FakeNeuron, FakeNeuron]
) -> None:
    a, b = pair
    a.fault = "close_before_headers"
    cortex = await start_cortex({"node-a": a, "node-b": b})
    r = await chat(cortex)
    assert r.status_code == 200
    assert r.headers["x-helexa-node"] == "node-b"
    assert r.json()["choices"][0]["message"]["content"] == "Hello from mock backend"
    assert a.count("/v1/chat/completions") == 1
    assert b.count("/v1/chat/completions") == 1
    assert cortex.metric("cortex_failovers_total", model="test-model") == 1


async def test_second_failure_is_502_and_never_a_third_try(
    start_cortex: CortexFactory, pair: tuple[FakeNeuron, FakeNeuron]
) -> None:
    a, b = pair
    a.fault = b.fault = "close_before_headers"
    async with FakeNeuron(token=NODE_TOKEN) as c:
        c.fault = "close_before_headers"
        cortex = await start_cortex({"node-a": a, "node-b": b, "node-c": c})
        r = await chat(cortex)
        calls = [n.count("/v1/chat/completions") for n in (a, b, c)]
    assert r.status_code == 502
    assert r.json()["error"] == {
        "message": "upstream request failed",
        "type": "api_error",
        "code": "upstream_connection_error",
        "param": None,
    }
    assert "retry-after" not in r.headers
    assert sum(calls) == 2  # the first try and exactly one retry
    assert cortex.metric("cortex_failovers_total", model="test-model") == 1


async def test_unhealthy_or_unloaded_nodes_are_not_failover_targets(
    start_cortex: CortexFactory, pair: tuple[FakeNeuron, FakeNeuron]
) -> None:
    a, b = pair
    b.models[0]["status"] = "loading"
    a.fault = "close_before_headers"
    cortex = await start_cortex({"node-a": a, "node-b": b})
    r = await chat(cortex)
    assert r.status_code == 503
    assert r.headers["retry-after"] == "3"
    assert b.count("/v1/chat/completions") == 0


async def test_mid_stream_failure_is_not_retried(
    start_cortex: CortexFactory, pair: tuple[FakeNeuron, FakeNeuron]
) -> None:
    """Once a byte went to the client, failover is over: the error event is the answer."""
    a, b = pair
    a.fault = "drop_after"
    a.fault_after = 1
    cortex = await start_cortex({"node-a": a, "node-b": b})
    r = await chat(cortex, stream=True)
    assert r.status_code == 200
    assert "upstream_connection_error" in r.text
    assert b.count("/v1/chat/completions") == 0
    assert cortex.metric("cortex_failovers_total", model="test-model") == 0
    assert cortex.gw.fleet.nodes["node-a"].healthy  # a dropped stream is not a connect failure


async def test_passive_mark_then_recovery_on_next_poll(cortex: Cortex, fake: FakeNeuron) -> None:
    assert (await chat(cortex)).status_code == 200
    await fake.refuse()
    assert (await chat(cortex)).status_code == 503
    node = cortex.gw.fleet.nodes["mock-node"]
    assert node.healthy is False
    # While it is down, routing says so without touching the node.
    r = await chat(cortex)
    assert r.status_code == 503 and r.headers["retry-after"] == "5"
    await fake.start()  # same port: the node comes back
    await cortex.poll()
    assert node.healthy is True
    assert cortex.metric("cortex_node_healthy", node="mock-node") == 1
    r = await chat(cortex)
    assert r.status_code == 200
    assert r.headers["x-helexa-node"] == "mock-node"


def test_loopback_rewrite_vectors_hold() -> None:
    """the upstream URL cortex dials for a neuron that reports a loopback bind."""
    assert (
        rewrite_loopback("http://localhost:13131", "http://beast.hanzalova.internal:13131")
        == "http://beast.hanzalova.internal:13131"
    )
    assert rewrite_loopback("http://127.0.0.1:8080", "http://beast.lan:13131") == (
        "http://beast.lan:8080"
    )
    for any_endpoint in ("http://beast.lan:13131", "http://10.0.0.7:1", "not a url", ""):
        assert rewrite_loopback("http://other.host:1234", any_endpoint) == "http://other.host:1234"
        assert rewrite_loopback("not a url", any_endpoint) == "not a url"
    # The other loopback spellings; the path is kept and a trailing '/' stripped.
    assert rewrite_loopback("http://0.0.0.0:9000/", "http://beast.lan:13131") == (
        "http://beast.lan:9000"
    )
    assert rewrite_loopback("http://[::1]:9000/v1/", "http://beast.lan:13131") == (
        "http://beast.lan:9000/v1"
    )
    assert rewrite_loopback("http://localhost:9000", "http://[fd00::7]:13131") == (
        "http://[fd00::7]:9000"
    )
