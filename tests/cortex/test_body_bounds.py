"""Bodies that cost memory and event-loop time (issue 11, item 6): the 8 MiB default limit, a
body of millions of `{}` measured off the event loop and refused, and a bound on such
measurements at once."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import orjson
import pytest

from helexa.wire import http, json_shape
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


async def test_a_79_mib_body_of_empty_objects_is_refused_while_health_answers(
    start_cortex: CortexFactory, fake: FakeNeuron
) -> None:
    """Millions of `{}` are counted in a child process and refused (the parse would hold the
    GIL, and hundreds of MB, where cortex serves); a long text body of the same size is served."""
    cortex = await start_cortex({"mock-node": fake})
    body = padded(int(7.9 * 2**20))
    hdrs = {"content-type": "application/json"}
    async with httpx.AsyncClient(timeout=60) as client:
        url = cortex.url + "/v1/chat/completions"
        big = asyncio.create_task(client.post(url, content=body, headers=hdrs))
        healths = [await client.get(cortex.url + "/health") for _ in range(5)]
        r = await big
        text = {**CHAT, "messages": [{"role": "user", "content": "word " * (7 * 2**20 // 5)}]}
        served = await client.post(url, json=text)
    assert all(h.status_code == 200 for h in healths)
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["code"] == "invalid_json"
    assert f"at most {http.MAX_VALUES} are accepted" in err["message"]
    assert served.status_code == 200
    assert fake.count("/v1/chat/completions") == 1  # only the text body reached the node


async def test_large_bodies_are_measured_off_the_loop_and_bounded(
    start_cortex: CortexFactory, fake: FakeNeuron, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first large body's measurement is held inside the executor: the event loop still
    answers /health (it would hang if it ran on the loop), and a second large body is refused
    with 503 and Retry-After rather than measured alongside. (A thread pool stands in for the
    child process so the measurement can be held.)"""
    entered = threading.Event()
    release = threading.Event()
    real = json_shape.values

    def gated(raw: bytes) -> tuple[int, str | None]:
        entered.set()
        release.wait(30)
        return real(raw)

    monkeypatch.setattr(json_shape, "values", gated)
    cortex = await start_cortex({"mock-node": fake}, gateway={"max_large_parses": 1})
    cortex.gw.parser.pool = ThreadPoolExecutor(1)
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
        assert (await first).status_code == 200  # ~350,000 values: under the bound
    assert fake.count("/v1/chat/completions") == 1
