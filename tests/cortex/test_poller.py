"""The poller and node state: discovery, /models, /health per neuron."""

from __future__ import annotations

import time

import httpx

from rig.cortex_rig import NODE_TOKEN, Cortex, CortexFactory
from rig.fake_neuron import FakeNeuron, default_discovery, error_body, model_info


async def get_models(cortex: Cortex) -> dict[str, dict]:
    async with httpx.AsyncClient(timeout=10) as client:
        r = await client.get(cortex.base + "/models")
    assert r.status_code == 200
    return {m["id"]: m for m in r.json()["data"]}


async def test_loaded_and_unloaded_models_land_in_node_state(
    start_cortex: CortexFactory,
) -> None:
    limit = {"context": 24576, "input": 16384, "output": 8192}
    models = [
        model_info(
            "Qwen/Qwen3-8B",
            vram_used_mb=17420,
            quant="bf16",
            limit=limit,
            tool_call=True,
            reasoning=True,
        ),
        model_info("Qwen/Qwen3-1.7B", status="unloaded", vram_used_mb=None, devices=[]),
    ]
    async with FakeNeuron(token=NODE_TOKEN, models=models) as fake:
        cortex = await start_cortex({"mock-node": fake})
        node = cortex.gw.fleet.nodes["mock-node"]
        assert node.healthy is True
        assert node.last_poll is not None and abs(node.last_poll - time.time()) < 60
        assert {k: m.status for k, m in node.models.items()} == {
            "Qwen/Qwen3-8B": "loaded",
            "Qwen/Qwen3-1.7B": "unloaded",
        }
        m = node.models["Qwen/Qwen3-8B"]
        assert (m.vram_used_mb, m.devices, m.harness, m.quant) == (17420, [0], "torch", "bf16")
        assert m.capabilities == ["text"] and m.tool_call and m.reasoning
        assert m.limit is not None and (m.limit.context, m.limit.input, m.limit.output) == (
            24576,
            16384,
            8192,
        )
        assert node.models["Qwen/Qwen3-1.7B"].vram_used_mb is None
        # Polled models show up in /v1/models with their statuses.
        listed = await get_models(cortex)
        assert listed["Qwen/Qwen3-8B"]["loaded"] is True
        assert listed["Qwen/Qwen3-8B"]["locations"] == [
            {
                "node": "mock-node",
                "status": "loaded",
                "vram_used_mb": 17420,
                "healthy": True,
                "harness": "torch",
                "quant": "bf16",
            }
        ]
        assert listed["Qwen/Qwen3-1.7B"]["loaded"] is False
        assert listed["Qwen/Qwen3-1.7B"]["locations"][0]["status"] == "unloaded"

        # A model that appears later is picked up by the next round.
        fake.models.append(model_info("new/model", vram_used_mb=1000))
        await cortex.poll()
        assert "new/model" in await get_models(cortex)


async def test_every_poll_call_carries_the_node_token(cortex: Cortex, fake: FakeNeuron) -> None:
    for path in ("/discovery", "/models", "/health"):
        calls = fake.calls(path)
        assert calls, path
        assert all(c.headers["authorization"] == f"Bearer {NODE_TOKEN}" for c in calls), path


async def test_upsert_keeps_last_accessed_and_remembers_largest_vram(
    cortex: Cortex, fake: FakeNeuron
) -> None:
    node = cortex.gw.fleet.nodes["mock-node"]
    node.models["test-model"].last_accessed = 1234.0
    fake.models[0]["vram_used_mb"] = 6000
    await cortex.poll()
    assert node.models["test-model"].last_accessed == 1234.0
    assert node.models["test-model"].vram_used_mb == 6000
    assert cortex.gw.fleet.max_vram_seen["test-model"] == 8000


async def test_unreachable_neuron_is_unhealthy(start_cortex: CortexFactory) -> None:
    cortex = await start_cortex({"dead": "http://127.0.0.1:1"})
    node = cortex.gw.fleet.nodes["dead"]
    assert node.healthy is False
    assert node.discovery is None and node.models == {}
    assert cortex.metric("cortex_node_healthy", node="dead") == 0
    async with httpx.AsyncClient(timeout=10) as client:
        r = await client.get(cortex.url + "/health")
    assert r.json() == {"status": "degraded", "nodes": {"healthy": 0, "total": 1}}


async def test_node_goes_unhealthy_when_it_stops_answering(
    cortex: Cortex, fake: FakeNeuron
) -> None:
    node = cortex.gw.fleet.nodes["mock-node"]
    assert node.healthy
    await fake.refuse()
    await cortex.poll()
    assert node.healthy is False
    assert cortex.metric("cortex_node_healthy", node="mock-node") == 0


async def test_model_no_longer_listed_is_pruned(cortex: Cortex, fake: FakeNeuron) -> None:
    fake.models.append(model_info("other/model"))
    await cortex.poll()
    node = cortex.gw.fleet.nodes["mock-node"]
    assert set(node.models) == {"test-model", "other/model"}
    fake.models = [m for m in fake.models if m["id"] != "other/model"]
    await cortex.poll()
    assert set(node.models) == {"test-model"}
    assert "other/model" not in await get_models(cortex)


async def test_a_node_starts_unhealthy_until_the_first_poll(
    start_cortex: CortexFactory, fake: FakeNeuron
) -> None:
    cortex = await start_cortex({"mock-node": fake}, poll=False)
    node = cortex.gw.fleet.nodes["mock-node"]
    assert node.healthy is False and node.models == {}
    await cortex.poll()
    assert node.healthy is True and "test-model" in node.models


async def test_pre_warming_activation_is_stored(start_cortex: CortexFactory) -> None:
    activation = {
        "state": "pre_warming",
        "pending": ["Qwen/model-y"],
        "in_progress": "Qwen/model-x",
        "completed": [],
        "failed": [],
    }
    async with FakeNeuron(token=NODE_TOKEN, models=[], activation=activation) as fake:
        cortex = await start_cortex({"mock-node": fake})
    node = cortex.gw.fleet.nodes["mock-node"]
    assert node.healthy is True
    assert node.models == {}
    assert node.activation is not None
    assert node.activation.state == "pre_warming"
    assert node.activation.in_progress == "Qwen/model-x"
    assert node.activation.pending == ["Qwen/model-y"]
    assert node.is_loading("Qwen/model-x") and node.is_loading("Qwen/model-y")


async def test_status_strings(start_cortex: CortexFactory) -> None:
    models = [
        model_info("m/recovering", status="recovering"),
        model_info("m/loading", status="loading", vram_used_mb=None),
        model_info("m/failed", status="failed", error="3 restarts failed", vram_used_mb=None),
        model_info("m/reloading", status="reloading"),
        model_info("m/weird", status="warming-up-somehow"),
    ]
    async with FakeNeuron(token=NODE_TOKEN, models=models) as fake:
        cortex = await start_cortex({"mock-node": fake})
    node = cortex.gw.fleet.nodes["mock-node"]
    assert {k: m.status for k, m in node.models.items()} == {
        "m/recovering": "recovering",
        "m/loading": "loading",
        "m/failed": "failed",
        "m/reloading": "loaded",
        "m/weird": "loaded",
    }
    assert node.models["m/failed"].error == "3 restarts failed"


async def test_discovery_refetched_after_interval(
    start_cortex: CortexFactory, fake: FakeNeuron
) -> None:
    cortex = await start_cortex({"mock-node": fake}, gateway={"discovery_interval_secs": 60})
    node = cortex.gw.fleet.nodes["mock-node"]
    assert fake.count("/discovery") == 1
    assert node.discovery is not None and len(node.discovery.devices) == 1
    two = default_discovery()
    two["devices"].append({**two["devices"][0], "index": 1, "vram_total_mb": 24000})
    fake.discovery = two

    await cortex.poll()  # not due yet: the cached discovery stays
    assert fake.count("/discovery") == 1
    assert len(node.discovery.devices) == 1

    assert node.discovery_at is not None
    node.discovery_at -= 60  # the interval has passed
    await cortex.poll()
    assert fake.count("/discovery") == 2
    assert [d.index for d in node.discovery.devices] == [0, 1]
    await cortex.poll()
    assert fake.count("/discovery") == 2  # and the clock starts again


async def test_discovery_every_round_while_max_prompt_tokens_is_zero(
    start_cortex: CortexFactory, fake: FakeNeuron
) -> None:
    fake.discovery["max_prompt_tokens"] = 0
    cortex = await start_cortex({"mock-node": fake})
    assert fake.count("/discovery") == 1
    await cortex.poll()
    await cortex.poll()
    assert fake.count("/discovery") == 3
    fake.discovery["max_prompt_tokens"] = 16384
    await cortex.poll()
    assert fake.count("/discovery") == 4
    node = cortex.gw.fleet.nodes["mock-node"]
    assert node.discovery is not None and node.discovery.max_prompt_tokens == 16384
    await cortex.poll()
    assert fake.count("/discovery") == 4


async def test_discovery_retried_every_round_until_it_first_succeeds(
    start_cortex: CortexFactory, fake: FakeNeuron
) -> None:
    fake.reply_override["/discovery"] = (500, error_body("boom", "api_error", "internal"))
    cortex = await start_cortex({"mock-node": fake})
    node = cortex.gw.fleet.nodes["mock-node"]
    assert node.discovery is None
    assert node.healthy is True  # a discovery failure does not change health
    del fake.reply_override["/discovery"]
    await cortex.poll()
    assert node.discovery is not None and node.discovery.max_prompt_tokens == 16384


async def test_failed_discovery_keeps_previous_value(cortex: Cortex, fake: FakeNeuron) -> None:
    node = cortex.gw.fleet.nodes["mock-node"]
    before = node.discovery
    assert before is not None
    fake.reply_override["/discovery"] = (500, error_body("boom", "api_error", "internal"))
    node.discovery_at = (node.discovery_at or 0) - 3600
    await cortex.poll()
    assert fake.count("/discovery") == 2
    assert node.discovery == before
    assert node.healthy is True


async def test_wrong_node_token_is_unhealthy(start_cortex: CortexFactory, fake: FakeNeuron) -> None:
    cortex = await start_cortex({"mock-node": fake}, token="wrong-token")
    node = cortex.gw.fleet.nodes["mock-node"]
    assert fake.calls("/models")  # it was asked, and answered 401
    assert node.healthy is False
    assert node.models == {}


async def test_401_after_token_rotation_turns_node_unhealthy(
    cortex: Cortex, fake: FakeNeuron
) -> None:
    node = cortex.gw.fleet.nodes["mock-node"]
    assert node.healthy
    fake.token = "rotated"
    await cortex.poll()
    assert node.healthy is False


async def test_non_2xx_or_bad_json_on_models_is_unhealthy(cortex: Cortex, fake: FakeNeuron) -> None:
    node = cortex.gw.fleet.nodes["mock-node"]
    fake.reply_override["/models"] = (500, error_body("boom", "api_error", "internal"))
    await cortex.poll()
    assert node.healthy is False
    del fake.reply_override["/models"]
    await cortex.poll()
    assert node.healthy is True
    fake.reply_override["/models"] = (200, "this is not json")
    await cortex.poll()
    assert node.healthy is False


async def test_probe_timeout_bounds_each_call(
    start_cortex: CortexFactory, fake: FakeNeuron
) -> None:
    cortex = await start_cortex({"mock-node": fake}, gateway={"probe_timeout_secs": 0.5})
    node = cortex.gw.fleet.nodes["mock-node"]
    assert node.healthy
    fake.fault = "delay_headers"
    fake.fault_paths = {"/models"}
    fake.header_delay = 30
    t0 = time.monotonic()
    await cortex.poll()
    assert time.monotonic() - t0 < 5
    assert node.healthy is False


async def test_in_flight_and_queue_depth_from_health(cortex: Cortex, fake: FakeNeuron) -> None:
    fake.health_models = [
        {"id": "test-model", "status": "loaded", "in_flight": 3, "queue_depth": 2}
    ]
    await cortex.poll()
    m = cortex.gw.fleet.nodes["mock-node"].models["test-model"]
    assert (m.in_flight, m.queue_depth) == (3, 2)
    assert cortex.metric("cortex_model_queue_depth", node="mock-node", model="test-model") == 2
    assert cortex.gw.fleet.nodes["mock-node"].busy("test-model") == 5

    # A failed /health keeps the previous values and does not change health.
    fake.reply_override["/health"] = (500, error_body("boom", "api_error", "internal"))
    await cortex.poll()
    m = cortex.gw.fleet.nodes["mock-node"].models["test-model"]
    assert (m.in_flight, m.queue_depth) == (3, 2)
    assert cortex.gw.fleet.nodes["mock-node"].healthy

    del fake.reply_override["/health"]
    fake.health_models = [
        {"id": "test-model", "status": "loaded", "in_flight": 0, "queue_depth": 0}
    ]
    await cortex.poll()
    assert cortex.metric("cortex_model_queue_depth", node="mock-node", model="test-model") == 0


async def test_health_devices_are_stored(cortex: Cortex, fake: FakeNeuron) -> None:
    fake.devices[0]["vram_free_mb"] = 15000
    fake.devices[0]["vram_used_mb"] = 17000
    await cortex.poll()
    node = cortex.gw.fleet.nodes["mock-node"]
    assert node.free_by_device() == {0: 15000}
    assert cortex.metric("cortex_device_vram_free_mb", node="mock-node", device="0") == 15000
    assert cortex.metric("cortex_device_vram_used_mb", node="mock-node", device="0") == 17000


async def test_background_poller_runs_every_interval(
    start_cortex: CortexFactory, fake: FakeNeuron
) -> None:
    cortex = await start_cortex(
        {"mock-node": fake}, gateway={"poll_interval_secs": 0.1}, background_poll=True
    )
    node = cortex.gw.fleet.nodes["mock-node"]
    first = fake.count("/models")
    await fake.wait_for("/models", n=first + 2, within=5)
    # The background rounds notice a node going away without anyone asking.
    fake.token = "rotated"
    n = fake.count("/models")
    await fake.wait_for("/models", n=n + 2, within=5)
    assert node.healthy is False
