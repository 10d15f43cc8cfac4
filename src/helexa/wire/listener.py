"""Listener guards cortex and neuron share, which aiohttp lacks: a cap on open connections
(kept within the open-file limit) and a deadline on writes a client never reads.

The request head's deadline is aiohttp's own `keepalive_timeout` (`runner_options`): its timer
starts when a connection opens and again after each reply, trickled header bytes don't restart
it, and it closes a connection still waiting for a complete head. A body's deadline is
`http.read_body`'s.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from typing import Any, cast

import orjson
from aiohttp import web

log = logging.getLogger("helexa.listener")

RETRY_AFTER_SECS = 1

FD_RESERVE = 256  # files, the ledger, polls, the metrics listener: beside the connections


def connection_cap(wanted: int) -> int:
    """`wanted`, within the file limit: each client connection may need an upstream one too,
    and a listener out of descriptors can't even refuse (clients are reset). The soft limit is
    raised as far as the hard one allows first."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 2 * wanted + FD_RESERVE
    if soft == resource.RLIM_INFINITY or soft >= need:
        return wanted
    raised = need if hard == resource.RLIM_INFINITY else min(need, hard)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
        soft = raised
    except (ValueError, OSError):
        pass
    cap = min(wanted, max(1, (soft - FD_RESERVE) // 2))
    if cap < wanted:
        log.warning(
            "open-file limit %d allows %d connections, not max_connections = %d", soft, cap, wanted
        )
    return cap


def runner_options(header_timeout: float) -> dict[str, Any]:
    """AppRunner keyword arguments: the head deadline, and no lingering over an unread body."""
    return {"keepalive_timeout": header_timeout, "lingering_time": 1.0}


def _busy_reply() -> bytes:
    body = orjson.dumps(
        {
            "error": {
                "message": "too many open connections; retry shortly",
                "type": "server_error",
                "param": None,
                "code": "too_many_connections",
            }
        }
    )
    head = (
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
        f"retry-after: {RETRY_AFTER_SECS}\r\nconnection: close\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


BUSY = _busy_reply()


class _Busy(asyncio.Protocol):
    """A connection over the cap: answered 503 at once and closed, never parsed."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        t = cast(asyncio.Transport, transport)
        t.write(BUSY)
        t.close()


class _Guarded(asyncio.Protocol):
    """aiohttp's protocol, counted, and aborted when its writes stay blocked too long."""

    __slots__ = ("inner", "site", "stuck", "transport")

    def __init__(self, inner: asyncio.Protocol, site: GuardedSite) -> None:
        self.inner = inner
        self.site = site
        self.stuck: asyncio.TimerHandle | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        loop = asyncio.get_running_loop()
        self.stuck = loop.call_later(self.site.write_timeout, self._abort)
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.stuck is not None:
            self.stuck.cancel()
            self.stuck = None
        self.inner.resume_writing()

    def _abort(self) -> None:
        self.stuck = None
        if self.transport is not None:
            self.transport.abort()  # connection_lost follows: the handler is cancelled

    def connection_lost(self, exc: Exception | None) -> None:
        self.site.open -= 1
        self.transport = None
        if self.stuck is not None:
            self.stuck.cancel()
            self.stuck = None
        self.inner.connection_lost(exc)


class GuardedSite(web.BaseSite):
    """A TCP site that serves at most `max_connections` at once, within the file limit (the
    next gets a 503 and is closed), and aborts a connection whose writes make no progress for
    `write_timeout` s."""

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        *,
        max_connections: int,
        write_timeout: float,
        backlog: int = 1024,
    ) -> None:
        super().__init__(runner, backlog=backlog)
        self.host = host
        self.requested_port = port
        self.max_connections = connection_cap(max_connections)
        self.write_timeout = write_timeout
        self.open = 0
        self.server = runner.server
        self.listener: asyncio.Server | None = None

    @property
    def name(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def port(self) -> int:
        """The bound port (the requested one before start)."""
        if self.listener is not None and self.listener.sockets:
            return int(self.listener.sockets[0].getsockname()[1])
        return self.requested_port

    def _protocol(self) -> asyncio.Protocol:
        if self.open >= self.max_connections:
            return _Busy()
        assert self.server is not None
        self.open += 1
        return _Guarded(self.server(), self)

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        self.listener = await loop.create_server(
            self._protocol, self.host, self.requested_port, backlog=self._backlog
        )
        self._server = self.listener  # BaseSite.stop closes it
