"""The protocol on stdin/stdout, and nothing else on stdout.

fd 1 is handed to the protocol writer alone and re-pointed at stderr, so a stray print, a library
warning or a child process can never corrupt the stream. Lines that aren't JSON-RPC get the
JSON-RPC error the spec names (the SDK would only log them), and `session/set_model` — no longer
in the SDK's router — is answered for older Zed builds.
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import sys
from typing import Any, cast

import orjson
from acp import Agent, RequestError
from acp.agent.connection import AgentSideConnection
from pydantic import ValidationError

from helexa.acp.agent import HelexaAgent

log = logging.getLogger("helexa.acp.stdio")
LINE_LIMIT = 50 * 1024 * 1024  # a prompt with embedded files or images is one line


def claim_stdout() -> int:
    """A private duplicate of fd 1 for the protocol; fd 1 itself now writes to stderr."""
    sys.stdout.flush()
    fd = os.dup(1)
    os.dup2(2, 1)
    return fd


class LineTransport:
    """Newline-delimited JSON-RPC over asyncio streams (the SDK's `Transport` shape)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    async def send(self, message: dict[str, Any]) -> None:
        self._writer.write(orjson.dumps(message) + b"\n")
        await self._writer.drain()

    async def receive(self) -> dict[str, Any] | None:
        while True:
            try:
                line = await self._reader.readuntil(b"\n")
            except asyncio.IncompleteReadError as e:
                line = e.partial
                if not line:
                    return None
            except asyncio.LimitOverrunError:
                await self._skip_line()
                await self._error(None, RequestError.invalid_request({"message": "line too long"}))
                continue
            if not line.strip():
                continue
            try:
                msg = orjson.loads(line)
            except orjson.JSONDecodeError as e:
                await self._error(None, RequestError.parse_error({"message": str(e)}))
                continue
            if isinstance(msg, dict) and (
                isinstance(msg.get("method"), str)
                or ("id" in msg and msg.keys() & {"result", "error"})
            ):
                return msg
            rid = msg.get("id") if isinstance(msg, dict) else None
            detail = "expected a JSON-RPC request, notification or response object"
            await self._error(rid, RequestError.invalid_request({"message": detail}))

    async def close(self) -> None:
        self._writer.close()

    async def _error(self, rid: Any, err: RequestError) -> None:
        log.warning("bad input from the client: %s %s", err, err.data)
        if not isinstance(rid, (str, int)) or isinstance(rid, bool):
            rid = None
        await self.send({"jsonrpc": "2.0", "id": rid, "error": err.to_error_obj()})

    async def _skip_line(self) -> None:
        while True:
            try:
                await self._reader.readuntil(b"\n")
                return
            except asyncio.LimitOverrunError as e:
                await self._reader.readexactly(e.consumed)
            except asyncio.IncompleteReadError:
                return


class _FileWriter:
    """StreamWriter's shape over a regular file (stdout redirected to a file, not a pipe)."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def write(self, data: bytes) -> None:
        while data:
            data = data[os.write(self._fd, data) :]

    async def drain(self) -> None:
        return None

    def close(self) -> None:
        os.close(self._fd)


def _is_file(fd: int) -> bool:
    return stat.S_ISREG(os.fstat(fd).st_mode)


async def open_stdio(out_fd: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Pipes (what an editor gives) through the event loop; regular files read or written
    directly, since asyncio's pipe transports refuse them."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=LINE_LIMIT)
    if _is_file(sys.stdin.fileno()):
        reader.feed_data(sys.stdin.buffer.read())
        reader.feed_eof()
    else:
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    if _is_file(out_fd):
        return reader, cast(asyncio.StreamWriter, _FileWriter(out_fd))
    pipe = os.fdopen(out_fd, "wb", buffering=0)
    transport, protocol = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin, pipe)
    return reader, asyncio.StreamWriter(transport, protocol, None, loop)


async def serve(
    agent: HelexaAgent, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """Answer the client until it closes stdin."""
    # cast: methods the agent lacks (authenticate, fork, ...) are "method not found" by the router
    conn = AgentSideConnection(cast(Agent, agent), LineTransport(reader, writer), listening=False)
    route = conn._conn._handler  # the SDK's router; 0.12.1 has no public way to add a route

    async def handler(method: str, params: Any, is_notification: bool) -> Any:
        if method == "session/set_model" and not is_notification:
            return await agent.set_model_legacy(params)
        if not is_notification:
            return await route(method, params, is_notification)
        try:  # nobody to answer: one log line, not the SDK's traceback
            return await route(method, params, is_notification)
        except (RequestError, ValidationError) as e:
            log.warning("notification %s ignored: %s", method, str(e).splitlines()[0])
            return None

    conn._conn._handler = handler
    try:
        await conn.listen()
    finally:
        await asyncio.shield(conn.close())
