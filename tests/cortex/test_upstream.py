"""cortex's hot-path HTTP client (cortex/upstream.py) against real servers on 127.0.0.1: keep-alive
reuse, bodies framed every way HTTP/1.1 allows, back-pressure, and each failure as the proxy
expects it (the proxy-level behaviour is covered by test_failover / test_streaming)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from helexa.cortex.upstream import IDLE_SECS, UpstreamConnectError, UpstreamPool
from rig.cortex_rig import Cortex
from rig.net import free_port

BIG = bytes(range(256)) * 8192  # 2 MiB: well past the pause threshold


@pytest.fixture
async def server() -> AsyncIterator[tuple[str, list[tuple[str, int]]]]:
    """An aiohttp server that records each request's client address."""
    peers: list[tuple[str, int]] = []

    async def echo(request: web.Request) -> web.StreamResponse:
        peers.append(request.transport.get_extra_info("peername"))  # type: ignore[union-attr]
        body = await request.read()
        if request.path == "/big":
            return web.Response(body=BIG)
        if request.path == "/chunked":
            resp = web.StreamResponse()
            await resp.prepare(request)
            for part in (b"one ", b"two ", b"three"):
                await resp.write(part)
            await resp.write_eof()
            return resp
        return web.json_response(
            {"body": body.decode(), "xid": request.headers.get("x-request-id")}
        )

    app = web.Application()
    app.router.add_post("/{tail:.*}", echo)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}", peers
    await runner.cleanup()


async def raw_server(reply: bytes, then_close: bool = True) -> tuple[str, asyncio.Server]:
    """A server that answers any request with `reply` bytes as they are."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(reply)
        await writer.drain()
        if then_close:
            writer.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    return f"http://127.0.0.1:{srv.sockets[0].getsockname()[1]}", srv


async def test_sequential_requests_share_one_kept_alive_connection(
    server: tuple[str, list[tuple[str, int]]],
) -> None:
    url, peers = server
    pool = UpstreamPool(2, 10)
    for i in range(3):
        r = await pool.post(url + "/v1/x", f"req{i}".encode(), {"x-request-id": f"id{i}"})
        assert r.status == 200
        assert r.headers["content-type"] == "application/json; charset=utf-8"
        assert await r.read() == f'{{"body": "req{i}", "xid": "id{i}"}}'.encode()
        r.close()
        r.close()  # idempotent: the connection goes back to the pool once
    assert len(set(peers)) == 1
    assert len(pool.idle[("127.0.0.1", int(url.rsplit(":", 1)[1]), False)]) == 1
    pool.close()


async def test_a_reply_left_unread_closes_its_connection(
    server: tuple[str, list[tuple[str, int]]],
) -> None:
    url, peers = server
    pool = UpstreamPool(2, 10)
    r = await pool.post(url + "/big", b"", {})
    assert await r.content.readany()  # some, not all
    r.close()
    r = await pool.post(url + "/v1/x", b"again", {})
    assert (await r.read()).startswith(b'{"body": "again"')
    r.close()
    assert len(set(peers)) == 2
    pool.close()


async def test_chunked_body_streams_and_large_body_survives_back_pressure(
    server: tuple[str, list[tuple[str, int]]],
) -> None:
    url, _ = server
    pool = UpstreamPool(2, 10)
    r = await pool.post(url + "/chunked", b"", {})
    assert r.content_length is None
    assert b"".join([c async for c in r.content.iter_any()]) == b"one two three"
    r.close()
    r = await pool.post(url + "/big", b"", {})
    assert r.content_length == len(BIG)
    assert await r.read() == BIG  # read through pauses at 256 KiB buffered
    r.close()
    pool.close()


async def test_a_body_ended_by_the_connection_closing_is_complete() -> None:
    url, srv = await raw_server(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nuntil eof")
    pool = UpstreamPool(2, 10)
    r = await pool.post(url, b"", {})
    assert (r.status, r.reason) == (200, "OK")
    assert await r.read() == b"until eof"
    r.close()
    assert not pool.idle.get(("127.0.0.1", int(url.rsplit(":", 1)[1]), False))
    srv.close()


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        (b"", aiohttp.ServerDisconnectedError),  # closed before any byte
        (b"NOT HTTP AT ALL\r\n\r\n", aiohttp.ClientPayloadError),
    ],
)
async def test_failures_before_headers_use_aiohttps_types(
    reply: bytes, error: type[Exception]
) -> None:
    url, srv = await raw_server(reply)
    pool = UpstreamPool(2, 10)
    with pytest.raises(error):
        await pool.post(url, b"{}", {})
    srv.close()


async def test_a_body_cut_short_is_a_payload_error() -> None:
    url, srv = await raw_server(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly this")
    pool = UpstreamPool(2, 10)
    r = await pool.post(url, b"", {})
    with pytest.raises(aiohttp.ClientPayloadError):
        await r.read()
    r.close()
    srv.close()


async def test_stalls_time_out_and_refusals_are_connect_errors() -> None:
    url, srv = await raw_server(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nab", then_close=False)
    pool = UpstreamPool(2, 0.2)
    r = await pool.post(url, b"", {})
    with pytest.raises(TimeoutError):
        await r.read()
    r.close()
    srv.close()
    with pytest.raises(UpstreamConnectError):
        await pool.post(f"http://127.0.0.1:{free_port()}/", b"", {})


async def test_a_header_with_a_newline_is_refused() -> None:
    pool = UpstreamPool(2, 10)
    with pytest.raises(ValueError, match="newline"):
        await pool.post("http://127.0.0.1:9/", b"", {"x-a": "b\r\nx-injected: 1"})


async def test_connections_idle_too_long_are_closed_not_reused(
    server: tuple[str, list[tuple[str, int]]],
) -> None:
    url, peers = server
    pool = UpstreamPool(2, 10)
    replies = await asyncio.gather(*(pool.post(url + "/v1/x", b"", {}) for _ in range(2)))
    for r in replies:
        await r.read()
        r.close()
    (key,) = pool.idle
    old, newer = pool.idle[key]
    old.idle_since -= IDLE_SECS + 1
    r = await pool.post(url + "/v1/x", b"", {})  # the newer one, then released: `old` goes
    await r.read()
    r.close()
    assert pool.idle[key] == [newer]
    assert old.transport is None
    newer.idle_since -= IDLE_SECS + 1
    r = await pool.post(url + "/v1/x", b"", {})  # nothing fresh left: a new connection
    await r.read()
    r.close()
    assert len(set(peers)) == 3
    pool.close()


async def test_cortex_keeps_one_connection_alive_per_neuron_across_requests(
    cortex: Cortex,
) -> None:
    chat = {"model": "test-model", "messages": [{"role": "user", "content": "hi"}]}
    async with aiohttp.ClientSession() as client:
        for stream in (False, True, False):
            async with client.post(
                cortex.base + "/chat/completions", json=chat | {"stream": stream}
            ) as r:
                assert r.status == 200
                await r.read()
    assert [len(conns) for conns in cortex.gw.upstream.idle.values()] == [1]
