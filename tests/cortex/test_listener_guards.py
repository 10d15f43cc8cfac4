"""Connection safety of the listener `cortex serve` runs (issue 11, items 4 and 5): a request
head or body trickled byte by byte, too many open connections, a client that never reads.

Each test runs the real `serve()` (the guarded runner and site production uses) on a loopback
port and attacks it over raw sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from helexa.config.cortex import load_settings
from helexa.cortex.serve import serve
from rig.cli_rig import clean_env, console_script
from rig.cortex_rig import NODE_TOKEN
from rig.fake_neuron import FakeNeuron, content_delta
from rig.net import free_port
from rig.toml import write_toml

KEY = "sk-guard"
AUTH = {"authorization": f"Bearer {KEY}"}
Serve = Callable[..., Awaitable[str]]


@pytest.fixture
async def served(tmp_path: Path, fake: FakeNeuron) -> AsyncIterator[Serve]:
    """`await served(**gateway_settings)` → the URL of a running `serve()` in front of `fake`."""
    runs: list[tuple[asyncio.Event, asyncio.Task[None]]] = []

    async def start(**gateway: Any) -> str:
        d = tmp_path / f"c{len(runs)}"
        d.mkdir()
        cfg = {
            "gateway": {"listen": "127.0.0.1:0", "metrics_listen": "127.0.0.1:0", **gateway},
            "neurons": [{"name": "mock-node", "endpoint": fake.url, "token": NODE_TOKEN}],
            "entitlements": {
                "require_auth": True,
                "ledger_path": "",
                "keys": [{"key": KEY, "account_id": "acct"}],
            },
        }
        write_toml(d / "cortex.toml", cfg)
        write_toml(d / "models.toml", {})
        settings = load_settings(d / "cortex.toml", explicit=True, environ={})
        stop = asyncio.Event()
        bound: asyncio.Future[tuple[int, int]] = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(serve(settings, stop, bound=bound))
        runs.append((stop, task))
        await asyncio.wait([bound, task], return_when=asyncio.FIRST_COMPLETED)  # type: ignore[type-var]
        if task.done():
            task.result()  # serve failed to start: raise its error
        return f"http://127.0.0.1:{bound.result()[0]}"

    yield start
    for stop, task in runs:
        stop.set()
        await task


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


async def _closed(reader: asyncio.StreamReader) -> bool:
    """True once the server closed (or reset) the connection; reads through any reply."""
    try:
        while await reader.read(65536):
            pass
    except ConnectionError:
        pass
    return True


async def _trickle(writer: asyncio.StreamWriter, data: bytes, every: float) -> None:
    """The attack itself: one byte at a time, `every` seconds apart, until refused."""
    with contextlib.suppress(ConnectionError):
        for i in range(len(data)):
            writer.write(data[i : i + 1])
            await writer.drain()
            await asyncio.sleep(every)


async def test_a_trickled_request_head_is_closed_at_the_header_deadline(served: Serve) -> None:
    url = await served(header_timeout_secs=1)
    reader, writer = await asyncio.open_connection("127.0.0.1", _port(url))
    head = b"GET /health HTTP/1.1\r\nhost: x\r\n" + b"x-pad: " + b"a" * 200 + b"\r\n\r\n"
    trickle = asyncio.create_task(_trickle(writer, head, 0.1))  # ~24 s to send in full
    try:
        # Without a deadline the server waits for the head as long as bytes keep coming.
        assert await asyncio.wait_for(_closed(reader), 15)
        assert not trickle.done()  # closed by the server, not by the head completing
    finally:
        trickle.cancel()
        writer.close()


async def test_a_trickled_body_gets_408_at_the_body_deadline(served: Serve) -> None:
    url = await served(body_timeout_secs=1)
    reader, writer = await asyncio.open_connection("127.0.0.1", _port(url))
    body = orjson.dumps({"model": "test-model", "messages": [{"role": "user", "content": "hi"}]})
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        + f"authorization: Bearer {KEY}\r\ncontent-length: {len(body) + 400}\r\n\r\n".encode()
    )
    trickle = asyncio.create_task(_trickle(writer, body + b" " * 400, 0.1))
    try:
        status = await asyncio.wait_for(reader.readline(), 15)
        assert status.startswith(b"HTTP/1.1 408"), status
        rest = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        clen = int(
            next(h for h in rest.split(b"\r\n") if h.lower().startswith(b"content-length")).split(
                b":"
            )[1]
        )
        err = orjson.loads(await reader.readexactly(clen))["error"]
        assert err["code"] == "request_timeout"
    finally:
        trickle.cancel()
        writer.close()


async def test_connections_over_the_cap_get_503_while_open_ones_still_work(
    served: Serve,
) -> None:
    url = await served(max_connections=3)
    async with httpx.AsyncClient(
        timeout=10, limits=httpx.Limits(max_connections=1, max_keepalive_connections=1)
    ) as kept:
        assert (await kept.get(url + "/health")).status_code == 200  # one connection, kept
        idle = [await asyncio.open_connection("127.0.0.1", _port(url)) for _ in range(2)]
        # The cap is full: the next connection is answered 503 and closed, without a request.
        reader, writer = await asyncio.open_connection("127.0.0.1", _port(url))
        reply = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        head, _, body = reply.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503")
        assert b"retry-after: 1" in head.lower()
        err = orjson.loads(body)["error"]
        assert err["code"] == "too_many_connections"
        # The kept-alive connection is unaffected.
        r = await kept.get(url + "/health")
        assert r.status_code == 200
        for _, w in idle:
            w.close()


async def test_a_client_that_never_reads_is_cut_off_and_frees_its_key_slot(
    served: Serve, fake: FakeNeuron
) -> None:
    """The key may run one request at a time; a stream nobody reads must not hold that slot (or
    the node's generation) forever: the write deadline ends it and cancels the upstream."""
    fake.stream_script = [content_delta("x" * 4000) for _ in range(20000)]  # ~80 MB of SSE
    url = await served(write_timeout_secs=1, max_in_flight_per_key=1)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", _port(url)))
    body = orjson.dumps(
        {"model": "test-model", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    )
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        + f"authorization: Bearer {KEY}\r\ncontent-length: {len(body)}\r\n\r\n".encode()
        + body
    )
    try:
        # ... and never reads. The upstream request is cancelled once cortex gives up on it.
        await asyncio.wait_for(fake.cancel_event.wait(), 30)
        fake.stream_script = None
        async with httpx.AsyncClient(timeout=10) as client:
            r = await client.post(
                url + "/v1/chat/completions",
                json={"model": "test-model", "messages": [{"role": "user", "content": "hi"}]},
                headers=AUTH,
            )
        assert r.status_code == 200  # the key's one slot is free again
    finally:
        sock.close()


async def test_the_key_cap_answers_429_with_retry_after(served: Serve, fake: FakeNeuron) -> None:
    fake.stream_script = [content_delta(f"t{i}") for i in range(50)]
    fake.stream_delay = 0.2
    url = await served(max_in_flight_per_key=2)
    chat = {"model": "test-model", "stream": True, "messages": [{"role": "user", "content": "x"}]}
    async with httpx.AsyncClient(timeout=30) as client:
        streams = [
            client.stream("POST", url + "/v1/chat/completions", json=chat, headers=AUTH)
            for _ in range(2)
        ]
        open_ = [await s.__aenter__() for s in streams]
        readers = [r.aiter_raw() for r in open_]  # kept: a dropped iterator closes its stream
        try:
            for r, chunks in zip(open_, readers, strict=True):
                assert r.status_code == 200
                assert await chunks.__anext__()  # the stream is under way
            third = await client.post(url + "/v1/chat/completions", json=chat, headers=AUTH)
            assert third.status_code == 429
            assert third.headers["retry-after"] == "1"
            assert third.json()["error"]["code"] == "rate_limit_exceeded"
        finally:
            for s in streams:
                await s.__aexit__(None, None, None)


FD_LIMIT = 320  # the child's open-file limit, soft and hard: it cannot raise it


def _low_fd_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, FD_LIMIT))


async def test_under_a_file_limit_a_flood_of_connections_gets_503s_not_resets(
    tmp_path: Path, fake: FakeNeuron
) -> None:
    """More idle connections than the process has descriptors: without a cap inside the file
    limit, accept() fails and honest clients are reset or hang; with it they get a 503 envelope,
    and are served again once the flood leaves."""
    port, metrics_port = free_port(), free_port()
    cfg = tmp_path / "cortex.toml"
    write_toml(
        cfg,
        {
            "gateway": {
                "listen": f"127.0.0.1:{port}",
                "metrics_listen": f"127.0.0.1:{metrics_port}",
                "header_timeout_secs": 60,  # the flood stays for the whole test
            },
            "neurons": [{"name": "mock-node", "endpoint": fake.url, "token": NODE_TOKEN}],
        },
    )
    proc = await asyncio.create_subprocess_exec(
        console_script("cortex"),
        "serve",
        "--config",
        str(cfg),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env=clean_env(drop=("HELEXA_API_KEY",), drop_prefixes=("CORTEX_",)),
        preexec_fn=_low_fd_limit,
    )
    flood: list[socket.socket] = []
    try:
        assert proc.stderr is not None
        async with asyncio.timeout(30):
            while b"cortex listening on" not in (line := await proc.stderr.readline()):
                assert line, "cortex serve exited before listening"
        for _ in range(FD_LIMIT + 50):
            s = socket.socket()
            s.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                s.connect(("127.0.0.1", port))
            flood.append(s)
        async with httpx.AsyncClient(timeout=10) as client:
            r = await client.get(f"http://127.0.0.1:{port}/health")
            assert r.status_code == 503
            assert r.json()["error"]["code"] == "too_many_connections"
            for s in flood:
                s.close()
            flood.clear()
            for _ in range(100):  # until cortex has seen the flood leave
                with contextlib.suppress(httpx.TransportError):
                    r = await client.get(f"http://127.0.0.1:{port}/health")
                    if r.status_code == 200:
                        break
                await asyncio.sleep(0.05)
            assert r.status_code == 200
    finally:
        for s in flood:
            s.close()
        proc.kill()
        await proc.wait()
