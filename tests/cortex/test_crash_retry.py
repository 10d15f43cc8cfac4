"""A worker that crashes before the first byte of a reply is retried once on another replica
(issue 11, reliability): the neuron answers 503 `worker_crashed` before sending anything, so
the request may run elsewhere, exactly like a connect failure.

Two fake neurons serve `test-model`; node-a wins ties by name, so it is always tried first.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from rig.cortex_rig import NODE_TOKEN, CortexFactory
from rig.fake_neuron import FakeNeuron, error_body

CHAT: dict[str, object] = {"model": "test-model", "messages": [{"role": "user", "content": "hi"}]}
CRASHED = error_body(
    "model worker for 'test-model' crashed during the request; it is being restarted",
    "api_error",
    "worker_crashed",
)


@pytest.fixture
async def pair() -> AsyncIterator[tuple[FakeNeuron, FakeNeuron]]:
    async with FakeNeuron(token=NODE_TOKEN) as a, FakeNeuron(token=NODE_TOKEN) as b:
        yield a, b


async def _post(url: str, path: str, body: dict[str, object]) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as client:
        return await client.post(url + path, json=body)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", CHAT),
        ("/v1/chat/completions", {**CHAT, "stream": True}),
        ("/v1/messages", {**CHAT, "max_tokens": 16}),
    ],
)
async def test_a_crashed_worker_is_retried_once_on_the_replica(
    start_cortex: CortexFactory,
    pair: tuple[FakeNeuron, FakeNeuron],
    path: str,
    body: dict[str, object],
) -> None:
    a, b = pair
    a.reply_override["/v1/chat/completions"] = (503, CRASHED, {"retry-after": "2"})
    cortex = await start_cortex({"node-a": a, "node-b": b})
    r = await _post(cortex.url, path, body)
    assert r.status_code == 200, r.text
    assert r.headers["x-helexa-node"] == "node-b"
    assert "Hello from mock backend" in r.text or "token0" in r.text
    assert (a.count("/v1/chat/completions"), b.count("/v1/chat/completions")) == (1, 1)
    assert cortex.metric("cortex_failovers_total", model="test-model") == 1
    assert cortex.gw.fleet.nodes["node-a"].healthy  # a restarting worker is not a dead node


async def test_a_crash_on_both_replicas_is_answered_after_one_retry(
    start_cortex: CortexFactory, pair: tuple[FakeNeuron, FakeNeuron]
) -> None:
    a, b = pair
    for n in pair:
        n.reply_override["/v1/chat/completions"] = (503, CRASHED, {"retry-after": "2"})
    cortex = await start_cortex({"node-a": a, "node-b": b})
    r = await _post(cortex.url, "/v1/chat/completions", CHAT)
    assert r.status_code == 503
    assert r.json() == CRASHED  # the neuron's answer, relayed whole
    assert r.headers["retry-after"] == "2"
    assert (a.count("/v1/chat/completions"), b.count("/v1/chat/completions")) == (1, 1)


async def test_another_503_is_not_retried_and_is_relayed_whole(
    start_cortex: CortexFactory, pair: tuple[FakeNeuron, FakeNeuron]
) -> None:
    a, b = pair
    busy = error_body("model 'test-model' is loading", "api_error", "model_not_ready")
    a.reply_override["/v1/chat/completions"] = (503, busy, {"retry-after": "2"})
    cortex = await start_cortex({"node-a": a, "node-b": b})
    r = await _post(cortex.url, "/v1/chat/completions", CHAT)
    assert r.status_code == 503
    assert r.json() == busy
    assert (a.count("/v1/chat/completions"), b.count("/v1/chat/completions")) == (1, 0)


async def test_a_crash_without_a_replica_is_relayed(
    start_cortex: CortexFactory, fake: FakeNeuron
) -> None:
    fake.reply_override["/v1/chat/completions"] = (503, CRASHED, {"retry-after": "2"})
    cortex = await start_cortex({"mock-node": fake})
    r = await _post(cortex.url, "/v1/chat/completions", CHAT)
    assert r.status_code == 503
    assert r.json() == CRASHED
    assert fake.count("/v1/chat/completions") == 1
