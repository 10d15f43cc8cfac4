"""Issue 11, tenancy and exposure against a real cortex: CORS only for configured origins and
never on /api/*, the fleet and the full history for admins only, per-tenant history, no history
of refused keys, safe request and model ids, and no internal error text for clients."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from helexa.cortex.fleet import FAILED_VIEW
from rig.cortex_rig import NODE_TOKEN, Cortex, CortexFactory
from rig.fake_neuron import FakeNeuron, model_info

ADMIN, USER1, USER2 = "sk-admin", "sk-one", "sk-two"
KEYS = [
    {"key": ADMIN, "account_id": "ops", "key_id": "ops-admin", "admin": True},
    {"key": USER1, "account_id": "acct-1", "key_id": "key-1"},
    {"key": USER2, "account_id": "acct-2", "key_id": "key-2"},
]
ORIGIN = "https://app.example"
CHAT = {"model": "test-model", "messages": [{"role": "user", "content": "hi"}]}
SECRET = "/home/ops/.cache/huggingface/hub/models--x/blobs/0xdeadbeef: OSError: disk"


def auth(key: str | None) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"} if key else {}


async def authed(start_cortex: CortexFactory, fake: FakeNeuron, **gateway: Any) -> Cortex:
    ent = {"require_auth": True, "keys": KEYS}
    return await start_cortex({"mock-node": fake}, entitlements=ent, gateway=gateway)


# -- item 7: CORS ------------------------------------------------------------------------------


async def test_cors_only_for_configured_origins_and_never_on_api(
    start_cortex: CortexFactory, fake: FakeNeuron
) -> None:
    cortex = await authed(start_cortex, fake, cors_origins=[ORIGIN])
    async with httpx.AsyncClient(timeout=20) as c:

        async def preflight(path: str, origin: str) -> httpx.Response:
            return await c.options(
                cortex.url + path,
                headers={"origin": origin, "access-control-request-method": "POST"},
            )

        ok = await preflight("/v1/chat/completions", ORIGIN)
        assert ok.headers["access-control-allow-origin"] == ORIGIN
        assert "POST" in ok.headers["access-control-allow-methods"]
        evil = await preflight("/v1/chat/completions", "https://evil.example")
        assert "access-control-allow-origin" not in evil.headers
        for path in ("/api/history", "/api/fleet", "/api/models/load"):
            assert "access-control-allow-origin" not in (await preflight(path, ORIGIN)).headers

        r = await c.post(
            cortex.base + "/chat/completions", json=CHAT, headers={**auth(USER1), "origin": ORIGIN}
        )
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == ORIGIN
        assert "x-helexa-node" in r.headers["access-control-expose-headers"]
        r = await c.post(
            cortex.base + "/chat/completions",
            json=CHAT,
            headers={**auth(USER1), "origin": "https://evil.example"},
        )
        assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
        r = await c.get(cortex.url + "/api/history", headers={**auth(ADMIN), "origin": ORIGIN})
        assert r.status_code == 200 and "access-control-allow-origin" not in r.headers


async def test_no_cors_by_default(start_cortex: CortexFactory, fake: FakeNeuron) -> None:
    cortex = await authed(start_cortex, fake)
    async with httpx.AsyncClient(timeout=20) as c:
        r = await c.post(
            cortex.base + "/chat/completions", json=CHAT, headers={**auth(USER1), "origin": ORIGIN}
        )
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers


# -- item 7: fleet and history -------------------------------------------------------------------


async def test_fleet_needs_an_admin_key_under_auth(
    start_cortex: CortexFactory, fake: FakeNeuron
) -> None:
    cortex = await authed(start_cortex, fake)
    async with httpx.AsyncClient(timeout=20) as c:
        r = await c.get(cortex.url + "/api/fleet", headers=auth(USER1))
        assert r.status_code == 403 and r.json()["error"]["code"] == "admin_required"
        assert fake.url not in r.text
        r = await c.get(cortex.url + "/api/fleet", headers=auth(ADMIN))
        assert r.status_code == 200 and r.json()["nodes"][0]["endpoint"] == fake.url


async def test_history_shows_a_tenant_only_its_own_requests(
    start_cortex: CortexFactory, fake: FakeNeuron
) -> None:
    cortex = await authed(start_cortex, fake)
    async with httpx.AsyncClient(timeout=20) as c:
        for key, rid in ((USER1, "one-a"), (USER2, "two-a"), (USER1, "one-b")):
            r = await c.post(
                cortex.base + "/chat/completions",
                json=CHAT,
                headers={**auth(key), "x-request-id": rid},
            )
            assert r.status_code == 200
        # Refused before they were anyone's request: never in history.
        for headers in ({}, auth("sk-bogus")):
            r = await c.post(
                cortex.base + "/chat/completions",
                json=CHAT,
                headers={**headers, "x-request-id": "probe"},
            )
            assert r.status_code == 401

        async def ids(key: str) -> list[str]:
            r = await c.get(cortex.url + "/api/history", headers=auth(key))
            assert r.status_code == 200
            return [i["request_id"] for i in r.json()["data"]]

        assert await ids(USER1) == ["one-b", "one-a"]
        assert await ids(USER2) == ["two-a"]
        assert await ids(ADMIN) == ["one-b", "two-a", "one-a"]


async def test_history_limit_must_be_ascii_digits(
    start_cortex: CortexFactory, fake: FakeNeuron
) -> None:
    cortex = await authed(start_cortex, fake)
    async with httpx.AsyncClient(timeout=20) as c:
        for raw in ("²", "١٢", "-1", "1e3"):
            r = await c.get(cortex.url + "/api/history", params={"limit": raw}, headers=auth(ADMIN))
            assert r.status_code == 400, raw
            assert r.json()["error"]["code"] == "invalid_value"


# -- item 7: request ids, and model ids in headers and logs ----------------------------------------


@pytest.mark.parametrize(
    ("sent", "kept"),
    [
        ("abc-123_X.y:z", True),
        ("a" * 128, True),
        ("a" * 129, False),
        ("has space", False),
        ("<script>", False),
        ("caf\u00e9", False),
    ],
)
async def test_request_id_is_short_and_safe(
    start_cortex: CortexFactory, fake: FakeNeuron, sent: str, kept: bool
) -> None:
    cortex = await authed(start_cortex, fake)
    async with httpx.AsyncClient(timeout=20) as c:
        r = await c.post(
            cortex.base + "/chat/completions",
            json=CHAT,
            headers={**auth(USER1), "x-request-id": sent.encode()},
        )
    assert r.status_code == 200
    rid = r.headers["x-request-id"]
    assert (rid == sent) is kept
    if not kept:
        assert rid.startswith("req_")
    assert fake.last("/v1/chat/completions").headers["x-request-id"] == rid


@pytest.mark.parametrize("model", ["test-model\u0000", "\u001b[31mred", "a\nb", "m" * 300])
@pytest.mark.parametrize(
    "path", ["/v1/chat/completions", "/v1/embeddings", "/v1/messages", "/v1/messages/count_tokens"]
)
async def test_a_model_id_that_cannot_be_a_header_is_400(
    start_cortex: CortexFactory, fake: FakeNeuron, path: str, model: str
) -> None:
    """Before: cortex echoed it in x-helexa-model, aiohttp refused the header and dropped the
    connection with no reply at all."""
    cortex = await authed(start_cortex, fake)
    body: dict[str, Any] = {"model": model, "input": "hi", "max_tokens": 5}
    body["messages"] = [{"role": "user", "content": "hi"}]
    async with httpx.AsyncClient(timeout=20) as c:
        r = await c.post(cortex.url + path, json=body, headers=auth(USER1))
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error"
    assert "x-helexa-model" not in r.headers
    assert fake.count(path) == 0


# -- small: deeply nested bodies --------------------------------------------------------------


def nested(depth: int) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "string"}
    for _ in range(depth):
        out = {"type": "object", "properties": {"x": out}}
    return out


async def test_deeply_nested_tools_are_400_not_500(
    start_cortex: CortexFactory, fake: FakeNeuron
) -> None:
    cortex = await authed(start_cortex, fake)
    deep = nested(400)
    async with httpx.AsyncClient(timeout=20) as c:
        r = await c.post(
            cortex.base + "/messages",
            json={
                "model": "test-model",
                "max_tokens": 5,
                "messages": [{"role": "user", "content": "hi"}],
                "tools": [{"name": "t", "input_schema": deep}],
            },
            headers=auth(USER1),
        )
        assert r.status_code == 400, r.text
        assert r.json()["type"] == "error"
        assert r.json()["error"]["type"] == "invalid_request_error"
        # keep_alive makes cortex re-serialise an OpenAI body too.
        r = await c.post(
            cortex.base + "/chat/completions",
            json={**CHAT, "keep_alive": "5m", "tools": [{"type": "function", "x": deep}]},
            headers=auth(USER1),
        )
        assert r.status_code == 400, r.text
        assert r.json()["error"]["type"] == "invalid_request_error"
    assert fake.count("/v1/chat/completions") == 0
    assert cortex.gw.auth.snapshot(cortex.gw.auth.resolve(USER1)).reserved == 0  # type: ignore[arg-type]


# -- item 8: a failed load's text stays out of client views ----------------------------------


async def test_failed_load_details_reach_only_admins(start_cortex: CortexFactory) -> None:
    failed = model_info("m/x", status="failed", error=SECRET, vram_used_mb=None)
    activation = {
        "state": "ready",
        "pending": [],
        "in_progress": None,
        "completed": [],
        "failed": [{"model_id": "m/x", "error": SECRET}],
    }
    async with FakeNeuron(token=NODE_TOKEN, models=[failed], activation=activation) as n:
        open_cortex = await start_cortex({"n": n})
        keyed = await start_cortex({"n": n}, entitlements={"require_auth": True, "keys": KEYS})
        async with httpx.AsyncClient(timeout=20) as c:
            for cortex, key in ((open_cortex, None), (keyed, USER1), (keyed, ADMIN)):
                r = await c.get(cortex.base + "/models", headers=auth(key))
                assert r.status_code == 200 and SECRET not in r.text
                [entry] = [e for e in r.json()["data"] if e["id"] == "m/x"]
                assert entry["locations"][0]["error"] == FAILED_VIEW
            r = await c.get(open_cortex.url + "/api/fleet")  # no key: not an admin
            assert r.status_code == 200 and SECRET not in r.text
            node = r.json()["nodes"][0]
            assert node["models"][0]["error"] == FAILED_VIEW
            r = await c.get(keyed.url + "/api/fleet", headers=auth(ADMIN))
            assert r.json()["nodes"][0]["models"][0]["error"] == SECRET
            assert r.json()["nodes"][0]["activation"]["failed"][0]["error"] == SECRET


# -- small: admin loads ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "status"),
    [
        ("/srv/models/mine", 200),
        ("/srv/models/../../etc", 403),
        ("/etc/passwd", 403),
        ("/srv/modelsX/mine", 403),
        ("Qwen/Qwen3-0.6B", 403),
        ("test-model", 200),  # in the catalogue below
    ],
)
async def test_admin_loads_only_catalogue_ids_or_allowed_roots(
    start_cortex: CortexFactory, fake: FakeNeuron, model: str, status: int
) -> None:
    cortex = await start_cortex(
        {"mock-node": fake},
        entitlements={"require_auth": True, "keys": KEYS},
        models={"models": [{"id": "test-model", "vram_mb": 1000}]},
        gateway={"admin_load_roots": ["/srv/models"]},
    )
    async with httpx.AsyncClient(timeout=20) as c:
        r = await c.post(
            cortex.url + "/api/models/load",
            json={"model": model, "node": "mock-node"},
            headers=auth(ADMIN),
        )
    assert r.status_code == status, r.text
    if status == 403:
        assert r.json()["error"]["code"] == "model_not_allowed"
        assert fake.count("/models/load") == 0
