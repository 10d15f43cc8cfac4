"""Fuzz every cortex route with 8,000 seeded hostile requests (issue 11): never a 5xx (but a
503 with Retry-After), always the route's envelope, nothing left reserved or in flight.

cortex runs on a real loopback port in front of a fake neuron; the requests go over four
kept-alive raw sockets, some hung up right after the status line.
"""

from __future__ import annotations

import random
from typing import Any
from urllib.parse import urlsplit

from rig.cortex_rig import Cortex, CortexFactory
from rig.fake_neuron import FakeNeuron
from rig.fuzzgen import (
    Route,
    cases,
    credentials,
    drive,
    fixed,
    messages,
    openai_routes,
    settle,
)

SEED = 1111
COUNT = 8000
USER, POOR, ADMIN = "sk-fuzz-user", "sk-fuzz-poor", "sk-fuzz-admin"
KEYS = {
    "require_auth": True,
    "keys": [
        {"key": USER, "account_id": "acct-u", "key_id": "user"},
        {"key": POOR, "account_id": "acct-p", "key_id": "poor", "hard_cap": 50},
        {"key": ADMIN, "account_id": "acct-a", "key_id": "admin", "admin": True},
    ],
}
ODD_MODELS = ("", "nope", "../x", "a/b/c", "test-model\x00", "é" * 50, "a" * 600, "helexa/cat")


def model(rng: random.Random) -> Any:
    return "test-model" if rng.random() < 0.8 else rng.choice(ODD_MODELS)


def anthropic(rng: random.Random) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model(rng), "max_tokens": rng.randrange(1, 60)}
    body["messages"] = messages(rng)
    body["stream"] = rng.random() < 0.5
    if rng.random() < 0.2:
        schema = {"type": "object", "properties": {"q": {"type": "string"}}}
        body["tools"] = [{"name": "t", "description": "d", "input_schema": schema}]
    return body


ROUTES = [
    *openai_routes(model),
    Route("POST", fixed("/v1/messages"), anthropic, anthropic=True),
    Route(
        "POST",
        fixed("/v1/messages/count_tokens"),
        lambda r: {"model": model(r), "messages": messages(r)},
        anthropic=True,
    ),
    Route(
        "GET",
        lambda r: "/v1/models/" + r.choice(("test-model", "nope", "%2e%2e/x", "a" * 300)),
        lambda r: None,
    ),
    Route("GET", lambda r: r.choice(("/health", "/", "/version", "/dashboard")), lambda r: None),
    Route("GET", fixed("/api/fleet"), lambda r: None),
    Route(
        "GET",
        lambda r: (
            "/api/history" + r.choice(("", "?limit=5", "?limit=-1", "?limit=%C2%B2", "?limit=1e9"))
        ),
        lambda r: None,
    ),
    Route("POST", fixed("/api/models/load"), lambda r: {"model": model(r), "node": "mock-node"}),
    Route(
        "POST",
        fixed("/api/models/unload"),
        lambda r: {"model": r.choice(ODD_MODELS), "node": r.choice(("mock-node", "nope"))},
    ),
]


def held(cortex: Cortex) -> list[str]:
    """What is still held: in-flight marks per (node, model), reservations and in-flight
    slots per key."""
    out = [
        f"{node.name}/{m} in flight {n}"
        for node in cortex.gw.fleet
        for m, n in node.local_in_flight.items()
        if n
    ]
    for key in (USER, POOR, ADMIN):
        principal = cortex.gw.auth.resolve(key)
        assert principal is not None
        snap = cortex.gw.auth.snapshot(principal)
        if snap.reserved:
            out.append(f"{principal.key_id} reserved {snap.reserved}")
    out += [f"{k}: {n} key slots held" for k, n in cortex.gw.key_limits.in_flight.items() if n]
    return out


async def test_fuzz_every_cortex_route(start_cortex: CortexFactory) -> None:
    async with FakeNeuron(token="node-secret") as fake:
        cortex = await start_cortex({"mock-node": fake}, entitlements=KEYS)
        url = urlsplit(cortex.url)
        assert url.hostname is not None and url.port is not None
        auth = credentials([USER, POOR, ADMIN], [6, 2, 2])
        todo = cases(random.Random(SEED), ROUTES, auth, COUNT)
        result = await drive(url.hostname, url.port, todo)
        assert result.sent == COUNT
        assert not result.failures, result.report()
        assert await settle(lambda: held(cortex)) == []
        assert sum(result.statuses.values()) > COUNT * 0.9
        assert result.statuses.get(200, 0) > COUNT * 0.1, result.statuses
