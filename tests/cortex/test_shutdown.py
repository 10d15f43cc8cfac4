"""Graceful shutdown of a real `cortex serve` process (gateway.shutdown_grace_secs):
on SIGTERM it stops accepting, lets in-flight streams finish, and exits 0."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from rig.cortex_rig import NODE_TOKEN
from rig.fake_neuron import FakeNeuron
from rig.net import free_port
from rig.toml import write_toml

CHAT = {"model": "test-model", "messages": [{"role": "user", "content": "hi"}], "stream": True}


def cortex_exe() -> str:
    beside = Path(sys.executable).with_name("cortex")
    found = str(beside) if beside.exists() else shutil.which("cortex")
    if found is None:
        pytest.skip("the cortex console script is not installed")
    return found


def clean_env() -> dict[str, str]:
    drop = ("HELEXA_API_KEY", "CORTEX_CONFIG")
    return {
        k: v
        for k, v in os.environ.items()
        if not k.lower().endswith("_proxy") and k not in drop and not k.startswith("CORTEX_")
    }


@dataclass
class Served:
    proc: asyncio.subprocess.Process
    url: str
    port: int
    stderr: list[str]


async def connect_refused(port: int, within: float) -> bool:
    """True once a fresh TCP connect to the port is refused (bounded by `within`)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except (ConnectionRefusedError, ConnectionResetError):  # reset: closed in its backlog
            return True
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        await asyncio.sleep(0.02)
    return False


ServeFactory = Callable[[FakeNeuron, float], Awaitable[Served]]


@pytest.fixture
async def serve_factory(tmp_path: Path) -> AsyncIterator[ServeFactory]:
    procs: list[asyncio.subprocess.Process] = []
    drains: list[asyncio.Task[None]] = []

    async def start(fake: FakeNeuron, grace: float) -> Served:
        port, metrics_port = free_port(), free_port()
        cfg = tmp_path / "cortex.toml"
        write_toml(
            cfg,
            {
                "gateway": {
                    "listen": f"127.0.0.1:{port}",
                    "metrics_listen": f"127.0.0.1:{metrics_port}",
                    "shutdown_grace_secs": grace,
                    "probe_timeout_secs": 2,
                },
                "neurons": [{"name": "mock-node", "endpoint": fake.url, "token": NODE_TOKEN}],
            },
        )
        proc = await asyncio.create_subprocess_exec(
            cortex_exe(),
            "serve",
            "--config",
            str(cfg),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env=clean_env(),
        )
        procs.append(proc)
        assert proc.stderr is not None
        lines: list[str] = []
        async with asyncio.timeout(20):
            while True:
                raw = await proc.stderr.readline()
                if not raw:
                    pytest.fail("cortex serve exited before listening:\n" + "".join(lines))
                lines.append(raw.decode())
                if "cortex listening on" in lines[-1]:
                    break

        async def drain() -> None:
            assert proc.stderr is not None
            async for raw in proc.stderr:
                lines.append(raw.decode())

        drains.append(asyncio.create_task(drain()))
        return Served(proc, f"http://127.0.0.1:{port}", port, lines)

    yield start
    for p in procs:
        if p.returncode is None:
            p.kill()
            await p.wait()
    for d in drains:
        d.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await d


async def test_sigterm_lets_the_stream_finish_refuses_new_connections_exits_0(
    serve_factory: ServeFactory, fake: FakeNeuron
) -> None:
    fake.stream_chunks = 10
    fake.stream_delay = 0.2
    served = await serve_factory(fake, 15)
    async with aiohttp.ClientSession() as session:
        resp = await session.post(served.url + "/v1/chat/completions", json=CHAT)
        assert resp.status == 200
        assert resp.headers["x-helexa-node"] == "mock-node"
        first = await resp.content.readline()
        assert first.startswith(b'data: {"id"')

        sent_at = time.monotonic()
        served.proc.send_signal(signal.SIGTERM)
        refused = await connect_refused(served.port, within=1.5)
        refused_at = time.monotonic()
        assert refused, "cortex kept accepting connections after SIGTERM"

        rest = await resp.content.read()
        finished_at = time.monotonic()
    body = first + rest
    assert refused_at < finished_at  # refused while the stream was still running
    assert body.endswith(b"data: [DONE]\n\n")
    for i in range(10):
        assert f'"content":"token{i}"'.encode() in body
    assert b"upstream_connection_error" not in body
    assert fake.cancelled == []

    rc = await asyncio.wait_for(served.proc.wait(), 15)
    assert rc == 0, "".join(served.stderr)
    assert time.monotonic() - sent_at < 15


async def test_sigterm_with_nothing_in_flight_exits_promptly(
    serve_factory: ServeFactory, fake: FakeNeuron
) -> None:
    served = await serve_factory(fake, 30)
    async with aiohttp.ClientSession() as session:
        r = await session.get(served.url + "/health")
        assert (await r.json())["nodes"] == {"healthy": 1, "total": 1}
    t0 = time.monotonic()
    served.proc.send_signal(signal.SIGTERM)
    rc = await asyncio.wait_for(served.proc.wait(), 10)
    assert rc == 0
    assert time.monotonic() - t0 < 10  # no idle wait for the 30 s grace


async def test_stream_longer_than_the_grace_is_cut_and_exit_is_still_0(
    serve_factory: ServeFactory, fake: FakeNeuron
) -> None:
    fake.stream_chunks = 40
    fake.stream_delay = 0.25  # a 10 s stream against a 1 s grace
    served = await serve_factory(fake, 1)
    async with aiohttp.ClientSession() as session:
        resp = await session.post(served.url + "/v1/chat/completions", json=CHAT)
        assert resp.status == 200
        await resp.content.readline()
        t0 = time.monotonic()
        served.proc.send_signal(signal.SIGTERM)
        rc = await asyncio.wait_for(served.proc.wait(), 8)
        elapsed = time.monotonic() - t0
        with contextlib.suppress(aiohttp.ClientError):
            await resp.content.read()
    assert rc == 0, "".join(served.stderr)
    assert elapsed < 6
