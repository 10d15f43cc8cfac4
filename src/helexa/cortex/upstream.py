"""A lean HTTP/1.1 client for the inference hot path: pooled keep-alive connections per neuron,
parsed by httptools.

aiohttp's ClientSession builds a dozen objects per request; at concurrency 1 that was a third of
cortex's added latency (bench/gateway_overhead.py). This client writes one buffer per request
and parses with llhttp. Its response offers the slice of aiohttp's ClientResponse that the proxy
uses, and it fails with aiohttp's exception types, so the failover and envelope logic is shared.
Control-plane calls (polls, loads) stay on aiohttp.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import time
from collections.abc import AsyncIterator
from functools import lru_cache
from typing import cast
from urllib.parse import urlsplit

import aiohttp
import httptools
from multidict import CIMultiDict, CIMultiDictProxy

IDLE_SECS = 15.0  # well under aiohttp's server keep-alive (75 s), so a reused socket is alive
HIGH_WATER = 256 * 1024  # buffered body bytes before reading from the neuron pauses


class UpstreamConnectError(aiohttp.ClientConnectionError):
    """The neuron could not be connected to (refused, unreachable, name lookup failed)."""


@lru_cache(maxsize=256)
def _split(url: str) -> tuple[tuple[str, int, bool], bytes, bytes]:
    """(host, port, tls), the request target and the Host header value of a URL."""
    u = urlsplit(url)
    tls = u.scheme == "https"
    host = u.hostname or ""
    port = u.port or (443 if tls else 80)
    target = (u.path or "/") + (f"?{u.query}" if u.query else "")
    return (host, port, tls), target.encode(), u.netloc.encode()


def _request(target: bytes, host: bytes, headers: dict[str, str], body: bytes) -> bytes:
    lines = [b"POST ", target, b" HTTP/1.1\r\nhost: ", host, b"\r\n"]
    for k, v in headers.items():
        if "\r" in v or "\n" in v:
            raise ValueError(f"newline in the value of header {k!r}")
        lines += (k.encode(), b": ", v.encode("utf-8", "surrogateescape"), b"\r\n")
    lines += (b"content-length: ", str(len(body)).encode(), b"\r\n\r\n", body)
    return b"".join(lines)


class Body:
    """The response body as it arrives: `readany`, `iter_any` and `read`, like aiohttp's."""

    __slots__ = ("_buf", "_conn", "_eof", "_exc", "_size", "_waiter")

    def __init__(self, conn: _Conn) -> None:
        self._conn = conn
        self._buf: collections.deque[bytes] = collections.deque()
        self._size = 0
        self._eof = False
        self._exc: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    def _feed(self, data: bytes) -> None:
        self._buf.append(data)
        self._size += len(data)
        if self._size > HIGH_WATER:
            self._conn.pause()
        self._wake()

    def _end(self, exc: BaseException | None = None) -> None:
        self._eof = True
        self._exc = exc
        self._wake()

    async def readany(self) -> bytes:
        """What has arrived (waiting for something), or b"" at the end of the body."""
        while not self._buf:
            if self._exc is not None:
                raise self._exc
            if self._eof:
                return b""
            self._waiter = self._conn.loop.create_future()
            try:
                async with asyncio.timeout(self._conn.read_timeout):
                    await self._waiter
            finally:
                self._waiter = None
        if len(self._buf) == 1:
            data = self._buf.popleft()
        else:
            data = b"".join(self._buf)
            self._buf.clear()
        self._size = 0
        self._conn.resume()
        return data

    async def iter_any(self) -> AsyncIterator[bytes]:
        while chunk := await self.readany():
            yield chunk

    async def read(self) -> bytes:
        parts = [chunk async for chunk in self.iter_any()]
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def unread(self, data: bytes) -> None:
        """Put back what `read` returned, so a body looked into is relayed whole after all."""
        self._buf.appendleft(data)
        self._size += len(data)


class Response:
    """Status and headers of an upstream reply; the body streams through `content`."""

    __slots__ = ("_closed", "_conn", "content", "content_length", "headers", "reason", "status")

    def __init__(self, conn: _Conn, status: int, reason: str, headers: CIMultiDict[str]) -> None:
        self._conn = conn
        self._closed = False
        self.status = status
        self.reason = reason
        self.headers = CIMultiDictProxy(headers)
        clen = headers.get("content-length")
        self.content_length = int(clen) if clen is not None and clen.isdigit() else None
        self.content = conn.body

    async def read(self) -> bytes:
        return await self.content.read()

    def close(self) -> None:
        """Back to the pool when the reply was read whole and may be kept alive; else closed."""
        if not self._closed:
            self._closed = True
            self._conn.done()


class _Conn(asyncio.Protocol):
    """One keep-alive connection; serves one request at a time."""

    def __init__(self, pool: UpstreamPool, key: tuple[str, int, bool]) -> None:
        self.pool = pool
        self.key = key
        self.loop = asyncio.get_running_loop()
        self.read_timeout = pool.read_timeout
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.idle_since = 0.0
        self.paused = False
        self.complete = True
        self.keep_alive = False
        self._head: asyncio.Future[Response] | None = None
        self._headers: CIMultiDict[str] = CIMultiDict()
        self._reason = ""
        self.body = Body(self)

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as e:
            self._fail(aiohttp.ClientPayloadError(f"malformed reply from upstream: {e}"))
            self.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.complete or self.body._eof:
            return
        if self._head is not None and not self._head.done():
            self._head.set_exception(aiohttp.ServerDisconnectedError())
        elif self.parser.get_status_code() and not self._framed():
            self._on_end()  # a body delimited by the connection closing
        else:
            self._fail(aiohttp.ClientPayloadError("upstream connection lost mid-body"))

    # -- httptools callbacks --------------------------------------------------------------------

    def on_status(self, reason: bytes) -> None:
        self._reason = reason.decode("latin-1")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.add(name.decode("latin-1"), value.decode("latin-1"))

    def on_headers_complete(self) -> None:
        head = self._head
        resp = Response(self, self.parser.get_status_code(), self._reason, self._headers)
        if head is not None and not head.done():
            head.set_result(resp)

    def on_body(self, data: bytes) -> None:
        self.body._feed(data)

    def on_message_complete(self) -> None:
        self.keep_alive = self.parser.should_keep_alive()  # only valid until the next message
        self._on_end()

    # -- requests -------------------------------------------------------------------------------

    def _framed(self) -> bool:
        h = self._headers
        return "content-length" in h or "chunked" in h.get("transfer-encoding", "").lower()

    def _on_end(self) -> None:
        self.complete = True
        self.body._end()

    def _fail(self, exc: BaseException) -> None:
        if self._head is not None and not self._head.done():
            self._head.set_exception(exc)
        self.body._end(exc)

    async def send(self, data: bytes) -> Response:
        assert self.transport is not None
        self.complete = self.keep_alive = False
        self._headers = CIMultiDict()
        self.body = Body(self)
        self._head = head = self.loop.create_future()
        self.transport.write(data)
        try:
            async with asyncio.timeout(self.read_timeout):
                return await head
        except BaseException:
            self.abort()
            raise
        finally:
            self._head = None

    def pause(self) -> None:
        if not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.paused and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()

    def done(self) -> None:
        if self.complete and self.keep_alive and self.transport is not None:
            self.resume()
            self.idle_since = time.monotonic()
            self.pool.release(self)
        else:
            self.abort()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()
            self.transport = None


class UpstreamPool:
    """Idle connections per (host, port, tls), newest first; no cap, like cortex's aiohttp pool."""

    def __init__(self, connect_timeout: float, read_timeout: float) -> None:
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.idle: dict[tuple[str, int, bool], list[_Conn]] = {}
        self._tls: ssl.SSLContext | None = None

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> Response:
        """Send a POST and return once the reply's headers are in. Raises UpstreamConnectError,
        aiohttp.ConnectionTimeoutError, aiohttp.ServerDisconnectedError, TimeoutError."""
        key, target, host = _split(url)
        data = _request(target, host, headers, body)
        conn = self._reuse(key) or await self._connect(key)
        return await conn.send(data)

    def _reuse(self, key: tuple[str, int, bool]) -> _Conn | None:
        conns = self.idle.get(key)
        stale = time.monotonic() - IDLE_SECS
        while conns:
            conn = conns.pop()
            if conn.transport is not None and conn.idle_since > stale:
                return conn
            conn.abort()
        return None

    async def _connect(self, key: tuple[str, int, bool]) -> _Conn:
        host, port, tls = key
        if tls and self._tls is None:
            self._tls = ssl.create_default_context()
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: _Conn(self, key), host, port, ssl=self._tls if tls else None
                )
        except TimeoutError:
            raise aiohttp.ConnectionTimeoutError(
                f"connecting to {host}:{port} timed out after {self.connect_timeout:g}s"
            ) from None
        except OSError as e:
            raise UpstreamConnectError(f"cannot connect to {host}:{port}: {e}") from e
        return conn

    def release(self, conn: _Conn) -> None:
        conns = self.idle.setdefault(conn.key, [])
        stale = conn.idle_since - IDLE_SECS
        while conns and conns[0].idle_since <= stale:  # oldest first: close what outlived use
            conns.pop(0).abort()
        conns.append(conn)

    def close(self) -> None:
        for conns in self.idle.values():
            for conn in conns:
                conn.abort()
        self.idle.clear()
