"""A minimal HTTP/1.1 client over one kept-alive socket, for fuzzing.

Real clients refuse to send what an attacker sends (control characters in headers, non-UTF-8
bytes, a body that lies about its length), and they are slow per request; this one writes the
request bytes exactly as given and reads one response (Content-Length, chunked, or to EOF).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes
    closed: bool = False  # the server closed the connection after this reply


@dataclass
class RawConnection:
    """One keep-alive connection; reconnects when the server closed the last one."""

    host: str
    port: int
    timeout: float = 30.0
    _r: asyncio.StreamReader | None = field(default=None, repr=False)
    _w: asyncio.StreamWriter | None = field(default=None, repr=False)

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._r is None or self._w is None or self._w.is_closing():
            self._r, self._w = await asyncio.open_connection(self.host, self.port, limit=2**20)
        return self._r, self._w

    async def close(self) -> None:
        if self._w is not None:
            self._w.close()
            try:
                await self._w.wait_closed()
            except (ConnectionError, OSError):
                pass
        self._r = self._w = None

    async def request(
        self,
        method: str,
        path: str,
        headers: list[tuple[bytes, bytes]],
        body: bytes | None,
        *,
        hang_up: bool = False,
    ) -> Reply | None:
        """Send one request; with `hang_up`, close right after the status line (None).

        Like any HTTP client, a request that finds a kept-alive connection already closed by the
        server (no status line) is sent once more on a fresh one."""
        reused = self._w is not None and not self._w.is_closing()
        try:
            return await self._request(method, path, headers, body, hang_up)
        except (ConnectionResetError, BrokenPipeError):
            if not reused:
                raise
            await self.close()
            return await self._request(method, path, headers, body, hang_up)

    async def _request(
        self,
        method: str,
        path: str,
        headers: list[tuple[bytes, bytes]],
        body: bytes | None,
        hang_up: bool,
    ) -> Reply | None:
        r, w = await self._open()
        head = [f"{method} {path} HTTP/1.1".encode(), b"Host: 127.0.0.1"]
        head += [k + b": " + v for k, v in headers]
        if body is not None:
            head.append(b"Content-Length: " + str(len(body)).encode())
        w.write(b"\r\n".join(head) + b"\r\n\r\n" + (body or b""))
        async with asyncio.timeout(self.timeout):
            await w.drain()
            status_line = await r.readline()
            if hang_up:
                await self.close()
                return None
            return await self._read_reply(r, status_line, method == "HEAD")

    async def _read_reply(self, r: asyncio.StreamReader, status_line: bytes, head: bool) -> Reply:
        while True:
            if not status_line:
                raise ConnectionResetError("server closed the connection before a status line")
            status = int(status_line.split(b" ", 2)[1])
            headers: dict[str, str] = {}
            while (line := await r.readline()) not in (b"\r\n", b"\n", b""):
                k, _, v = line.decode("latin-1").partition(":")
                headers[k.strip().lower()] = v.strip()
            if status != 100:
                break
            status_line = await r.readline()
        if head or status in (204, 304):
            body = b""
        elif "content-length" in headers:
            body = await r.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            body = await _read_chunked(r)
        else:
            body = await r.read()
            headers.setdefault("connection", "close")
        closed = status_line.startswith(b"HTTP/1.0") or headers.get("connection", "") == "close"
        if closed:
            await self.close()
        return Reply(status, headers, body, closed)


async def _read_chunked(r: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    while True:
        size = int((await r.readline()).split(b";", 1)[0].strip() or b"0", 16)
        if size == 0:
            while (await r.readline()) not in (b"\r\n", b"\n", b""):
                pass
            return b"".join(parts)
        parts.append(await r.readexactly(size))
        await r.readexactly(2)
