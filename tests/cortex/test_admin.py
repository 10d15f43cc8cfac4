"""Admin and fleet routes (pulled into the first wave by issue 2): POST /api/models/load,
POST /api/models/unload (admin keys only), GET /api/fleet, GET /api/history."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from rig.cortex_rig import NODE_TOKEN, Cortex, CortexFactory
from rig.fake_neuron import FakeNeuron, error_body, model_info

CAT = "cat-model"
ADMIN = "sk-admin"
USER = "sk-user"
KEYS = {
    "keys": [
        {"key": ADMIN, "account_id": "ops", "key_id": "ops-admin", "admin": True},
        {"key": USER, "account_id": "acct-1", "key_id": "key-1"},
    ]
}
ADMIN_REQUIRED = {
    "error": {
        "message": "this endpoint requires an admin API key",
        "type": "permission_error",
        "code": "admin_required",
        "param": None,
    }
}


async def post(cortex: Cortex, path: str, body: Any, key: str | None = ADMIN) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    async with httpx.AsyncClient(timeout=20) as c:
        return await c.post(cortex.url + path, json=body, headers=headers)


async def get(cortex: Cortex, path: str, key: str | None = USER, **kw: Any) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    async with httpx.AsyncClient(timeout=20) as c:
        return await c.get(cortex.url + path, headers=headers, **kw)


@pytest.fixture
async def two_nodes(start_cortex: CortexFactory) -> Any:
    async with (
        FakeNeuron(models=[], token=NODE_TOKEN) as a,
        FakeNeuron(models=[], token=NODE_TOKEN) as b,
    ):
        b.devices[0]["vram_free_mb"] = 30_000  # node-b wins placement on free memory
        cortex = await start_cortex(
            {"node-a": a, "node-b": b},
            models={"models": [{"id": CAT, "vram_mb": 4000}], "aliases": {"helexa/cat": CAT}},
            entitlements=KEYS,
            gateway={"admin_load_roots": ["Qwen"]},  # ids outside the catalogue: this hub org
        )
        yield cortex, a, b


# ---- admin_required ----------------------------------------------------------------------------


@pytest.mark.parametrize("key", [None, USER])
@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/models/load", {"model": CAT}),
        ("/api/models/load", {"model": CAT, "node": "node-a"}),
        ("/api/models/unload", {"model": CAT, "node": "node-a"}),
    ],
)
async def test_admin_routes_need_an_admin_key(
    two_nodes: Any, key: str | None, path: str, body: dict[str, Any]
) -> None:
    cortex, a, b = two_nodes
    r = await post(cortex, path, body, key=key)
    assert r.status_code == 403
    assert r.headers["content-type"].startswith("application/json")
    assert r.json() == ADMIN_REQUIRED
    for n in (a, b):
        assert n.count("/models/load") == 0 and n.count("/models/unload") == 0


async def test_admin_routes_reject_unknown_keys_with_401(two_nodes: Any) -> None:
    cortex, a, _ = two_nodes
    r = await post(cortex, "/api/models/load", {"model": CAT}, key="sk-nope")
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert a.count("/models/load") == 0


async def test_admin_routes_are_post_only(two_nodes: Any) -> None:
    cortex, _, _ = two_nodes
    r = await get(cortex, "/api/models/load", key=ADMIN)
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"


# ---- load --------------------------------------------------------------------------------------


async def test_admin_load_without_node_runs_placement(two_nodes: Any) -> None:
    cortex, a, b = two_nodes
    r = await post(cortex, "/api/models/load", {"model": CAT})
    assert r.status_code == 200, r.text
    assert r.json() == {"status": "loaded", "node": "node-b", "model": CAT}
    assert a.count("/models/load") == 0
    spec = b.last("/models/load").json
    assert spec["model_id"] == CAT and spec["served_model_id"] == CAT
    assert cortex.gw.fleet.nodes["node-b"].models[CAT].status == "loaded"
    # A chat now finds it loaded: no cold start, no second load.
    r = await post(cortex, "/v1/chat/completions", {"model": CAT, "messages": []}, key=USER)
    assert r.status_code == 200 and "x-helexa-cold-start" not in r.headers
    assert r.headers["x-helexa-node"] == "node-b"
    assert b.count("/models/load") == 1


async def test_admin_load_with_node_targets_that_node(two_nodes: Any) -> None:
    cortex, a, b = two_nodes
    r = await post(cortex, "/api/models/load", {"model": "helexa/cat", "node": "node-a"})
    assert r.status_code == 200, r.text
    assert r.json() == {"status": "loaded", "node": "node-a", "model": CAT}
    assert b.count("/models/load") == 0
    spec = a.last("/models/load").json
    assert spec["model_id"] == CAT and spec["served_model_id"] == CAT and spec["devices"] == [0]
    assert cortex.gw.fleet.nodes["node-a"].models[CAT].status == "loaded"


async def test_admin_load_of_a_model_outside_the_catalogue_on_a_node(two_nodes: Any) -> None:
    cortex, a, _ = two_nodes
    r = await post(cortex, "/api/models/load", {"model": "Qwen/Qwen3-0.6B", "node": "node-a"})
    assert r.status_code == 200, r.text
    assert r.json() == {"status": "loaded", "node": "node-a", "model": "Qwen/Qwen3-0.6B"}
    assert a.last("/models/load").json == {"model_id": "Qwen/Qwen3-0.6B"}


async def test_admin_load_unknown_model_without_node_is_404(two_nodes: Any) -> None:
    cortex, a, b = two_nodes
    r = await post(cortex, "/api/models/load", {"model": "nobody/knows"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    assert a.count("/models/load") == b.count("/models/load") == 0


async def test_admin_load_failure_is_cold_load_failed(two_nodes: Any) -> None:
    cortex, a, _ = two_nodes
    a.load_response = (500, error_body("secret detail", "api_error", "load_failed"))
    r = await post(cortex, "/api/models/load", {"model": CAT, "node": "node-a"})
    assert r.status_code == 502
    err = r.json()["error"]
    assert err["code"] == "cold_load_failed"
    assert err["message"] == (
        f"cold-load of '{CAT}' on 'node-a' failed: neuron returned HTTP 500 (load_failed)"
    )
    assert "secret detail" not in r.text


@pytest.mark.parametrize(
    ("path", "body", "status", "code"),
    [
        ("/api/models/load", {"node": "node-a"}, 400, "missing_model_field"),
        ("/api/models/load", {"model": CAT, "node": "node-z"}, 404, "node_not_found"),
        ("/api/models/load", {"model": CAT, "node": 7}, 400, "invalid_value"),
        ("/api/models/load", [CAT], 400, "invalid_json"),
        ("/api/models/unload", {"model": CAT}, 400, "missing_node_field"),
        ("/api/models/unload", {"model": CAT, "node": "node-z"}, 404, "node_not_found"),
    ],
)
async def test_admin_bad_bodies(
    two_nodes: Any, path: str, body: Any, status: int, code: str
) -> None:
    cortex, a, b = two_nodes
    r = await post(cortex, path, body)
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code
    assert a.count("/models/load") == b.count("/models/load") == 0
    assert a.count("/models/unload") == b.count("/models/unload") == 0


# ---- unload ------------------------------------------------------------------------------------


async def test_admin_unload(start_cortex: CortexFactory, fake: FakeNeuron) -> None:
    cortex = await start_cortex({"mock-node": fake}, entitlements=KEYS)
    r = await post(cortex, "/api/models/unload", {"model": "test-model", "node": "mock-node"})
    assert r.status_code == 200, r.text
    assert r.json() == {"status": "unloaded", "node": "mock-node", "model": "test-model"}
    assert fake.last("/models/unload").json == {"model_id": "test-model"}
    node = cortex.gw.fleet.nodes["mock-node"]
    assert node.models["test-model"].status == "unloaded"
    assert node.lifecycle_cycles == 1
    assert cortex.metric("cortex_evictions_total", node="mock-node", model="test-model") == 0


async def test_admin_unload_unknown_model_passes_the_neuron_404(
    start_cortex: CortexFactory, fake: FakeNeuron
) -> None:
    cortex = await start_cortex({"mock-node": fake}, entitlements=KEYS)
    r = await post(cortex, "/api/models/unload", {"model": "no/such", "node": "mock-node"})
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "model_not_found"
    assert "no/such" in r.json()["error"]["message"]
    assert cortex.gw.fleet.nodes["mock-node"].lifecycle_cycles == 0


async def test_admin_unload_neuron_failure_is_502(
    start_cortex: CortexFactory, fake: FakeNeuron
) -> None:
    cortex = await start_cortex({"mock-node": fake}, entitlements=KEYS)
    fake.unload_response = (500, error_body("secret", "api_error", "boom"))
    r = await post(cortex, "/api/models/unload", {"model": "test-model", "node": "mock-node"})
    assert r.status_code == 502
    assert r.json()["error"]["code"] == "upstream_error"
    assert "secret" not in r.text
    assert cortex.gw.fleet.nodes["mock-node"].models["test-model"].status == "loaded"


# ---- /api/fleet --------------------------------------------------------------------------------


async def test_api_fleet_shape(start_cortex: CortexFactory, fake: FakeNeuron) -> None:
    cortex = await start_cortex(
        {"mock-node": fake, "dead-node": "http://127.0.0.1:1"}, entitlements=KEYS
    )
    r = await get(cortex, "/api/fleet")
    assert r.status_code == 200
    nodes = r.json()["nodes"]
    assert [n["name"] for n in nodes] == ["dead-node", "mock-node"]
    for n in nodes:
        assert {
            "name",
            "endpoint",
            "healthy",
            "last_poll",
            "discovery",
            "devices",
            "activation",
            "models",
        } <= set(n)
    dead, live = nodes
    assert dead["healthy"] is False and dead["last_poll"] is None and dead["discovery"] is None
    assert dead["endpoint"] == "http://127.0.0.1:1" and dead["models"] == []
    assert live["healthy"] is True and live["endpoint"] == fake.url
    assert isinstance(live["last_poll"], int)
    assert live["discovery"]["max_prompt_tokens"] == 16384
    assert live["devices"][0]["vram_free_mb"] == 20000
    assert live["activation"]["state"] == "ready"
    [m] = live["models"]
    assert m["id"] == "test-model" and m["status"] == "loaded" and m["vram_used_mb"] == 8000
    assert '"token"' not in r.text and NODE_TOKEN not in r.text


async def test_api_fleet_needs_a_key_under_require_auth(
    start_cortex: CortexFactory, fake: FakeNeuron
) -> None:
    cortex = await start_cortex({"mock-node": fake}, entitlements={**KEYS, "require_auth": True})
    assert (await get(cortex, "/api/fleet", key=None)).status_code == 401
    assert (await get(cortex, "/api/history", key=None)).status_code == 401
    # Hostnames and endpoints are the operator's: an ordinary key is refused (issue 11).
    r = await get(cortex, "/api/fleet", key=USER)
    assert r.status_code == 403 and r.json() == ADMIN_REQUIRED
    assert (await get(cortex, "/api/fleet", key=ADMIN)).status_code == 200


# ---- /api/history ------------------------------------------------------------------------------

HISTORY_KEYS = {
    "ts",
    "request_id",
    "route",
    "model",
    "node",
    "status",
    "duration_ms",
    "ttft_ms",
    "prompt_tokens",
    "completion_tokens",
    "cold_start",
    "key_id",
}


async def test_api_history_newest_first_with_limit(
    start_cortex: CortexFactory, fake: FakeNeuron
) -> None:
    cortex = await start_cortex({"mock-node": fake}, entitlements=KEYS)
    async with httpx.AsyncClient(timeout=20) as c:
        for i in range(3):
            r = await c.post(
                cortex.base + "/chat/completions",
                json={"model": "test-model", "messages": []},
                headers={"authorization": f"Bearer {USER}", "x-request-id": f"req-{i}"},
            )
            assert r.status_code == 200
        r = await c.post(
            cortex.base + "/chat/completions",
            json={"model": "nobody/knows", "messages": []},
            headers={"x-request-id": "req-404"},
        )
        assert r.status_code == 404
    r = await get(cortex, "/api/history", params={"limit": "3"})
    assert r.status_code == 200
    items = r.json()["data"]
    assert [i["request_id"] for i in items] == ["req-404", "req-2", "req-1"]
    for item in items:
        assert set(item) == HISTORY_KEYS
    miss, ok = items[0], items[1]
    assert ok["route"] == "/v1/chat/completions"
    assert ok["model"] == "test-model" and ok["node"] == "mock-node"
    assert ok["status"] == 200 and ok["cold_start"] is False
    assert ok["prompt_tokens"] == 10 and ok["completion_tokens"] == 5
    assert ok["key_id"] == "key-1" and ok["ttft_ms"] is None
    assert isinstance(ok["ts"], int) and ok["duration_ms"] >= 0
    assert miss["status"] == 404 and miss["node"] is None and miss["key_id"] is None
    # Default limit 100 returns everything here; the cap is 1000.
    r = await get(cortex, "/api/history")
    assert len(r.json()["data"]) == 4
    r = await get(cortex, "/api/history", params={"limit": "5000"})
    assert len(r.json()["data"]) == 4


async def test_api_history_records_cold_starts_and_streams(
    start_cortex: CortexFactory, fake: FakeNeuron
) -> None:
    fake.models.append(model_info("cold/one", status="unloaded", vram_used_mb=None))
    cortex = await start_cortex({"mock-node": fake}, entitlements=KEYS)
    async with httpx.AsyncClient(timeout=20) as c:
        r = await c.post(
            cortex.base + "/chat/completions",
            json={"model": "cold/one", "messages": [], "stream": True},
            headers={"authorization": f"Bearer {USER}"},
        )
        assert r.status_code == 200 and r.headers["x-helexa-cold-start"] == "1"
    [item] = (await get(cortex, "/api/history", params={"limit": "1"})).json()["data"]
    assert item["cold_start"] is True and item["model"] == "cold/one"
    assert item["ttft_ms"] is not None and item["ttft_ms"] >= 0
    assert item["completion_tokens"] == 4


@pytest.mark.parametrize("limit", ["abc", "-1", "1.5"])
async def test_api_history_bad_limit(
    start_cortex: CortexFactory, fake: FakeNeuron, limit: str
) -> None:
    cortex = await start_cortex({"mock-node": fake}, entitlements=KEYS)
    r = await get(cortex, "/api/history", params={"limit": limit})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["code"] == "invalid_value" and err["param"] == "limit"
