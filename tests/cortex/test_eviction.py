"""Placement and eviction through HTTP with fake neurons."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import httpx
import pytest

from rig.cortex_rig import NODE_TOKEN, Cortex, CortexFactory
from rig.fake_neuron import FakeNeuron, error_body, model_info

CAT = "cat-model"


def gpu(free: list[int], total: int | list[int] = 32_000) -> dict[str, Any]:
    """/health devices and /discovery for a fake GPU box with per-device free memory."""
    totals = total if isinstance(total, list) else [total] * len(free)
    health = [
        {
            "index": i,
            "kind": "cuda",
            "name": f"GPU-{i}",
            "vram_total_mb": t,
            "vram_used_mb": t - f,
            "vram_free_mb": f,
        }
        for i, (t, f) in enumerate(zip(totals, free, strict=True))
    ]
    disc = {
        "hostname": "fake",
        "devices": [
            {"index": i, "kind": "cuda", "name": f"GPU-{i}", "vram_total_mb": t}
            for i, t in enumerate(totals)
        ],
        "harnesses": ["torch"],
        "max_prompt_tokens": 16384,
        "max_output_tokens": 8192,
    }
    return {"devices": health, "discovery": disc}


def fake_gpu(
    free: list[int],
    models: list[dict[str, Any]] | None = None,
    total: int | list[int] = 32_000,
    **kw: Any,
) -> FakeNeuron:
    return FakeNeuron(models=models or [], token=NODE_TOKEN, **gpu(free, total), **kw)


def catalogue(*models: dict[str, Any]) -> dict[str, Any]:
    return {"models": list(models)}


async def chat(cortex: Cortex, model: str = CAT, **kw: Any) -> httpx.Response:
    async with httpx.AsyncClient(timeout=20) as c:
        return await c.post(
            cortex.base + "/chat/completions",
            json={"model": model, "messages": [{"role": "user", "content": "hi"}], **kw},
        )


def unloads(fake: FakeNeuron) -> list[str]:
    return [r.json["model_id"] for r in fake.calls("/models/unload")]


def touch(cortex: Cortex, node: str, ages: dict[str, float]) -> None:
    """Set cortex's last_accessed (seconds ago); cortex alone knows it."""
    now = time.time()
    for model, age in ages.items():
        cortex.gw.fleet.nodes[node].models[model].last_accessed = now - age


def assert_503_no_room(r: httpx.Response) -> None:
    assert r.status_code == 503, r.text
    assert r.headers["retry-after"] == "3"
    err = r.json()["error"]
    assert err["code"] == "service_unavailable" and err["type"] == "api_error"


# ---- placement and eviction ----------------------------------------------------------------------


async def test_full_node_evicts_the_older_idle_model_then_loads(
    start_cortex: CortexFactory,
) -> None:
    async with fake_gpu(
        [2_000], [model_info("old/model", vram_used_mb=8_000), model_info("new/model")]
    ) as fake:
        cortex = await start_cortex(
            {"mock-node": fake}, models=catalogue({"id": CAT, "vram_mb": 10_000})
        )
        touch(cortex, "mock-node", {"old/model": 7200, "new/model": 0})
        polls_before = fake.count("/models")
        r = await chat(cortex)
        assert r.status_code == 200, r.text
        assert r.headers["x-helexa-cold-start"] == "1"
        assert r.headers["x-helexa-node"] == "mock-node"
        assert unloads(fake) == ["old/model"]
        paths = [q.path for q in fake.requests if q.path.startswith("/models/")]
        assert paths.index("/models/unload") < paths.index("/models/load")
        assert fake.count("/models/load") == 1
        node = cortex.gw.fleet.nodes["mock-node"]
        assert node.lifecycle_cycles == 1
        assert cortex.metric("cortex_evictions_total", node="mock-node", model="old/model") == 1
        assert cortex.metric("cortex_evictions_total", node="mock-node", model="new/model") == 0
        assert cortex.metric("cortex_node_lifecycle_cycles", node="mock-node") == 1
        assert (
            cortex.metric(
                "cortex_model_loads_total", node="mock-node", model=CAT, outcome="success"
            )
            == 1
        )
        assert cortex.metric("cortex_cold_starts_total", model=CAT, node="mock-node") == 1
        # Afterwards the node was re-polled and the new model is served from state.
        assert fake.count("/models") > polls_before
        assert node.models[CAT].status == "loaded"
        assert node.models["old/model"].status == "unloaded"
        r2 = await chat(cortex)
        assert r2.status_code == 200 and "x-helexa-cold-start" not in r2.headers
        assert fake.count("/models/load") == 1


async def test_free_fit_beats_evict_fit(start_cortex: CortexFactory) -> None:
    # node-b has more free memory in total but no single device fits without an eviction.
    async with (
        fake_gpu([10_000]) as a,
        fake_gpu([9_000, 9_000], [model_info("idle/model", vram_used_mb=8_000, devices=[0])]) as b,
    ):
        cortex = await start_cortex(
            {"node-a": a, "node-b": b}, models=catalogue({"id": CAT, "vram_mb": 10_000})
        )
        r = await chat(cortex)
        assert r.status_code == 200, r.text
        assert r.headers["x-helexa-node"] == "node-a"
        assert a.count("/models/load") == 1 and b.count("/models/load") == 0
        assert unloads(a) == [] and unloads(b) == []


async def test_evict_fit_node_is_used_when_no_node_has_free_room(
    start_cortex: CortexFactory,
) -> None:
    async with (
        fake_gpu([9_000]) as a,
        fake_gpu([2_000], [model_info("idle/model", vram_used_mb=8_000)]) as b,
    ):
        cortex = await start_cortex(
            {"node-a": a, "node-b": b}, models=catalogue({"id": CAT, "vram_mb": 10_000})
        )
        r = await chat(cortex)
        assert r.status_code == 200, r.text
        assert r.headers["x-helexa-node"] == "node-b"
        assert unloads(b) == ["idle/model"] and a.count("/models/load") == 0


async def test_pinned_node_is_chosen_over_more_free_memory(start_cortex: CortexFactory) -> None:
    async with fake_gpu([30_000]) as a, fake_gpu([12_000]) as b:
        cortex = await start_cortex(
            {"node-a": a, "node-b": b},
            models=catalogue({"id": CAT, "vram_mb": 10_000, "pinned_on": ["node-b"]}),
        )
        r = await chat(cortex)
        assert r.status_code == 200, r.text
        assert r.headers["x-helexa-node"] == "node-b"
        assert a.count("/models/load") == 0 and b.count("/models/load") == 1


async def test_low_priority_never_displaces_higher_priority_alone_503(
    start_cortex: CortexFactory,
) -> None:
    async with fake_gpu([2_000], [model_info("vip/model", vram_used_mb=20_000)]) as fake:
        cortex = await start_cortex(
            {"mock-node": fake},
            models=catalogue(
                {"id": CAT, "vram_mb": 10_000, "residency_priority": 50},
                {"id": "vip/model", "residency_priority": 100},
            ),
        )
        touch(cortex, "mock-node", {"vip/model": 7200})
        r = await chat(cortex)
        assert_503_no_room(r)
        assert r.json()["error"]["message"] == (
            f"no healthy neuron has room for model '{CAT}' without displacing busy or "
            "higher-priority models; retry shortly"
        )
        assert unloads(fake) == [] and fake.count("/models/load") == 0


async def test_low_priority_goes_to_another_node(start_cortex: CortexFactory) -> None:
    async with (
        fake_gpu([5_000], [model_info("vip/model", vram_used_mb=20_000)]) as a,
        fake_gpu([1_000], [model_info("cheap/model", vram_used_mb=20_000)]) as b,
    ):
        cortex = await start_cortex(
            {"node-a": a, "node-b": b},
            models=catalogue(
                {"id": CAT, "vram_mb": 10_000, "residency_priority": 50},
                {"id": "vip/model", "residency_priority": 100},
                {"id": "cheap/model", "residency_priority": 10},
            ),
        )
        r = await chat(cortex)
        assert r.status_code == 200, r.text
        assert r.headers["x-helexa-node"] == "node-b"
        assert unloads(a) == [] and unloads(b) == ["cheap/model"]


async def test_lru_picks_oldest_displaceable_not_oldest(start_cortex: CortexFactory) -> None:
    models = [
        model_info("oldest/vip", vram_used_mb=8_000),
        model_info("older/peer", vram_used_mb=8_000),
        model_info("newest/peer", vram_used_mb=8_000),
    ]
    async with fake_gpu([2_000], models) as fake:
        cortex = await start_cortex(
            {"mock-node": fake},
            models=catalogue(
                {"id": CAT, "vram_mb": 10_000, "residency_priority": 50},
                {"id": "oldest/vip", "residency_priority": 100},
                {"id": "older/peer", "residency_priority": 50},
                {"id": "newest/peer", "residency_priority": 50},
            ),
        )
        touch(cortex, "mock-node", {"oldest/vip": 3 * 3600, "older/peer": 7200, "newest/peer": 1})
        r = await chat(cortex)
        assert r.status_code == 200, r.text
        assert unloads(fake) == ["older/peer"]


async def test_polled_busy_model_is_never_evicted(start_cortex: CortexFactory) -> None:
    models = [
        model_info("busy/old", vram_used_mb=8_000),
        model_info("idle/new", vram_used_mb=8_000),
    ]
    health = [
        {"id": "busy/old", "status": "loaded", "in_flight": 1, "queue_depth": 0},
        {"id": "idle/new", "status": "loaded", "in_flight": 0, "queue_depth": 0},
    ]
    async with fake_gpu([2_000], models, health_models=health) as fake:
        cortex = await start_cortex(
            {"mock-node": fake}, models=catalogue({"id": CAT, "vram_mb": 10_000})
        )
        touch(cortex, "mock-node", {"busy/old": 7200, "idle/new": 0})
        r = await chat(cortex)
        assert r.status_code == 200, r.text
        assert unloads(fake) == ["idle/new"]


async def test_model_with_live_request_is_never_evicted_503(start_cortex: CortexFactory) -> None:
    async with fake_gpu([2_000], [model_info("busy/model", vram_used_mb=20_000)]) as fake:
        cortex = await start_cortex(
            {"mock-node": fake}, models=catalogue({"id": CAT, "vram_mb": 10_000})
        )
        fake.stream_chunks, fake.stream_delay = 3, 0.3

        async def stream() -> str:
            async with (
                httpx.AsyncClient(timeout=20) as c,
                c.stream(
                    "POST",
                    cortex.base + "/chat/completions",
                    json={"model": "busy/model", "messages": [], "stream": True},
                ) as resp,
            ):
                return (await resp.aread()).decode()

        task = asyncio.create_task(stream())
        await fake.wait_for("/v1/chat/completions")
        assert cortex.gw.fleet.nodes["mock-node"].busy("busy/model") == 1
        r = await chat(cortex)
        assert_503_no_room(r)
        assert unloads(fake) == [] and fake.count("/models/load") == 0
        assert "[DONE]" in await asyncio.wait_for(task, 10)


async def test_at_most_three_evictions_per_load(start_cortex: CortexFactory) -> None:
    # Three planned evictions make room on paper; the neuron disagrees (507). The budget is
    # spent, so no fourth victim goes and the client gets a 503.
    models = [model_info(f"m/{i}", vram_used_mb=2_000) for i in range(5)]
    async with fake_gpu([0], models) as fake:
        cortex = await start_cortex(
            {"mock-node": fake}, models=catalogue({"id": CAT, "vram_mb": 6_000})
        )
        touch(cortex, "mock-node", {f"m/{i}": 1000 - i for i in range(5)})
        fake.load_response = (
            507,
            error_body(
                "does not fit", "api_error", "insufficient_memory", required_mb=6000, free_mb=10
            ),
        )
        r = await chat(cortex)
        assert_503_no_room(r)
        assert unloads(fake) == ["m/0", "m/1", "m/2"]
        assert fake.count("/models/load") == 1
        assert cortex.gw.fleet.nodes["mock-node"].lifecycle_cycles == 3


async def test_max_evictions_per_load_is_configurable(start_cortex: CortexFactory) -> None:
    models = [model_info(f"m/{i}", vram_used_mb=2_000) for i in range(3)]
    async with fake_gpu([0], models) as fake:
        cortex = await start_cortex(
            {"mock-node": fake},
            models=catalogue({"id": CAT, "vram_mb": 6_000}),
            eviction={"max_evictions_per_load": 2},
        )
        r = await chat(cortex)
        assert_503_no_room(r)  # would need 3 evictions: infeasible by known memory
        assert unloads(fake) == []


async def test_pinned_model_is_never_evicted_from_its_node(start_cortex: CortexFactory) -> None:
    models = [
        model_info("pinned/model", vram_used_mb=8_000),
        model_info("other/model", vram_used_mb=8_000),
    ]
    async with fake_gpu([2_000], models) as fake:
        cortex = await start_cortex(
            {"mock-node": fake},
            models=catalogue(
                {"id": CAT, "vram_mb": 10_000},
                {"id": "pinned/model", "pinned_on": ["mock-node"], "residency_priority": 0},
            ),
        )
        touch(cortex, "mock-node", {"pinned/model": 99_999, "other/model": 0})
        r = await chat(cortex)
        assert r.status_code == 200, r.text
        assert unloads(fake) == ["other/model"]


async def test_only_pinned_model_in_the_way_gives_503(start_cortex: CortexFactory) -> None:
    async with fake_gpu([2_000], [model_info("pinned/model", vram_used_mb=20_000)]) as fake:
        cortex = await start_cortex(
            {"mock-node": fake},
            models=catalogue(
                {"id": CAT, "vram_mb": 10_000},
                {"id": "pinned/model", "pinned_on": ["mock-node"]},
            ),
        )
        assert_503_no_room(await chat(cortex))
        assert unloads(fake) == []


async def test_507_evicts_next_lru_victim_and_retries(start_cortex: CortexFactory) -> None:
    # No vram_mb and nothing measured: required memory unknown, so the load is tried at once.
    models = [
        model_info("old/model", vram_used_mb=8_000),
        model_info("new/model", vram_used_mb=8_000),
    ]
    async with fake_gpu([30_000], models) as fake:
        cortex = await start_cortex({"mock-node": fake}, models=catalogue({"id": CAT}))
        touch(cortex, "mock-node", {"old/model": 7200, "new/model": 60})
        oom = (
            507,
            error_body(
                "does not fit", "api_error", "insufficient_memory", required_mb=40000, free_mb=30000
            ),
        )
        fake.load_responses = [oom]
        r = await chat(cortex)
        assert r.status_code == 200, r.text
        assert r.headers["x-helexa-cold-start"] == "1"
        assert unloads(fake) == ["old/model"]
        assert fake.count("/models/load") == 2
        assert cortex.metric("cortex_evictions_total", node="mock-node", model="old/model") == 1
        assert (
            cortex.metric(
                "cortex_model_loads_total", node="mock-node", model=CAT, outcome="failure"
            )
            == 1
        )


async def test_507_on_an_empty_node_is_cold_load_failed(start_cortex: CortexFactory) -> None:
    async with fake_gpu([1_000]) as fake:
        cortex = await start_cortex({"mock-node": fake}, models=catalogue({"id": CAT}))
        fake.load_response = (
            507,
            error_body(
                f"model '{CAT}' needs about 20000 MB but only 1000 MB is free on device(s) 0",
                "api_error",
                "insufficient_memory",
                required_mb=20000,
                free_mb=1000,
            ),
        )
        r = await chat(cortex)
        assert r.status_code == 502, r.text
        err = r.json()["error"]
        assert err["code"] == "cold_load_failed" and err["type"] == "api_error"
        assert err["message"] == (
            f"cold-load of '{CAT}' on 'mock-node' failed: "
            "insufficient memory (20000 MB required, 1000 MB free)"
        )
        assert err["node"] == "mock-node"
        assert err["neuron_status"] == 507 and err["neuron_code"] == "insufficient_memory"
        assert "retry-after" not in r.headers
        assert "needs about" not in r.text


async def test_freed_memory_counts_the_victims_measured_use(start_cortex: CortexFactory) -> None:
    # 2000 free + 6000 from the first victim is short of 10000: the second must go too.
    models = [
        model_info("a/victim", vram_used_mb=6_000),
        model_info("b/victim", vram_used_mb=6_000),
        model_info("c/keep", vram_used_mb=6_000),
    ]
    async with fake_gpu([2_000], models) as fake:
        cortex = await start_cortex(
            {"mock-node": fake}, models=catalogue({"id": CAT, "vram_mb": 10_000})
        )
        touch(cortex, "mock-node", {"a/victim": 300, "b/victim": 200, "c/keep": 100})
        r = await chat(cortex)
        assert r.status_code == 200, r.text
        assert unloads(fake) == ["a/victim", "b/victim"]


async def test_need_is_the_largest_measured_value_without_vram_mb(
    start_cortex: CortexFactory,
) -> None:
    # cat-model was seen at 12000 and 10000 MB on other nodes; the catalogue has no vram_mb.
    async with (
        fake_gpu(
            [2_000],
            [
                model_info("x/victim", vram_used_mb=8_000),
                model_info("y/victim", vram_used_mb=4_000),
            ],
        ) as a,
        fake_gpu([50_000], [model_info(CAT, vram_used_mb=12_000)], total=64_000) as b,
        fake_gpu([50_000], [model_info(CAT, vram_used_mb=10_000)], total=64_000) as c,
    ):
        cortex = await start_cortex(
            {"node-a": a, "node-b": b, "node-c": c}, models=catalogue({"id": CAT})
        )
        assert cortex.gw.fleet.max_vram_seen[CAT] == 12_000
        await b.stop()
        await c.stop()
        await cortex.poll()
        touch(cortex, "node-a", {"x/victim": 200, "y/victim": 100})
        r = await chat(cortex)
        assert r.status_code == 200, r.text
        assert r.headers["x-helexa-node"] == "node-a"
        # 2000 + 8000 would do for 10000; 12000 needs the second victim too.
        assert unloads(a) == ["x/victim", "y/victim"]


async def test_catalogue_vram_mb_wins_over_measured(start_cortex: CortexFactory) -> None:
    async with (
        fake_gpu([3_000], [model_info("x/victim", vram_used_mb=8_000)]) as a,
        fake_gpu([50_000], [model_info(CAT, vram_used_mb=12_000)], total=64_000) as b,
    ):
        cortex = await start_cortex(
            {"node-a": a, "node-b": b}, models=catalogue({"id": CAT, "vram_mb": 3_000})
        )
        await b.stop()
        await cortex.poll()
        r = await chat(cortex)
        assert r.status_code == 200, r.text
        assert unloads(a) == []  # 3000 fits in 3000 free


@pytest.mark.parametrize(
    ("entry", "want_id"),
    [
        (
            {"id": "Helexa/Qwen3.6-27B-Uncensored", "source": "helexa"},
            "helexa:Helexa/Qwen3.6-27B-Uncensored",
        ),
        ({"id": "Qwen/Qwen3-8B"}, "Qwen/Qwen3-8B"),
        ({"id": "Qwen/Qwen3-8B", "source": ""}, "Qwen/Qwen3-8B"),
        ({"id": "local/tiny", "path": "/srv/models/tiny"}, "/srv/models/tiny"),
    ],
)
async def test_load_spec_sent_to_the_neuron(
    start_cortex: CortexFactory, entry: dict[str, Any], want_id: str
) -> None:
    # Device 0 has the most free memory but is under the 20 GB floor; 2 beats 1 on free memory.
    async with fake_gpu([15_000, 9_000, 10_000], total=[16_000, 24_000, 24_000]) as fake:
        cortex = await start_cortex(
            {"mock-node": fake},
            models=catalogue(
                {**entry, "vram_mb": 4_000, "min_device_vram_mb": 20_000, "quant": "bf16"}
            ),
        )
        r = await chat(cortex, entry["id"])
        assert r.status_code == 200, r.text
        spec = fake.last("/models/load").json
        assert spec["model_id"] == want_id
        assert spec["served_model_id"] == entry["id"]
        assert spec["devices"] == [2]
        assert spec["tensor_parallel"] is None
        assert spec["harness"] == "torch" and spec["quant"] == "bf16"
        assert fake.last("/models/load").headers["authorization"] == f"Bearer {NODE_TOKEN}"


@pytest.mark.parametrize(("strategy", "victim"), [("priority", "p10/new"), ("lru", "p50/old")])
async def test_eviction_strategy(start_cortex: CortexFactory, strategy: str, victim: str) -> None:
    models = [
        model_info("p10/new", vram_used_mb=8_000),
        model_info("p50/old", vram_used_mb=8_000),
        model_info("p50/older", vram_used_mb=8_000),
    ]
    async with fake_gpu([2_000], models) as fake:
        cortex = await start_cortex(
            {"mock-node": fake},
            models=catalogue(
                {"id": CAT, "vram_mb": 10_000},
                {"id": "p10/new", "residency_priority": 10},
                {"id": "p50/old", "residency_priority": 50},
                {"id": "p50/older", "residency_priority": 50},
            ),
            eviction={"strategy": strategy},
        )
        touch(cortex, "mock-node", {"p10/new": 1, "p50/old": 3600, "p50/older": 60})
        r = await chat(cortex)
        assert r.status_code == 200, r.text
        assert unloads(fake) == [victim]


async def test_node_with_cuda_unavailable_reason_is_never_chosen(
    start_cortex: CortexFactory,
) -> None:
    async with fake_gpu([30_000]) as a, fake_gpu([12_000]) as b:
        a.discovery["cuda_unavailable_reason"] = "CUDA driver not found"
        cortex = await start_cortex(
            {"node-a": a, "node-b": b}, models=catalogue({"id": CAT, "vram_mb": 10_000})
        )
        r = await chat(cortex)
        assert r.status_code == 200, r.text
        assert r.headers["x-helexa-node"] == "node-b"
        assert a.count("/models/load") == 0


async def test_only_cuda_unavailable_node_gives_503(start_cortex: CortexFactory) -> None:
    async with fake_gpu([30_000]) as a:
        a.discovery["cuda_unavailable_reason"] = "CUDA driver not found"
        cortex = await start_cortex({"node-a": a}, models=catalogue({"id": CAT}))
        r = await chat(cortex)
        assert r.status_code == 503 and r.headers["retry-after"] == "3"
        assert a.count("/models/load") == 0


# ---- feasibility, the unload call and the defrag advisory ----------------------------------------


async def test_infeasible_everywhere_is_model_not_servable(start_cortex: CortexFactory) -> None:
    async with fake_gpu([30_000]) as a:
        cortex = await start_cortex({"node-a": a}, models=catalogue({"id": CAT, "min_devices": 2}))
        r = await chat(cortex)
        assert r.status_code == 404
        assert r.json()["error"] == {
            "message": f"model '{CAT}' is in the catalogue but no configured neuron's topology "
            "can satisfy its constraints",
            "type": "invalid_request_error",
            "code": "model_not_servable",
            "param": None,
        }


async def test_undiscovered_node_might_be_feasible_503(start_cortex: CortexFactory) -> None:
    async with fake_gpu([30_000]) as a:
        cortex = await start_cortex(
            {"node-a": a, "node-b": "http://127.0.0.1:1"},
            models=catalogue({"id": CAT, "min_devices": 2}),
        )
        r = await chat(cortex)
        assert r.status_code == 503 and r.headers["retry-after"] == "3"
        assert r.json()["error"]["message"] == (
            f"no healthy neuron can serve model '{CAT}' right now; retry shortly"
        )


async def test_marked_failed_on_the_only_feasible_node(start_cortex: CortexFactory) -> None:
    failed = model_info(CAT, status="failed", vram_used_mb=None, error="boom")
    async with fake_gpu([30_000], [failed]) as a:
        cortex = await start_cortex({"node-a": a}, models=catalogue({"id": CAT}))
        r = await chat(cortex)
        assert r.status_code == 502
        err = r.json()["error"]
        assert err["code"] == "cold_load_failed"
        assert err["message"] == (
            f"cold-load of '{CAT}' on 'node-a' failed: "
            "model is marked failed on this node; unload it to reset"
        )
        assert a.count("/models/load") == 0


async def test_failed_on_one_node_places_on_another(start_cortex: CortexFactory) -> None:
    failed = model_info(CAT, status="failed", vram_used_mb=None, error="boom")
    async with fake_gpu([30_000], [failed]) as a, fake_gpu([10_000]) as b:
        cortex = await start_cortex({"node-a": a, "node-b": b}, models=catalogue({"id": CAT}))
        r = await chat(cortex)
        assert r.status_code == 200, r.text
        assert r.headers["x-helexa-node"] == "node-b"
        assert a.count("/models/load") == 0


async def test_failed_unload_is_cold_load_failed(start_cortex: CortexFactory) -> None:
    async with fake_gpu([2_000], [model_info("old/model", vram_used_mb=8_000)]) as fake:
        cortex = await start_cortex(
            {"mock-node": fake}, models=catalogue({"id": CAT, "vram_mb": 10_000})
        )
        fake.unload_response = (500, error_body("secret unload detail", "api_error", "oops"))
        r = await chat(cortex)
        assert r.status_code == 502
        err = r.json()["error"]
        assert err["code"] == "cold_load_failed"
        assert err["message"] == (
            f"cold-load of '{CAT}' on 'mock-node' failed: "
            "evicting 'old/model' failed: neuron returned HTTP 500 (oops)"
        )
        assert "secret" not in r.text
        assert fake.count("/models/load") == 0
        node = cortex.gw.fleet.nodes["mock-node"]
        assert node.lifecycle_cycles == 0
        assert cortex.metric("cortex_evictions_total", node="mock-node", model="old/model") == 0
        # The victim is routable again.
        r = await chat(cortex, "old/model")
        assert r.status_code == 200 and r.headers["x-helexa-node"] == "mock-node"


async def test_unreachable_unload_is_cold_load_failed(start_cortex: CortexFactory) -> None:
    async with fake_gpu([2_000], [model_info("old/model", vram_used_mb=8_000)]) as fake:
        cortex = await start_cortex(
            {"mock-node": fake}, models=catalogue({"id": CAT, "vram_mb": 10_000})
        )
        await fake.stop()
        r = await chat(cortex)
        assert r.status_code == 502
        assert r.json()["error"]["message"] == (
            f"cold-load of '{CAT}' on 'mock-node' failed: "
            "evicting 'old/model' failed: neuron unreachable"
        )


async def test_victim_is_unroutable_during_its_unload(start_cortex: CortexFactory) -> None:
    async with fake_gpu([2_000], [model_info("old/model", vram_used_mb=8_000)]) as fake:
        cortex = await start_cortex(
            {"mock-node": fake}, models=catalogue({"id": CAT, "vram_mb": 10_000})
        )
        seen: list[bool] = []
        orig = cortex.gw.lifecycle.client.call

        async def spy(node: Any, method: str, path: str, *a: Any, **kw: Any) -> Any:
            if path == "/models/unload":
                m = node.models["old/model"]
                seen.append(m.evicting and "old/model" not in node.endpoint_cache)
            return await orig(node, method, path, *a, **kw)

        cortex.gw.lifecycle.client.call = spy  # type: ignore[method-assign]
        r = await chat(cortex)
        assert r.status_code == 200, r.text
        assert seen == [True]


async def test_defrag_advisory_logged_every_n_cycles(
    start_cortex: CortexFactory, caplog: pytest.LogCaptureFixture
) -> None:
    models = [model_info(f"m/{i}", vram_used_mb=8_000) for i in range(2)]
    async with fake_gpu([0], models) as fake:
        cortex = await start_cortex(
            {"mock-node": fake},
            models=catalogue({"id": CAT, "vram_mb": 16_000}),
            eviction={"defrag_after_cycles": 2},
        )
        with caplog.at_level(logging.WARNING, logger="helexa.cortex"):
            r = await chat(cortex)
        assert r.status_code == 200, r.text
        assert cortex.gw.fleet.nodes["mock-node"].lifecycle_cycles == 2
        warns = [rec for rec in caplog.records if "defragment" in rec.getMessage()]
        assert len(warns) == 1 and warns[0].levelno == logging.WARNING


class GatedNeuron(FakeNeuron):
    """Loads wait for `gate`: the test decides when a load finishes."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(token=NODE_TOKEN, **kw)
        self.gate = asyncio.Event()

    async def _do_load(self, served: str, model_id: str, spec: Any) -> Any:
        await self.gate.wait()
        return await super()._do_load(served, model_id, spec)


async def test_placements_on_one_node_wait_for_each_other(start_cortex: CortexFactory) -> None:
    # Room for one 8 GB model. Two different models are placed at once: the second waits for
    # the first (per-node lock), sees the re-polled memory, and evicts to make room.
    fake = GatedNeuron(models=[model_info("idle/victim", vram_used_mb=8_000)], **gpu([10_000]))
    fake.load_vram_mb = 8_000
    async with fake:
        try:
            cortex = await start_cortex(
                {"mock-node": fake},
                models=catalogue(
                    {"id": "first/model", "vram_mb": 8_000},
                    {"id": "second/model", "vram_mb": 8_000},
                ),
            )
            lc = cortex.gw.lifecycle
            orig_place = lc.place
            entered: list[str] = []
            second_waiting = asyncio.Event()

            async def place(profile: Any) -> Any:
                entered.append(profile.id)
                if profile.id == "second/model":
                    second_waiting.set()  # the rest of place() runs up to the lock right now
                return await orig_place(profile)

            lc.place = place  # type: ignore[method-assign]
            first = asyncio.create_task(chat(cortex, "first/model"))
            await fake.wait_for("/models/load")
            second = asyncio.create_task(chat(cortex, "second/model"))
            await asyncio.wait_for(second_waiting.wait(), 10)
            assert fake.count("/models/load") == 1  # the second is held by the node lock
            fake.gate.set()
            r1, r2 = await asyncio.wait_for(asyncio.gather(first, second), 20)
        finally:
            fake.gate.set()
    assert r1.status_code == 200 and r2.status_code == 200, (r1.text, r2.text)
    assert entered == ["first/model", "second/model"]
    assert [q.json["served_model_id"] for q in fake.calls("/models/load")] == [
        "first/model",
        "second/model",
    ]
    assert unloads(fake) == ["idle/victim"]
