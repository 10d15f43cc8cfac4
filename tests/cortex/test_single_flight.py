"""Single-flight cold starts and cold-load error mapping (see docs/reference.md#errors)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from helexa.wire.advice import get_model_advice
from rig.cortex_rig import NODE_TOKEN, Cortex, CortexFactory
from rig.fake_neuron import FakeNeuron, JsonDict, error_body, model_info

CAT = "cat-model"
CATALOGUE = {"models": [{"id": CAT}]}


class GatedNeuron(FakeNeuron):
    """A fake whose loads wait for `gate`, so a test decides when a cold start finishes."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(token=NODE_TOKEN, **kw)
        self.gate = asyncio.Event()

    async def _do_load(self, served: str, model_id: str, spec: JsonDict) -> Any:
        await self.gate.wait()
        return await super()._do_load(served, model_id, spec)


@pytest.fixture
async def gated() -> AsyncIterator[GatedNeuron]:
    async with GatedNeuron(models=[]) as n:
        yield n
        n.gate.set()  # let a detached load finish before the loop closes


class ResolveCounter:
    """Counts requests that reached routing. A request counted here is already attached to
    the cold start (or started it): resolve runs synchronously up to its first await."""

    def __init__(self, cortex: Cortex, target: int) -> None:
        self.n = 0
        self.reached = asyncio.Event()
        orig = cortex.gw.router.resolve

        async def counted(requested: str) -> Any:
            self.n += 1
            if self.n >= target:
                self.reached.set()
            return await orig(requested)

        cortex.gw.router.resolve = counted  # type: ignore[method-assign]

    async def wait(self) -> None:
        await asyncio.wait_for(self.reached.wait(), 10)


def body(model: str = CAT) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}]}


async def chat(cortex: Cortex, model: str = CAT) -> httpx.Response:
    async with httpx.AsyncClient(timeout=20) as c:
        return await c.post(cortex.base + "/chat/completions", json=body(model))


async def test_fifty_concurrent_first_requests_one_load(
    start_cortex: CortexFactory, gated: GatedNeuron
) -> None:
    cortex = await start_cortex({"mock-node": gated}, models=CATALOGUE)
    counter = ResolveCounter(cortex, 50)
    async with httpx.AsyncClient(timeout=20, limits=httpx.Limits(max_connections=100)) as c:
        tasks = [
            asyncio.create_task(c.post(cortex.base + "/chat/completions", json=body()))
            for _ in range(50)
        ]
        await counter.wait()
        await gated.wait_for("/models/load")
        gated.gate.set()
        replies = await asyncio.wait_for(asyncio.gather(*tasks), 20)
    assert [r.status_code for r in replies] == [200] * 50
    assert all(r.headers.get("x-helexa-cold-start") == "1" for r in replies)
    assert all(r.headers["x-helexa-node"] == "mock-node" for r in replies)
    assert gated.count("/models/load") == 1
    assert gated.count("/v1/chat/completions") == 50
    assert (
        cortex.metric("cortex_model_loads_total", node="mock-node", model=CAT, outcome="success")
        == 1
    )
    assert cortex.metric("cortex_cold_starts_total", model=CAT, node="mock-node") == 50
    assert cortex.gw.lifecycle.flight(CAT) is None
    # Later requests find the model loaded: no load, no cold-start header.
    r = await chat(cortex)
    assert r.status_code == 200 and "x-helexa-cold-start" not in r.headers
    assert gated.count("/models/load") == 1


async def test_model_loading_in_activation_is_joined_on_that_node_only(
    start_cortex: CortexFactory, gated: GatedNeuron
) -> None:
    # node-a is pre-warming cat-model; node-b has far more free memory and would win placement.
    gated.activation = {
        "state": "pre_warming",
        "pending": [],
        "in_progress": CAT,
        "completed": [],
        "failed": [],
    }
    async with FakeNeuron(models=[], token=NODE_TOKEN) as b:
        b.devices[0]["vram_free_mb"] = 31_000
        cortex = await start_cortex({"node-a": gated, "node-b": b}, models=CATALOGUE)
        counter = ResolveCounter(cortex, 5)
        async with httpx.AsyncClient(timeout=20) as c:
            tasks = [
                asyncio.create_task(c.post(cortex.base + "/chat/completions", json=body()))
                for _ in range(5)
            ]
            await counter.wait()
            gated.gate.set()
            replies = await asyncio.wait_for(asyncio.gather(*tasks), 20)
        assert [r.status_code for r in replies] == [200] * 5
        assert {r.headers["x-helexa-node"] for r in replies} == {"node-a"}
        assert all(r.headers.get("x-helexa-cold-start") == "1" for r in replies)
        assert [q.json for q in gated.calls("/models/load")] == [{"model_id": CAT}]
        assert b.count("/models/load") == 0
        assert b.count("/v1/chat/completions") == 0
        assert gated.count("/v1/chat/completions") == 5


async def test_pending_activation_and_models_loading_are_joined(
    start_cortex: CortexFactory,
) -> None:
    # Not in the catalogue: `loading` alone routes it. node-a lists it pending, node-b
    # `loading` in /models: the first by name gets the join.
    async with (
        FakeNeuron(models=[], token=NODE_TOKEN) as a,
        FakeNeuron(
            models=[model_info("pre/warm", status="loading", vram_used_mb=None)],
            token=NODE_TOKEN,
        ) as b,
    ):
        a.activation["state"] = "pre_warming"
        a.activation["pending"] = ["pre/warm"]
        cortex = await start_cortex({"node-a": a, "node-b": b})
        r = await chat(cortex, "pre/warm")
        assert r.status_code == 200, r.text
        assert r.headers["x-helexa-node"] == "node-a"
        assert r.headers["x-helexa-cold-start"] == "1"
        assert [q.json for q in a.calls("/models/load")] == [{"model_id": "pre/warm"}]
        assert b.count("/models/load") == 0


async def test_models_loading_on_a_node_is_joined_there(start_cortex: CortexFactory) -> None:
    async with (
        FakeNeuron(models=[], token=NODE_TOKEN) as a,
        FakeNeuron(
            models=[model_info(CAT, status="loading", vram_used_mb=None)], token=NODE_TOKEN
        ) as b,
    ):
        a.devices[0]["vram_free_mb"] = 31_000
        cortex = await start_cortex({"node-a": a, "node-b": b}, models=CATALOGUE)
        r = await chat(cortex)
        assert r.status_code == 200, r.text
        assert r.headers["x-helexa-node"] == "node-b"
        assert [q.json for q in b.calls("/models/load")] == [{"model_id": CAT}]
        assert a.count("/models/load") == 0


async def test_failed_cold_load_reaches_every_waiter_then_retries(
    start_cortex: CortexFactory, gated: GatedNeuron
) -> None:
    cortex = await start_cortex({"mock-node": gated}, models=CATALOGUE)
    gated.load_response = (
        500,
        error_body(
            f"loading '{CAT}' failed: RuntimeError: secret detail", "api_error", "load_failed"
        ),
    )
    counter = ResolveCounter(cortex, 10)
    async with httpx.AsyncClient(timeout=20) as c:
        tasks = [
            asyncio.create_task(c.post(cortex.base + "/chat/completions", json=body()))
            for _ in range(10)
        ]
        await counter.wait()
        gated.gate.set()
        replies = await asyncio.wait_for(asyncio.gather(*tasks), 20)
    assert [r.status_code for r in replies] == [502] * 10
    assert len({r.content for r in replies}) == 1
    assert gated.count("/models/load") == 1
    assert cortex.gw.lifecycle.flight(CAT) is None
    # A failure is not cached: the next request loads again, and succeeds.
    gated.load_response = None
    r = await chat(cortex)
    assert r.status_code == 200, r.text
    assert r.headers["x-helexa-cold-start"] == "1"
    assert gated.count("/models/load") == 2


async def test_client_disconnect_does_not_cancel_the_load(
    start_cortex: CortexFactory, gated: GatedNeuron
) -> None:
    cortex = await start_cortex({"mock-node": gated}, models=CATALOGUE)
    async with httpx.AsyncClient(timeout=20) as c:
        task = asyncio.create_task(c.post(cortex.base + "/chat/completions", json=body()))
        await gated.wait_for("/models/load")
        flight = cortex.gw.lifecycle.flight(CAT)
        assert flight is not None
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    gated.gate.set()
    node = await asyncio.wait_for(asyncio.shield(flight), 10)
    assert node.name == "mock-node" and not flight.cancelled()
    assert node.models[CAT].status == "loaded"
    r = await chat(cortex)
    assert r.status_code == 200 and "x-helexa-cold-start" not in r.headers
    assert gated.count("/models/load") == 1


# ---- cold-load error mapping (a closed set of reasons) ---------------------------------------


def assert_cold_load_failed(r: httpx.Response, reason: str, status: Any, code: Any) -> None:
    assert r.status_code == 502, r.text
    assert r.headers["content-type"].startswith("application/json")
    assert "retry-after" not in r.headers
    assert r.json() == {
        "error": {
            "message": f"cold-load of '{CAT}' on 'mock-node' failed: {reason}",
            "type": "api_error",
            "code": "cold_load_failed",
            "param": None,
            "node": "mock-node",
            "neuron_status": status,
            "neuron_code": code,
        }
    }
    assert r.headers["x-helexa-model"] == CAT
    assert r.headers["x-helexa-node"] == "mock-node"


async def test_load_failed_500_hides_the_neuron_message(
    start_cortex: CortexFactory, fake: FakeNeuron
) -> None:
    cortex = await start_cortex({"mock-node": fake}, models=CATALOGUE)
    fake.load_response = (500, error_body("secret detail", "api_error", "load_failed"))
    r = await chat(cortex)
    assert_cold_load_failed(r, "neuron returned HTTP 500 (load_failed)", 500, "load_failed")
    assert "secret detail" not in r.text
    assert cortex.metric("cortex_rejections_total", code="cold_load_failed") == 1
    assert (
        cortex.metric("cortex_model_loads_total", node="mock-node", model=CAT, outcome="failure")
        == 1
    )


async def test_load_error_without_a_code(start_cortex: CortexFactory, fake: FakeNeuron) -> None:
    cortex = await start_cortex({"mock-node": fake}, models=CATALOGUE)
    fake.load_response = (502, "<html>bad gateway: secret</html>")
    r = await chat(cortex)
    assert_cold_load_failed(r, "neuron returned HTTP 502 (no code)", 502, None)
    assert "secret" not in r.text


async def test_load_4xx_names_the_neuron_code(
    start_cortex: CortexFactory, fake: FakeNeuron
) -> None:
    cortex = await start_cortex({"mock-node": fake}, models=CATALOGUE)
    fake.load_response = (
        404,
        error_body(
            f"model '{CAT}' was not found at /x", "invalid_request_error", "model_source_not_found"
        ),
    )
    r = await chat(cortex)
    hint = f"; the model's files are not on that host: {get_model_advice(CAT)}"
    assert f"`hf download {CAT}`" in hint
    assert_cold_load_failed(
        r, "neuron returned HTTP 404 (model_source_not_found)" + hint, 404, "model_source_not_found"
    )
    assert "/x" not in r.text  # the neuron's own words (its path) never reach the client


async def test_load_timeout(start_cortex: CortexFactory, gated: GatedNeuron) -> None:
    cortex = await start_cortex(
        {"mock-node": gated}, models=CATALOGUE, gateway={"cold_load_timeout_secs": 0.5}
    )
    r = await chat(cortex)
    assert_cold_load_failed(r, "timed out after 0.5s", None, None)
    assert (
        cortex.metric("cortex_model_loads_total", node="mock-node", model=CAT, outcome="timeout")
        == 1
    )
    assert cortex.gw.lifecycle.flight(CAT) is None


async def test_load_timeout_whole_seconds_print_without_decimals(
    start_cortex: CortexFactory, gated: GatedNeuron
) -> None:
    cortex = await start_cortex(
        {"mock-node": gated}, models=CATALOGUE, gateway={"cold_load_timeout_secs": 1}
    )
    assert_cold_load_failed(await chat(cortex), "timed out after 1s", None, None)


async def test_load_neuron_unreachable(start_cortex: CortexFactory, fake: FakeNeuron) -> None:
    cortex = await start_cortex({"mock-node": fake}, models=CATALOGUE)
    await fake.stop()
    r = await chat(cortex)
    assert_cold_load_failed(r, "neuron unreachable", None, None)
