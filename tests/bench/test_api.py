"""The read-only JSON API on a real loopback listener over a seeded store."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web
from bench_data import run, seed

from helexa.bench.api import make_app
from helexa.bench.store import Store


async def serve(store: Store) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(make_app(store), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, Store]]:
    store = Store(tmp_path / "bench.sqlite")
    seed(store)
    runner, base = await serve(store)
    async with httpx.AsyncClient(base_url=base, timeout=10, trust_env=False) as client:
        yield client, store
    await runner.cleanup()
    store.close()


async def get(client: httpx.AsyncClient, url: str, status: int = 200) -> Any:
    r = await client.get(url)
    assert r.status_code == status, r.text
    assert r.headers["access-control-allow-origin"] == "*"
    assert r.headers["content-type"].startswith("application/json")
    return r.json()


async def test_health(api: tuple[httpx.AsyncClient, Store]) -> None:
    client, store = api
    assert await get(client, "/api/health") == store.health()
    assert (await get(client, "/api/health"))["runs"] == 9


async def test_dimensions_summary_match_store(api: tuple[httpx.AsyncClient, Store]) -> None:
    client, store = api
    assert await get(client, "/api/dimensions") == store.dimensions()
    summary = await get(client, "/api/summary")
    assert summary == store.summary()
    assert [(r["target_name"], r["scenario_id"], r["samples"]) for r in summary] == [
        ("alpha", "chat:128", 2),
        ("alpha", "concurrency:4", 1),
        ("beta", "chat:128", 1),
    ]


async def test_series(api: tuple[httpx.AsyncClient, Store]) -> None:
    client, _ = api
    rows = await get(client, "/api/series?model=m1&scenario=chat:128&host=alpha")
    assert [(r["git_sha"], r["samples"]) for r in rows] == [("aaa1111", 3), ("bbb2222", 2)]
    assert rows[1]["ttft_s_median"] == pytest.approx(0.6)
    rows = await get(client, "/api/series?model=m1&scenario=chat:128")
    assert [r["git_sha"] for r in rows] == ["llama-b1"]
    assert await get(client, "/api/series?model=zzz&scenario=chat:128") == []


@pytest.mark.parametrize(
    "query,param", [("scenario=chat:128", "model"), ("model=m1", "scenario"), ("", "model")]
)
async def test_series_missing_parameter(
    api: tuple[httpx.AsyncClient, Store], query: str, param: str
) -> None:
    client, _ = api
    body = await get(client, f"/api/series?{query}", 400)
    assert body["error"]["code"] == "missing_parameter"
    assert body["error"]["param"] == param
    assert body["error"]["type"] == "invalid_request_error"


async def test_runs_filters(api: tuple[httpx.AsyncClient, Store]) -> None:
    client, store = api
    rows = await get(client, "/api/runs")
    assert rows == store.runs()
    assert len(rows) == 9 and "build_info" not in rows[0]
    assert rows[0]["ts"] == "2026-01-03T00:00:01Z"  # newest first
    assert {r["host"] for r in await get(client, "/api/runs?host=beta")} == {"beta"}
    failed = await get(client, "/api/runs?ok=false")
    assert len(failed) == 2 and all(r["ok"] is False for r in failed)
    assert len(await get(client, "/api/runs?ok=true&sha=aaa1111")) == 3
    assert len(await get(client, "/api/runs?ok=1&model=m1&scenario=concurrency:4")) == 1
    assert len(await get(client, "/api/runs?limit=3")) == 3


async def test_runs_limit_cap(api: tuple[httpx.AsyncClient, Store]) -> None:
    client, store = api
    await asyncio.to_thread(
        lambda: [
            store.add_run(run(ts=f"2026-03-01T{i // 3600:02d}:{i // 60 % 60:02d}:{i % 60:02d}Z"))
            for i in range(1100)
        ]
    )
    assert len(await get(client, "/api/runs?limit=5000")) == 1000
    assert len(await get(client, "/api/runs")) == 200


@pytest.mark.parametrize(
    "query,param",
    [("ok=maybe", "ok"), ("limit=abc", "limit"), ("limit=0", "limit"), ("limit=-3", "limit")],
)
async def test_runs_bad_parameters(
    api: tuple[httpx.AsyncClient, Store], query: str, param: str
) -> None:
    client, _ = api
    body = await get(client, f"/api/runs?{query}", 400)
    assert body["error"]["code"] == "invalid_value"
    assert body["error"]["param"] == param


async def test_read_only_and_cors(api: tuple[httpx.AsyncClient, Store]) -> None:
    client, _ = api
    r = await client.post("/api/runs", json={})
    assert r.status_code == 405 and r.headers["access-control-allow-origin"] == "*"
    r = await client.delete("/api/health")
    assert r.status_code == 405
    r = await client.options("/api/summary")
    assert r.status_code == 204 and "GET" in r.headers["access-control-allow-methods"]
    body = await get(client, "/api/nope", 404)
    assert body["error"]["code"] == "not_found"


async def test_concurrent_reads_while_writing(tmp_path: Path) -> None:
    """A writer thread inserts (as the sweep does) while the API answers a stream of reads:
    every read answers 200, none sees "database is locked"."""
    store = Store(tmp_path / "busy.sqlite")
    runner, base = await serve(store)
    errors: list[BaseException] = []
    done = threading.Event()

    def writer() -> None:
        try:
            for i in range(300):
                store.add_run(run(ts=f"2026-04-01T00:{i // 60:02d}:{i % 60:02d}Z", ttft_s=0.1))
        except BaseException as e:
            errors.append(e)
        finally:
            done.set()

    thread = threading.Thread(target=writer)
    statuses: list[int] = []
    async with httpx.AsyncClient(base_url=base, timeout=30, trust_env=False) as client:
        thread.start()
        while not done.is_set():
            rs = await asyncio.gather(
                *(
                    client.get(p)
                    for p in (
                        "/api/summary",
                        "/api/runs?limit=1000",
                        "/api/health",
                        "/api/dimensions",
                        "/api/series?model=m1&scenario=chat:128",
                    )
                )
            )
            statuses += [r.status_code for r in rs]
        await asyncio.to_thread(thread.join, 30)
        final = (await client.get("/api/health")).json()
    await runner.cleanup()
    store.close()
    assert not errors, errors
    assert statuses and set(statuses) == {200}
    assert final["runs"] == 300
