"""`GET /v1/models` — limits from neurons, catalogue cost, ordering,
capability union, feasibility, activation-derived `loading`, unhealthy locations."""

from __future__ import annotations

import time
from typing import Any

import httpx
import openai
import pytest

from helexa.cortex.fleet import FAILED_VIEW
from rig.cortex_rig import Cortex, CortexFactory
from rig.fake_neuron import FakeNeuron, default_discovery, error_body, model_info

LOCATION_KEYS = {"node", "status", "vram_used_mb", "healthy"}


async def fetch(cortex: Cortex) -> list[dict[str, Any]]:
    async with httpx.AsyncClient() as c:
        r = await c.get(cortex.base + "/models")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert body["object"] == "list"
    assert "max_model_len" not in r.text
    data: list[dict[str, Any]] = body["data"]
    return data


def by_id(data: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {e["id"]: e for e in data}


def without_created(entry: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in entry.items() if k != "created"}


def small_discovery(vram_mb: int) -> dict[str, Any]:
    d = default_discovery()
    d["devices"][0]["vram_total_mb"] = vram_mb
    return d


async def test_neuron_limit_shown_catalogue_limit_ignored(
    start_cortex: CortexFactory,
) -> None:
    info = model_info(
        "test-model",
        limit={"context": 49152, "input": 40960, "output": 8192},
        tool_call=True,
        reasoning=True,
        max_model_len=49152,
    )
    catalogue = {
        "models": [
            {
                "id": "test-model",
                "limit": {"context": 999999, "output": 999999},
                "cost": {"input": 0.0, "output": 0.0},
            }
        ]
    }
    async with FakeNeuron(token="node-secret", models=[info]) as n:
        cortex = await start_cortex({"mock-node": n}, models=catalogue)
        e = by_id(await fetch(cortex))["test-model"]
    assert e["limit"] == {"context": 49152, "input": 40960, "output": 8192}
    assert e["cost"] == {"input": 0.0, "output": 0.0}
    assert e["tool_call"] is True and e["reasoning"] is True
    assert "max_model_len" not in e
    assert e["object"] == "model" and e["owned_by"] == "helexa"
    assert isinstance(e["created"], int) and abs(e["created"] - time.time()) < 60
    assert e["loaded"] is True
    assert e["feasible_on"] == ["mock-node"]


async def test_sorted_by_id_and_locations_by_node(start_cortex: CortexFactory) -> None:
    ms = [model_info("z/last"), model_info("a/first"), model_info("test-model")]
    async with (
        FakeNeuron(token="node-secret", models=ms) as b,
        FakeNeuron(token="node-secret", models=list(reversed(ms))) as a,
    ):
        cortex = await start_cortex({"node-b": b, "node-a": a}, models={"models": [{"id": "m/c"}]})
        data = await fetch(cortex)
    ids = [e["id"] for e in data]
    assert ids == sorted(ids) == ["a/first", "m/c", "test-model", "z/last"]
    for e in data:
        nodes = [loc["node"] for loc in e["locations"]]
        assert nodes == sorted(nodes)
        for loc in e["locations"]:
            assert set(loc) >= LOCATION_KEYS
    first = by_id(data)["a/first"]
    assert first["locations"] == [
        {"node": "node-a", "status": "loaded", "vram_used_mb": 8000, "healthy": True},
        {"node": "node-b", "status": "loaded", "vram_used_mb": 8000, "healthy": True},
    ]
    assert first["feasible_on"] == []  # not in the catalogue
    assert "cost" not in first


async def test_capabilities_union(start_cortex: CortexFactory) -> None:
    async with (
        FakeNeuron(token="node-secret", models=[model_info("m/x", capabilities=["text"])]) as a,
        FakeNeuron(
            token="node-secret", models=[model_info("m/x", capabilities=["vision", "text"])]
        ) as b,
    ):
        cortex = await start_cortex(
            {"node-a": a, "node-b": b},
            models={"models": [{"id": "m/x", "capabilities": ["tools", "text"]}]},
        )
        e = by_id(await fetch(cortex))["m/x"]
    assert e["capabilities"] == ["text", "tools", "vision"]
    assert len(e["locations"]) == 2


async def test_capabilities_union_from_neurons_only(start_cortex: CortexFactory) -> None:
    async with (
        FakeNeuron(token="node-secret", models=[model_info("m/x", capabilities=["text"])]) as a,
        FakeNeuron(
            token="node-secret", models=[model_info("m/x", capabilities=["text", "vision"])]
        ) as b,
    ):
        cortex = await start_cortex({"node-a": a, "node-b": b})
        e = by_id(await fetch(cortex))["m/x"]
    assert e["capabilities"] == ["text", "vision"]
    assert [loc["node"] for loc in e["locations"]] == ["node-a", "node-b"]


async def test_unloaded_catalogue_model_feasible_from_discovery(
    start_cortex: CortexFactory, fake: FakeNeuron
) -> None:
    catalogue = {
        "models": [
            {"id": "cat/big", "min_device_vram_mb": 24000, "capabilities": ["text"]},
            {"id": "cat/any"},
            {"id": "cat/two", "min_devices": 2},
        ]
    }
    async with (
        FakeNeuron(token="node-secret", discovery=small_discovery(16000)) as small,
        FakeNeuron(token="node-secret") as down,
    ):
        cortex = await start_cortex(
            {"big": fake, "small": small, "down": down, "never": "http://127.0.0.1:1"},
            models=catalogue,
        )
        # `down` was discovered, then went unhealthy: it is no longer in feasible_on.
        down.reply_override["/models"] = (500, error_body("boom", "api_error", None))
        await cortex.poll()
        data = by_id(await fetch(cortex))
    big = data["cat/big"]
    assert big["loaded"] is False
    assert big["locations"] == []
    assert big["feasible_on"] == ["big"]
    assert big["capabilities"] == ["text"]
    assert "limit" not in big
    assert data["cat/any"]["feasible_on"] == ["big", "small"]
    assert data["cat/two"]["feasible_on"] == []


async def test_activation_loading_listed(start_cortex: CortexFactory) -> None:
    activation = {
        "state": "pre_warming",
        "pending": ["Qwen/model-y"],
        "in_progress": "Qwen/model-x",
        "completed": [],
        "failed": [],
    }
    async with FakeNeuron(token="node-secret", models=[], activation=activation) as n:
        cortex = await start_cortex({"mock-node": n})
        data = by_id(await fetch(cortex))
    for mid in ("Qwen/model-x", "Qwen/model-y"):
        e = data[mid]
        assert e["locations"] == [
            {"node": "mock-node", "status": "loading", "vram_used_mb": None, "healthy": True}
        ]
        assert e["loaded"] is False
        assert e["feasible_on"] == []


async def test_activation_does_not_duplicate_a_reported_location(
    start_cortex: CortexFactory,
) -> None:
    activation = {
        "state": "pre_warming",
        "pending": [],
        "in_progress": "Qwen/model-x",
        "completed": [],
        "failed": [],
    }
    models = [model_info("Qwen/model-x", status="loading", vram_used_mb=None)]
    async with FakeNeuron(token="node-secret", models=models, activation=activation) as n:
        cortex = await start_cortex({"mock-node": n})
        e = by_id(await fetch(cortex))["Qwen/model-x"]
    assert e["locations"] == [
        {"node": "mock-node", "status": "loading", "vram_used_mb": None, "healthy": True}
    ]


async def test_model_on_unhealthy_node(cortex: Cortex, fake: FakeNeuron) -> None:
    fake.reply_override["/models"] = (500, error_body("boom", "api_error", None))
    await cortex.poll()
    e = by_id(await fetch(cortex))["test-model"]
    assert e["locations"] == [
        {"node": "mock-node", "status": "loaded", "vram_used_mb": 8000, "healthy": False}
    ]
    assert e["loaded"] is False


async def test_loaded_true_when_one_location_healthy(start_cortex: CortexFactory) -> None:
    async with FakeNeuron(token="node-secret") as a, FakeNeuron(token="node-secret") as b:
        cortex = await start_cortex({"node-a": a, "node-b": b})
        a.reply_override["/models"] = (500, error_body("boom", "api_error", None))
        await cortex.poll()
        e = by_id(await fetch(cortex))["test-model"]
    assert [(loc["node"], loc["healthy"]) for loc in e["locations"]] == [
        ("node-a", False),
        ("node-b", True),
    ]
    assert e["loaded"] is True


async def test_cost_absent_vs_zero(start_cortex: CortexFactory, fake: FakeNeuron) -> None:
    catalogue = {
        "models": [
            {"id": "cat/free", "cost": {"input": 0.0, "output": 0.0}},
            {"id": "cat/nocost"},
            {"id": "cat/cached", "cost": {"input": 1.5, "output": 6.0, "cache_read": 0.15}},
        ]
    }
    cortex = await start_cortex({"mock-node": fake}, models=catalogue)
    data = by_id(await fetch(cortex))
    assert "cost" not in data["cat/nocost"]
    assert "cost" not in data["test-model"]
    assert data["cat/free"]["cost"] == {"input": 0.0, "output": 0.0}
    assert data["cat/cached"]["cost"] == {"input": 1.5, "output": 6.0, "cache_read": 0.15}


async def test_smallest_context_wins_and_present_beats_absent(
    start_cortex: CortexFactory,
) -> None:
    async with (
        FakeNeuron(
            token="node-secret",
            models=[model_info("m/x", limit={"context": 32768, "output": 4096})],
        ) as a,
        FakeNeuron(
            token="node-secret",
            models=[model_info("m/x", limit={"context": 16384, "output": 2048})],
        ) as b,
        FakeNeuron(token="node-secret", models=[model_info("m/x")]) as c,
    ):
        cortex = await start_cortex({"node-a": a, "node-b": b, "node-c": c})
        e = by_id(await fetch(cortex))["m/x"]
    assert e["limit"] == {"context": 16384, "output": 2048}


async def test_failed_location_carries_error(start_cortex: CortexFactory) -> None:
    failed = model_info("m/x", status="failed", error="3 restarts failed", vram_used_mb=None)
    async with FakeNeuron(token="node-secret", models=[failed]) as n:
        cortex = await start_cortex({"n": n})
        e = by_id(await fetch(cortex))["m/x"]
    assert e["locations"] == [
        {
            "node": "n",
            "status": "failed",
            "vram_used_mb": None,
            "healthy": True,
            "error": FAILED_VIEW,  # the neuron's text stays in logs and the admin view
        }
    ]
    assert e["loaded"] is False


async def test_dangling_alias_skipped(start_cortex: CortexFactory, fake: FakeNeuron) -> None:
    models = {"aliases": {"helexa/small": "test-model", "helexa/ghost": "nobody/serves"}}
    cortex = await start_cortex({"mock-node": fake}, models=models)
    ids = [e["id"] for e in await fetch(cortex)]
    assert "helexa/small" in ids
    assert "helexa/ghost" not in ids


async def test_openai_sdk_lists_models(start_cortex: CortexFactory, fake: FakeNeuron) -> None:
    keys = {"keys": [{"key": "sk-m", "account_id": "acct"}]}
    cortex = await start_cortex(
        {"mock-node": fake},
        models={"models": [{"id": "cat/a"}], "aliases": {"helexa/small": "test-model"}},
        entitlements=keys,
    )
    client = openai.AsyncOpenAI(base_url=cortex.base, api_key="sk-m", max_retries=0)
    try:
        page = await client.models.list()
        ids = [m.id for m in page.data]
        assert ids == ["cat/a", "helexa/small", "test-model"]
        assert all(m.owned_by == "helexa" and m.object == "model" for m in page.data)
    finally:
        await client.close()


async def test_retrieve_one_model_ids_with_slashes_and_aliases(
    start_cortex: CortexFactory, fake: FakeNeuron
) -> None:
    fake.models = [model_info("Qwen/Qwen3-0.6B"), model_info("test-model")]
    models = {
        "models": [{"id": "local/x", "cost": {"input": 0.0, "output": 0.0}}],
        "aliases": {"helexa/small": "Qwen/Qwen3-0.6B"},
    }
    cortex = await start_cortex({"mock-node": fake}, models=models)
    listed = by_id(await fetch(cortex))
    async with httpx.AsyncClient() as c:
        for mid in ["Qwen/Qwen3-0.6B", "local/x", "helexa/small", "test-model"]:
            for path in [mid, mid.replace("/", "%2F")]:  # the openai SDK encodes the slash
                r = await c.get(f"{cortex.base}/models/{path}")
                assert r.status_code == 200, (path, r.text)
                assert without_created(r.json()) == without_created(listed[mid])
        assert listed["helexa/small"]["alias_of"] == "Qwen/Qwen3-0.6B"
        for unknown in ["nobody/serves", "Qwen", "Qwen/Qwen3-0.6B/extra"]:
            r = await c.get(f"{cortex.base}/models/{unknown}")
            assert r.status_code == 404
            assert r.json()["error"] == {
                "message": f"model '{unknown}' not found on any node and not in catalogue",
                "type": "invalid_request_error",
                "code": "model_not_found",
                "param": None,
            }


async def test_openai_sdk_retrieves_a_model(start_cortex: CortexFactory, fake: FakeNeuron) -> None:
    cortex = await start_cortex(
        {"mock-node": fake},
        models={"aliases": {"helexa/small": "test-model"}},
        entitlements={"keys": [{"key": "sk-m", "account_id": "acct"}]},
    )
    client = openai.AsyncOpenAI(base_url=cortex.base, api_key="sk-m", max_retries=0)
    try:
        m = await client.models.retrieve("helexa/small")
        assert (m.id, m.object, m.owned_by) == ("helexa/small", "model", "helexa")
        assert (m.model_extra or {})["alias_of"] == "test-model"
        with pytest.raises(openai.NotFoundError) as exc:
            await client.models.retrieve("helexa/none")
        assert exc.value.code == "model_not_found"
    finally:
        await client.close()
