"""Bodies that cost memory and event-loop time (issue 11, item 6): the 8 MiB default limit, a
body of millions of `{}` parsed off the event loop, and a bound on such parses at once."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import httpx
import orjson
import pytest

from helexa.wire import http
from rig.cortex_rig import CortexFactory
from rig.fake_neuron import FakeNeuron

LIMIT = 8 * 2**20
CHAT = {"model": "test-model", "messages": [{"role": "user", "content": "hi"}]}


def padded(size: int) -> bytes:
    """A chat body of exactly `size` bytes, padded with a list of empty objects."""
    head = orjson.dumps(CHAT)[:-1] + b',"pad":['
    n = (size - len(head) - 2) // 3
    body = head + b",".join([b"{}"] * n) + b"]}"
    return body + b" " * (size - len(body))


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages"])
async def test_a_body_over_8_mib_is_413_in_the_routes_envelope(
    start_cortex: CortexFactory, fake: FakeNeuron, path: str
) -> None:
    cortex = await start_cortex({"mock-node": fake})  # the default max_body_mb
    async with httpx.AsyncClient(timeout=30) as client:
        r = await client.post(
            cortex.url + path,
            content=padded(LIMIT + 1),
            headers={"content-type": "application/json"},
        )
    assert r.status_code == 413
    if path == "/v1/messages":
        assert r.json()["error"]["type"] == "request_too_large"
    else:
        assert r.json()["error"]["code"] == "request_too_large"
    assert fake.count(path) == 0


async def test_a_79_mib_body_of_empty_objects_is_served_while_health_answers(
    start_cortex: CortexFactory, fake: FakeNeuron
) -> None:
    cortex = await start_cortex({"mock-node": fake})
    body = padded(int(7.9 * 2**20))
    async with httpx.AsyncClient(timeout=60) as client:
        big = asyncio.create_task(
            client.post(
                cortex.url + "/v1/chat/completions",
                content=body,
                headers={"content-type": "application/json"},
            )
        )
        healths = [await client.get(cortex.url + "/health") for _ in range(5)]
        r = await big
    assert r.status_code == 200, r.text
    assert all(h.status_code == 200 for h in healths)
    assert fake.last("/v1/chat/completions").json["messages"] == CHAT["messages"]


async def test_large_parses_run_off_the_loop_and_are_bounded(
    start_cortex: CortexFactory, fake: FakeNeuron, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first large body's parse is held inside the parser: the event loop still answers
    /health (it would hang if the parse ran on the loop), and a second large body is refused
    with 503 and Retry-After rather than parsed alongside."""
    entered = threading.Event()
    release = threading.Event()
    real = http.parse_object

    def gated(raw: bytes) -> dict[str, Any]:
        if len(raw) > http.BIG_BODY:
            entered.set()
            release.wait(30)
        return real(raw)

    monkeypatch.setattr(http, "parse_object", gated)
    cortex = await start_cortex({"mock-node": fake}, gateway={"max_large_parses": 1})
    body = padded(2**20)
    hdrs = {"content-type": "application/json"}
    async with httpx.AsyncClient(timeout=10) as client:
        url = cortex.url + "/v1/chat/completions"
        first = asyncio.create_task(client.post(url, content=body, headers=hdrs))
        try:
            assert await asyncio.to_thread(entered.wait, 10)
            health = await client.get(cortex.url + "/health")
            assert health.status_code == 200
            second = await client.post(url, content=body, headers=hdrs)
            assert second.status_code == 503
            assert second.headers["retry-after"] == "1"
            assert second.json()["error"]["code"] == "server_busy"
        finally:
            release.set()
        assert (await first).status_code == 200
    assert fake.count("/v1/chat/completions") == 1
