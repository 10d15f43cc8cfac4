"""Fuzzing cortex: its routes with valid-ish bodies, its keys, and what must be free after.

Shared by the fuzz in front of a fake neuron (tests/cortex) and in front of a real neuron
daemon (tests/neuron/daemon).
"""

from __future__ import annotations

import random
from typing import Any
from urllib.parse import urlsplit

from rig.cortex_rig import Cortex
from rig.fuzzgen import Route, cases, credentials, fixed, messages, openai_routes
from rig.fuzzrun import FuzzResult, drive, settle

USER, POOR, ADMIN = "sk-fuzz-user", "sk-fuzz-poor", "sk-fuzz-admin"
KEYS = {
    "require_auth": True,
    "keys": [
        {"key": USER, "account_id": "acct-u", "key_id": "user"},
        {"key": POOR, "account_id": "acct-p", "key_id": "poor", "hard_cap": 50},
        {"key": ADMIN, "account_id": "acct-a", "key_id": "admin", "admin": True},
    ],
}
ODD_MODELS = ("", "nope", "../x", "a/b/c", "m\x00", "é" * 50, "a" * 600, "helexa/cat")
HISTORY = ("", "?limit=5", "?limit=-1", "?limit=%C2%B2", "?limit=1e9")
PUBLIC = ("/health", "/", "/version", "/dashboard")


def cortex_routes(served: str, node: str) -> list[Route]:
    """Every cortex route, with valid-ish bodies for the model `served`, loaded on `node`."""

    def model(rng: random.Random) -> Any:
        return served if rng.random() < 0.8 else rng.choice(ODD_MODELS)

    def anthropic(rng: random.Random) -> dict[str, Any]:
        body: dict[str, Any] = {"model": model(rng), "max_tokens": rng.randrange(1, 60)}
        body["messages"] = messages(rng)
        body["stream"] = rng.random() < 0.5
        if rng.random() < 0.2:
            schema = {"type": "object", "properties": {"q": {"type": "string"}}}
            body["tools"] = [{"name": "t", "description": "d", "input_schema": schema}]
        return body

    def unload(rng: random.Random) -> dict[str, Any]:
        return {"model": rng.choice(ODD_MODELS), "node": rng.choice((node, "nope"))}

    return [
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
            lambda r: "/v1/models/" + r.choice((served, "nope", "%2e%2e/x", "a" * 300)),
            lambda r: None,
        ),
        Route("GET", lambda r: r.choice(PUBLIC), lambda r: None),
        Route("GET", fixed("/api/fleet"), lambda r: None),
        Route("GET", lambda r: "/api/history" + r.choice(HISTORY), lambda r: None),
        Route("POST", fixed("/api/models/load"), lambda r: {"model": model(r), "node": node}),
        Route("POST", fixed("/api/models/unload"), unload),
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


async def fuzz_cortex(cortex: Cortex, served: str, node: str, count: int, seed: int) -> FuzzResult:
    """`count` cases against `cortex`; asserts every reply keeps the rules and nothing is
    left held, and returns the result for route-specific checks."""
    url = urlsplit(cortex.url)
    assert url.hostname is not None and url.port is not None
    auth = credentials([USER, POOR, ADMIN], [6, 2, 2])
    todo = cases(random.Random(seed), cortex_routes(served, node), auth, count)
    result = await drive(url.hostname, url.port, todo)
    assert result.sent == count
    assert not result.failures, result.report()
    assert await settle(lambda: held(cortex)) == []
    assert result.statuses.get(200, 0) > count * 0.1, result.statuses
    return result
