"""Idle TTL: `keep_alive` per request and `keep_alive_secs` per model."""

from __future__ import annotations

import asyncio
import math
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from helexa.config.cortex import load_settings
from helexa.cortex.idle import parse_keep_alive
from helexa.wire.errors import ApiError
from rig.cortex_rig import NODE_TOKEN, Cortex, CortexFactory
from rig.fake_neuron import FakeNeuron, model_info
from rig.toml import write_toml

M = "test-model"
NODE = "mock-node"
CHAT = {"model": M, "messages": [{"role": "user", "content": "hi"}]}
ANTHROPIC = {"model": M, "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}
BODIES: dict[str, dict[str, Any]] = {
    "/v1/chat/completions": CHAT,
    "/v1/completions": {"model": M, "prompt": "hi"},
    "/v1/responses": {"model": M, "input": "hi"},
    "/v1/embeddings": {"model": M, "input": "hi"},
}


@pytest.mark.parametrize(
    ("value", "secs"),
    [
        (300, 300.0),
        (1.5, 1.5),
        (0, 0.0),
        ("0", 0.0),
        ("300", 300.0),
        ("30s", 30.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("1h30m", 5400.0),
        ("500ms", 0.5),
        (" 2m ", 120.0),
        (-1, math.inf),
        ("-1", math.inf),
        ("-5m", math.inf),
        (None, None),
    ],
)
def test_parse(value: Any, secs: float | None) -> None:
    assert parse_keep_alive(value) == secs


@pytest.mark.parametrize(
    "value", ["", "-", "abc", "5 minutes", "5x", "m", "1e3", "inf", True, [], {"s": 1}]
)
def test_parse_rejects(value: Any) -> None:
    with pytest.raises(ApiError) as e:
        parse_keep_alive(value)
    assert e.value.status == 400 and e.value.code == "invalid_value"
    assert e.value.param == "keep_alive"
    assert e.value.message.endswith(": use seconds or a duration like '5m'")


async def post(cortex: Cortex, path: str, body: dict[str, Any]) -> httpx.Response:
    async with httpx.AsyncClient(timeout=20) as c:
        return await c.post(cortex.url + path, json=body)


def ttl(secs: float, **profile: Any) -> dict[str, Any]:
    """A catalogue giving test-model an idle TTL."""
    return {"models": [{"id": M, "keep_alive_secs": secs, **profile}]}


def state(cortex: Cortex, model: str = M) -> Any:
    return cortex.gw.fleet.nodes[NODE].models[model]


def idle_for(cortex: Cortex, secs: float, model: str = M) -> None:
    state(cortex, model).last_accessed = time.time() - secs


async def until_unloaded(cortex: Cortex, within: float = 5.0) -> None:
    """The neuron saw the unload; cortex records it when the reply arrives."""
    async with asyncio.timeout(within):
        while state(cortex).status != "unloaded":  # noqa: ASYNC110 (no event to await)
            await asyncio.sleep(0.01)


def evictions(cortex: Cortex, model: str = M) -> float:
    return cortex.metric("cortex_evictions_total", node=NODE, model=model)


@pytest.mark.parametrize("path", sorted(BODIES))
async def test_stripped_before_forwarding(cortex: Cortex, fake: FakeNeuron, path: str) -> None:
    body = {**BODIES[path], "keep_alive": "5m", "user": "u1"}
    r = await post(cortex, path, body)
    assert r.status_code == 200, r.text
    sent = fake.last(path).json
    assert "keep_alive" not in sent
    assert sent["user"] == "u1" and sent["model"] == M
    assert state(cortex).keep_alive == 300


async def test_stripped_from_a_stream_that_cortex_asks_usage_for(
    cortex: Cortex, fake: FakeNeuron
) -> None:
    r = await post(cortex, "/v1/chat/completions", {**CHAT, "stream": True, "keep_alive": "1m"})
    assert r.status_code == 200, r.text
    sent = fake.last("/v1/chat/completions").json
    assert "keep_alive" not in sent
    assert sent["stream_options"] == {"include_usage": True}


async def test_stripped_on_messages(cortex: Cortex, fake: FakeNeuron) -> None:
    r = await post(cortex, "/v1/messages", {**ANTHROPIC, "keep_alive": -1})
    assert r.status_code == 200, r.text
    assert "keep_alive" not in fake.last("/v1/chat/completions").json
    assert state(cortex).keep_alive == math.inf


async def test_null_is_stripped_and_changes_nothing(cortex: Cortex, fake: FakeNeuron) -> None:
    r = await post(cortex, "/v1/chat/completions", {**CHAT, "keep_alive": None})
    assert r.status_code == 200, r.text
    assert "keep_alive" not in fake.last("/v1/chat/completions").json
    assert state(cortex).keep_alive is None


async def test_invalid_is_400_on_openai_routes(cortex: Cortex, fake: FakeNeuron) -> None:
    r = await post(cortex, "/v1/chat/completions", {**CHAT, "keep_alive": "soon"})
    assert r.status_code == 400
    assert r.json()["error"] == {
        "message": "invalid keep_alive 'soon': use seconds or a duration like '5m'",
        "type": "invalid_request_error",
        "code": "invalid_value",
        "param": "keep_alive",
    }
    assert fake.count("/v1/chat/completions") == 0


async def test_invalid_is_400_in_the_anthropic_envelope(cortex: Cortex, fake: FakeNeuron) -> None:
    r = await post(cortex, "/v1/messages", {**ANTHROPIC, "keep_alive": True})
    assert r.status_code == 400
    body = r.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["message"] == (
        "invalid keep_alive 'true': use seconds or a duration like '5m'"
    )
    assert fake.count("/v1/chat/completions") == 0


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages"])
async def test_zero_unloads_right_after_the_request(
    start_cortex: CortexFactory, fake: FakeNeuron, path: str
) -> None:
    # An hour between periodic sweeps: only the request's own kick can unload in time.
    cortex = await start_cortex({NODE: fake}, eviction={"idle_check_secs": 3600})
    cortex.gw.idle.start()
    body = ANTHROPIC if path == "/v1/messages" else CHAT
    r = await post(cortex, path, {**body, "keep_alive": 0})
    assert r.status_code == 200, r.text
    await until_unloaded(cortex)
    assert [c.json["model_id"] for c in fake.calls("/models/unload")] == [M]
    assert state(cortex).keep_alive is None  # the override lasted as long as that load
    assert evictions(cortex) == 1
    assert cortex.metric("cortex_node_lifecycle_cycles", node=NODE) == 1


async def test_the_value_belongs_to_the_node_that_served(start_cortex: CortexFactory) -> None:
    async with (
        FakeNeuron(models=[model_info(M)], token=NODE_TOKEN) as a,
        FakeNeuron(models=[model_info(M)], token=NODE_TOKEN) as b,
    ):
        cortex = await start_cortex({"node-a": a, "node-b": b})
        r = await post(cortex, "/v1/chat/completions", {**CHAT, "keep_alive": 0})
        assert r.status_code == 200, r.text
        assert r.headers["x-helexa-node"] == "node-a"  # equally idle: by name
        await cortex.gw.idle.sweep()
        assert a.count("/models/unload") == 1 and b.count("/models/unload") == 0
        assert cortex.gw.fleet.nodes["node-b"].models[M].keep_alive is None


async def test_catalogue_ttl(start_cortex: CortexFactory, fake: FakeNeuron) -> None:
    models = [model_info("fresh/model"), model_info("stale/model"), model_info("forever/model")]
    async with FakeNeuron(models=models, token=NODE_TOKEN) as fake:
        cortex = await start_cortex(
            {NODE: fake},
            models={
                "models": [
                    {"id": "fresh/model", "keep_alive_secs": 60},
                    {"id": "stale/model", "keep_alive_secs": 60},
                    {"id": "forever/model"},
                ]
            },
        )
        idle_for(cortex, 30, "fresh/model")
        idle_for(cortex, 61, "stale/model")
        idle_for(cortex, 86_400, "forever/model")
        await cortex.gw.idle.sweep()
        assert [c.json["model_id"] for c in fake.calls("/models/unload")] == ["stale/model"]
        assert evictions(cortex, "stale/model") == 1
        assert evictions(cortex, "fresh/model") == 0


async def test_every_idle_model_of_a_node_goes_in_one_sweep(
    start_cortex: CortexFactory,
) -> None:
    async with FakeNeuron(models=[model_info("a/m"), model_info("b/m")], token=NODE_TOKEN) as fake:
        models = [{"id": "a/m", "keep_alive_secs": 1}, {"id": "b/m", "keep_alive_secs": 1}]
        cortex = await start_cortex({NODE: fake}, models={"models": models})
        idle_for(cortex, 2, "a/m")
        idle_for(cortex, 2, "b/m")
        await cortex.gw.idle.sweep()
        assert sorted(c.json["model_id"] for c in fake.calls("/models/unload")) == ["a/m", "b/m"]


async def test_a_node_busy_placing_is_swept_later(
    start_cortex: CortexFactory, fake: FakeNeuron
) -> None:
    cortex = await start_cortex({NODE: fake}, models=ttl(1))
    idle_for(cortex, 2)
    async with cortex.gw.fleet.nodes[NODE].placement_lock:  # a cold load under way there
        await cortex.gw.idle.sweep()
    assert fake.count("/models/unload") == 0
    await cortex.gw.idle.sweep()
    assert fake.count("/models/unload") == 1


async def test_request_value_overrides_the_catalogue(
    start_cortex: CortexFactory, fake: FakeNeuron
) -> None:
    cortex = await start_cortex({NODE: fake}, models=ttl(60))
    r = await post(cortex, "/v1/chat/completions", {**CHAT, "keep_alive": "5m"})
    assert r.status_code == 200, r.text
    idle_for(cortex, 120)
    await cortex.gw.idle.sweep()
    assert fake.count("/models/unload") == 0
    # A later request without keep_alive leaves the override in place.
    r = await post(cortex, "/v1/chat/completions", CHAT)
    assert r.status_code == 200, r.text
    idle_for(cortex, 299)
    await cortex.gw.idle.sweep()
    assert fake.count("/models/unload") == 0
    idle_for(cortex, 301)
    await cortex.gw.idle.sweep()
    assert fake.count("/models/unload") == 1


async def test_negative_means_never(start_cortex: CortexFactory, fake: FakeNeuron) -> None:
    cortex = await start_cortex({NODE: fake}, models=ttl(1))
    r = await post(cortex, "/v1/chat/completions", {**CHAT, "keep_alive": "-1"})
    assert r.status_code == 200, r.text
    idle_for(cortex, 10 * 86_400)
    await cortex.gw.idle.sweep()
    assert fake.count("/models/unload") == 0


async def test_pinned_models_stay(start_cortex: CortexFactory, fake: FakeNeuron) -> None:
    cortex = await start_cortex(
        {NODE: fake},
        models=ttl(1, pinned_on=[NODE]),
        eviction={"idle_check_secs": 3600},
    )
    cortex.gw.idle.start()
    r = await post(cortex, "/v1/chat/completions", {**CHAT, "keep_alive": 0})
    assert r.status_code == 200, r.text
    idle_for(cortex, 86_400)
    await cortex.gw.idle.sweep()
    assert fake.count("/models/unload") == 0
    assert state(cortex).status == "loaded"


async def test_pinned_elsewhere_is_not_pinned_here(
    start_cortex: CortexFactory, fake: FakeNeuron
) -> None:
    cortex = await start_cortex({NODE: fake}, models=ttl(1, pinned_on=["other-node"]))
    idle_for(cortex, 2)
    await cortex.gw.idle.sweep()
    assert fake.count("/models/unload") == 1


async def test_busy_models_stay(start_cortex: CortexFactory, fake: FakeNeuron) -> None:
    fake.health_models = [{"id": M, "status": "loaded", "in_flight": 1, "queue_depth": 0}]
    cortex = await start_cortex({NODE: fake}, models=ttl(1))
    idle_for(cortex, 60)
    await cortex.gw.idle.sweep()
    assert fake.count("/models/unload") == 0
    fake.health_models = None  # the neuron's request finished
    await cortex.poll()
    await cortex.gw.idle.sweep()
    assert fake.count("/models/unload") == 1


async def test_live_request_keeps_the_model(start_cortex: CortexFactory, fake: FakeNeuron) -> None:
    cortex = await start_cortex({NODE: fake}, models=ttl(1))
    fake.stream_delay = 0.05
    async with (
        httpx.AsyncClient(timeout=20) as c,
        c.stream("POST", cortex.base + "/chat/completions", json={**CHAT, "stream": True}) as r,
    ):
        assert r.status_code == 200
        idle_for(cortex, 60)
        await cortex.gw.idle.sweep()
        assert fake.count("/models/unload") == 0
        await r.aread()
    idle_for(cortex, 60)
    await cortex.gw.idle.sweep()
    assert fake.count("/models/unload") == 1


async def test_periodic_sweep_unloads_a_never_used_model(
    start_cortex: CortexFactory, fake: FakeNeuron
) -> None:
    cortex = await start_cortex({NODE: fake}, models=ttl(0.2), eviction={"idle_check_secs": 0.05})
    assert state(cortex).last_accessed is None  # pre-warmed by the neuron, never used
    cortex.gw.idle.start()
    await until_unloaded(cortex)
    assert evictions(cortex) == 1


async def test_failed_unload_keeps_the_model_routable(
    start_cortex: CortexFactory, fake: FakeNeuron
) -> None:
    cortex = await start_cortex({NODE: fake}, models=ttl(1))
    fake.unload_response = (500, {"error": {"message": "boom", "code": "internal"}})
    idle_for(cortex, 60)
    await cortex.gw.idle.sweep()
    assert fake.count("/models/unload") == 1
    assert state(cortex).status == "loaded" and not state(cortex).evicting
    assert evictions(cortex) == 0
    r = await post(cortex, "/v1/chat/completions", CHAT)
    assert r.status_code == 200, r.text


def test_idle_check_secs_from_file_and_env(tmp_path: Path) -> None:
    write_toml(tmp_path / "cortex.toml", {"eviction": {"idle_check_secs": 2}})
    s = load_settings(tmp_path / "cortex.toml", explicit=True, environ={})
    assert s.config.eviction.idle_check_secs == 2
    env = {"CORTEX_EVICTION__IDLE_CHECK_SECS": "0.5"}
    s = load_settings(tmp_path / "cortex.toml", explicit=True, environ=env)
    assert s.config.eviction.idle_check_secs == 0.5
