"""Fallback chains: a 503 before any byte moves the request to the next model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from helexa.config.catalogue import Catalogue
from helexa.config.loader import ConfigError, validate
from rig.cortex_rig import NODE_TOKEN, Cortex, CortexFactory
from rig.fake_neuron import FakeNeuron, error_body, model_info

BIG = "big/model"
SMALL = "small/model"
TINY = "tiny/model"
CHAT_PATH = "/v1/chat/completions"
UNAVAILABLE = (503, error_body("busy", "api_error", "service_unavailable"), {"retry-after": "1"})


def chat(model: str = BIG, **kw: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], **kw}


async def post(
    cortex: Cortex, body: dict[str, Any], path: str = CHAT_PATH, **headers: str
) -> httpx.Response:
    async with httpx.AsyncClient(timeout=20) as c:
        return await c.post(cortex.url + path, json=body, headers=headers)


def node(*models: dict[str, Any]) -> FakeNeuron:
    return FakeNeuron(models=list(models), token=NODE_TOKEN)


def fallbacks(chain: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    return {"fallbacks": {BIG: chain or [SMALL]}, **extra}


def in_flight(cortex: Cortex, node_name: str, model: str) -> float:
    return cortex.metric("cortex_model_in_flight", node=node_name, model=model)


async def test_recovering_primary_falls_back(start_cortex: CortexFactory) -> None:
    async with node(model_info(BIG, status="recovering"), model_info(SMALL)) as fake:
        cortex = await start_cortex({"n1": fake}, models=fallbacks())
        r = await post(cortex, chat())
        assert r.status_code == 200, r.text
        assert r.headers["x-helexa-fallback-model"] == SMALL
        assert r.headers["x-helexa-model"] == SMALL
        assert fake.last(CHAT_PATH).json["model"] == SMALL
        assert r.json()["model"] == SMALL


async def test_no_header_when_the_primary_serves(start_cortex: CortexFactory) -> None:
    async with node(model_info(BIG), model_info(SMALL)) as fake:
        cortex = await start_cortex({"n1": fake}, models=fallbacks())
        r = await post(cortex, chat())
        assert r.status_code == 200, r.text
        assert "x-helexa-fallback-model" not in r.headers
        assert fake.last(CHAT_PATH).json["model"] == BIG


async def test_upstream_503_before_any_byte_falls_back(start_cortex: CortexFactory) -> None:
    async with node(model_info(BIG)) as a, node(model_info(SMALL)) as b:
        a.reply_override[CHAT_PATH] = UNAVAILABLE
        cortex = await start_cortex({"node-a": a, "node-b": b}, models=fallbacks())
        for stream in (False, True):
            r = await post(cortex, chat(stream=stream))
            assert r.status_code == 200, r.text
            assert r.headers["x-helexa-fallback-model"] == SMALL
            assert r.headers["x-helexa-node"] == "node-b"
            assert b.last(CHAT_PATH).json["model"] == SMALL
        assert a.count(CHAT_PATH) == 2 and b.count(CHAT_PATH) == 2
        # The primary's in-flight mark was given back when the fallback took over.
        assert in_flight(cortex, "node-a", BIG) == 0
        assert in_flight(cortex, "node-b", SMALL) == 0
        assert cortex.metric("cortex_requests_total", model=SMALL, node="node-b") == 2


async def test_unreachable_primary_falls_back(start_cortex: CortexFactory) -> None:
    async with node(model_info(BIG)) as a, node(model_info(SMALL)) as b:
        cortex = await start_cortex({"node-a": a, "node-b": b}, models=fallbacks())
        await a.refuse()
        r = await post(cortex, chat())
        assert r.status_code == 200, r.text
        assert r.headers["x-helexa-fallback-model"] == SMALL
        assert in_flight(cortex, "node-a", BIG) == 0


async def test_chain_is_tried_in_order(start_cortex: CortexFactory) -> None:
    models = [model_info(BIG, status="recovering"), model_info(SMALL, status="recovering")]
    async with node(*models, model_info(TINY)) as fake:
        cortex = await start_cortex({"n1": fake}, models=fallbacks([SMALL, TINY]))
        r = await post(cortex, chat())
        assert r.status_code == 200, r.text
        assert r.headers["x-helexa-fallback-model"] == TINY
        assert fake.last(CHAT_PATH).json["model"] == TINY


async def test_last_failure_is_the_answer(start_cortex: CortexFactory) -> None:
    models = [model_info(BIG, status="recovering"), model_info(SMALL, status="recovering")]
    async with node(*models) as fake:
        cortex = await start_cortex({"n1": fake}, models=fallbacks())
        r = await post(cortex, chat())
        assert r.status_code == 503
        assert r.headers["x-helexa-fallback-model"] == SMALL
        assert r.headers["retry-after"] == "2"
        assert f"model '{SMALL}' is recovering" in r.json()["error"]["message"]
        assert fake.count(CHAT_PATH) == 0


async def test_last_upstream_503_is_passed_through(start_cortex: CortexFactory) -> None:
    async with node(model_info(BIG)) as a, node(model_info(SMALL)) as b:
        a.reply_override[CHAT_PATH] = UNAVAILABLE
        b.reply_override[CHAT_PATH] = UNAVAILABLE
        cortex = await start_cortex({"node-a": a, "node-b": b}, models=fallbacks())
        r = await post(cortex, chat())
        assert r.status_code == 503
        assert r.json()["error"]["message"] == "busy"  # the neuron's envelope, as-is
        assert r.headers["retry-after"] == "1"
        assert r.headers["x-helexa-fallback-model"] == SMALL


@pytest.mark.parametrize("status", [404, 400, 429, 500, 502, 504])
async def test_other_upstream_failures_never_fall_back(
    start_cortex: CortexFactory, status: int
) -> None:
    async with node(model_info(BIG)) as a, node(model_info(SMALL)) as b:
        a.reply_override[CHAT_PATH] = (status, error_body("no", "api_error", "x"))
        cortex = await start_cortex({"node-a": a, "node-b": b}, models=fallbacks())
        r = await post(cortex, chat())
        assert r.status_code == status
        assert "x-helexa-fallback-model" not in r.headers
        assert b.count(CHAT_PATH) == 0


async def test_unknown_model_404_never_falls_back(start_cortex: CortexFactory) -> None:
    async with node(model_info(SMALL)) as fake:
        cortex = await start_cortex({"n1": fake}, models=fallbacks())
        r = await post(cortex, chat())
        assert r.status_code == 404
        assert r.json()["error"]["code"] == "model_not_found"
        assert fake.count(CHAT_PATH) == 0


async def test_midstream_failure_never_falls_back(start_cortex: CortexFactory) -> None:
    async with node(model_info(BIG)) as a, node(model_info(SMALL)) as b:
        a.fault, a.fault_after = "drop_after", 1
        cortex = await start_cortex({"node-a": a, "node-b": b}, models=fallbacks())
        r = await post(cortex, chat(stream=True))
        assert r.status_code == 200
        assert "upstream_connection_error" in r.text
        assert b.count(CHAT_PATH) == 0


async def test_fallback_may_cold_load(start_cortex: CortexFactory) -> None:
    async with node(model_info(BIG, status="recovering")) as fake:
        models = fallbacks(models=[{"id": SMALL, "vram_mb": 1000}])
        cortex = await start_cortex({"n1": fake}, models=models)
        r = await post(cortex, chat())
        assert r.status_code == 200, r.text
        assert r.headers["x-helexa-fallback-model"] == SMALL
        assert r.headers["x-helexa-cold-start"] == "1"
        assert [c.json["model_id"] for c in fake.calls("/models/load")] == [SMALL]


async def test_alias_uses_its_targets_chain(start_cortex: CortexFactory) -> None:
    async with node(model_info(BIG, status="recovering"), model_info(SMALL)) as fake:
        models = fallbacks(aliases={"big": BIG, "small": SMALL})
        models["fallbacks"] = {BIG: ["small"]}
        cortex = await start_cortex({"n1": fake}, models=models)
        r = await post(cortex, chat("big"))
        assert r.status_code == 200, r.text
        assert r.headers["x-helexa-fallback-model"] == SMALL
        assert fake.last(CHAT_PATH).json["model"] == SMALL


@pytest.mark.parametrize("stream", [False, True])
async def test_messages_fall_back(start_cortex: CortexFactory, stream: bool) -> None:
    async with node(model_info(BIG)) as a, node(model_info(SMALL)) as b:
        a.reply_override[CHAT_PATH] = UNAVAILABLE
        cortex = await start_cortex({"node-a": a, "node-b": b}, models=fallbacks())
        body = {**chat(), "max_tokens": 32, "stream": stream}
        r = await post(cortex, body, "/v1/messages")
        assert r.status_code == 200, r.text
        assert r.headers["x-helexa-fallback-model"] == SMALL
        assert b.last(CHAT_PATH).json["model"] == SMALL
        if not stream:
            assert r.json()["model"] == SMALL


async def test_budget_is_reserved_once_and_settled_once(start_cortex: CortexFactory) -> None:
    key = {"key": "sk-one", "account_id": "acct", "key_id": "k1", "hard_cap": 1500}
    async with node(model_info(BIG)) as a, node(model_info(SMALL)) as b:
        a.reply_override[CHAT_PATH] = UNAVAILABLE
        cortex = await start_cortex(
            {"node-a": a, "node-b": b},
            models=fallbacks(),
            entitlements={"require_auth": True, "keys": [key]},
        )
        # ~1020 tokens reserved: a second reservation would not fit under the cap.
        r = await post(cortex, chat(max_tokens=1000), authorization="Bearer sk-one")
        assert r.status_code == 200, r.text
        principal = cortex.gw.auth.resolve("sk-one")
        assert principal is not None
        snap = cortex.gw.auth.snapshot(principal)
        assert (snap.spent, snap.reserved) == (15, 0)  # the fallback's usage, once


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ({"aliases": {"big": BIG}, "fallbacks": {"big": [SMALL]}}, "key an alias's target"),
        ({"fallbacks": {BIG: [SMALL, SMALL]}}, f"'{SMALL}' repeats"),
        ({"fallbacks": {BIG: [BIG]}}, f"'{BIG}' repeats"),
        ({"aliases": {"b": BIG}, "fallbacks": {BIG: ["b"]}}, "'b' repeats"),
        ({"fallbacks": {BIG: [""]}}, "an entry is empty"),
    ],
)
def test_chains_are_validated(data: dict[str, Any], problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        validate(Catalogue, data, str(Path("models.toml")))
