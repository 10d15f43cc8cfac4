"""A real headless Chromium driven over the DevTools protocol (a websocket via aiohttp).

Tests see what a user's browser renders: they navigate, evaluate JS, wait for a DOM condition
(a MutationObserver in the page, so no polling sleeps) and take screenshots, while every console
error, uncaught exception and JS dialog the page raises is recorded for assertions.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import struct
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from rig.require import require_executable

INSTALL = "Debian: apt-get install chromium"
FLAGS = (
    "--headless",
    "--no-sandbox",  # CI runs as root
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-extensions",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--metrics-recording-only",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
)
WAIT_JS = """(pred, ms) => new Promise((resolve, reject) => {
  const check = () => { try { const v = pred(); if (v) { done(); resolve(v); } } catch (e) {} };
  const obs = new MutationObserver(check);
  const timer = setTimeout(() => { obs.disconnect(); reject(new Error("timed out")); }, ms);
  const done = () => { obs.disconnect(); clearTimeout(timer); };
  obs.observe(document, {subtree: true, childList: true, characterData: true, attributes: true});
  check();
})"""


class CdpError(Exception):
    pass


@dataclass
class Page:
    """One tab, attached with a flat session over the browser's websocket."""

    ws: aiohttp.ClientWebSocketResponse
    session_id: str = ""
    _next: int = 0
    _pending: dict[int, asyncio.Future[Any]] = field(default_factory=dict)
    _loaded: asyncio.Event = field(default_factory=asyncio.Event)
    errors: list[str] = field(default_factory=list)  # console errors, exceptions, log errors
    dialogs: list[str] = field(default_factory=list)  # alert/confirm/prompt messages
    _tasks: set[asyncio.Task[Any]] = field(default_factory=set)

    async def send(self, method: str, params: dict[str, Any] | None = None) -> Any:
        self._next += 1
        msg: dict[str, Any] = {"id": self._next, "method": method, "params": params or {}}
        if self.session_id:
            msg["sessionId"] = self.session_id
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[self._next] = fut
        await self.ws.send_str(json.dumps(msg))
        return await asyncio.wait_for(fut, 30)

    async def read_loop(self) -> None:
        async for raw in self.ws:
            if raw.type != aiohttp.WSMsgType.TEXT:
                break
            msg = json.loads(raw.data)
            if "id" in msg:
                fut = self._pending.pop(msg["id"], None)
                if fut is not None and not fut.done():
                    if "error" in msg:
                        fut.set_exception(CdpError(f"{msg['error']}"))
                    else:
                        fut.set_result(msg.get("result"))
            else:
                self._event(msg.get("method", ""), msg.get("params", {}))
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(CdpError("browser connection closed"))

    def _event(self, method: str, p: dict[str, Any]) -> None:
        if method == "Page.loadEventFired":
            self._loaded.set()
        elif method == "Page.javascriptDialogOpening":
            self.dialogs.append(p.get("message", ""))
            task = asyncio.ensure_future(
                self.send("Page.handleJavaScriptDialog", {"accept": False})
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        elif method == "Runtime.exceptionThrown":
            self.errors.append(json.dumps(p.get("exceptionDetails", {}))[:500])
        elif method == "Runtime.consoleAPICalled" and p.get("type") == "error":
            self.errors.append(json.dumps(p.get("args", []))[:500])
        elif method == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
            self.errors.append(p["entry"].get("text", ""))

    async def goto(self, url: str) -> None:
        self._loaded.clear()
        await self.send("Page.navigate", {"url": url})
        await asyncio.wait_for(self._loaded.wait(), 30)

    async def eval(self, expression: str) -> Any:
        """The value of a JS expression (promises awaited), returned by value."""
        r = await self.send(
            "Runtime.evaluate",
            {"expression": expression, "awaitPromise": True, "returnByValue": True},
        )
        if "exceptionDetails" in r:
            raise CdpError(f"{expression[:80]}: {r['exceptionDetails']}")
        return r["result"].get("value")

    async def wait_for(self, predicate: str, timeout_ms: int = 15000) -> Any:
        """Wait until the JS expression `predicate` is truthy after some DOM change."""
        try:
            return await self.eval(f"({WAIT_JS})(() => ({predicate}), {timeout_ms})")
        except CdpError:
            html = await self.eval("document.body.innerText")
            raise AssertionError(f"never true: {predicate}\npage text:\n{html}") from None

    async def screenshot(self) -> bytes:
        r = await self.send("Page.captureScreenshot", {"format": "png"})
        return base64.b64decode(r["data"])


@contextlib.asynccontextmanager
async def open_page(profile_dir: Path, width: int = 1280, height: int = 900) -> AsyncIterator[Page]:
    """Launch Chromium with a fresh profile, open one blank tab and yield it."""
    exe = require_executable("chromium", "chromium-browser", "google-chrome", install=INSTALL)
    proc = await asyncio.create_subprocess_exec(
        exe,
        *FLAGS,
        f"--user-data-dir={profile_dir}",
        f"--window-size={width},{height}",
        "about:blank",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    drain: asyncio.Task[None] | None = None
    try:
        ws_url = await asyncio.wait_for(_devtools_url(proc), 60)
        # Keep draining stderr so a chatty browser never blocks on a full pipe.
        assert proc.stderr is not None
        drain = asyncio.create_task(_drain(proc.stderr))
        async with (
            aiohttp.ClientSession() as http,
            http.ws_connect(ws_url, max_msg_size=0) as ws,
        ):
            page = Page(ws)
            reader = asyncio.create_task(page.read_loop())
            try:
                target = await page.send("Target.createTarget", {"url": "about:blank"})
                attached = await page.send(
                    "Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}
                )
                page.session_id = attached["sessionId"]
                for domain in ("Page", "Runtime", "Log"):
                    await page.send(f"{domain}.enable")
                await page.send(
                    "Emulation.setDeviceMetricsOverride",
                    {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
                )
                yield page
            finally:
                reader.cancel()
    finally:
        if drain is not None:
            drain.cancel()
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


async def _devtools_url(proc: asyncio.subprocess.Process) -> str:
    """Chromium prints `DevTools listening on ws://...` on stderr once it is ready."""
    assert proc.stderr is not None
    seen = []
    while line := await proc.stderr.readline():
        text = line.decode(errors="replace").strip()
        seen.append(text)
        if text.startswith("DevTools listening on "):
            return text.removeprefix("DevTools listening on ")
    raise RuntimeError("chromium exited before DevTools was up:\n" + "\n".join(seen[-20:]))


async def _drain(stream: asyncio.StreamReader) -> None:
    while await stream.read(65536):
        pass


def png_pixel(png: bytes, x: int, y: int) -> tuple[int, int, int]:
    """The RGB of one pixel of an 8-bit, non-interlaced RGB/RGBA PNG (what Chromium writes)."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, width, height, bpp = 8, b"", 0, 0, 0
    while pos < len(png):
        (length,) = struct.unpack(">I", png[pos : pos + 4])
        kind, data = png[pos + 4 : pos + 8], png[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", data)
            assert depth == 8 and color in (2, 6) and interlace == 0, "unsupported PNG"
            bpp = 3 if color == 2 else 4
        elif kind == b"IDAT":
            idat += data
    raw = zlib.decompress(idat)
    stride = width * bpp
    prev = bytearray(stride)
    for row in range(y + 1):
        start = row * (stride + 1)
        ftype, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        _unfilter(ftype, line, prev, bpp)
        prev = line
    assert 0 <= x < width and 0 <= y < height
    r, g, b = prev[x * bpp : x * bpp + 3]
    return r, g, b


def _unfilter(ftype: int, line: bytearray, prev: bytearray, bpp: int) -> None:
    for i in range(len(line)):
        a = line[i - bpp] if i >= bpp else 0
        b = prev[i]
        c = prev[i - bpp] if i >= bpp else 0
        if ftype == 1:
            line[i] = (line[i] + a) & 0xFF
        elif ftype == 2:
            line[i] = (line[i] + b) & 0xFF
        elif ftype == 3:
            line[i] = (line[i] + (a + b) // 2) & 0xFF
        elif ftype == 4:
            p = a + b - c
            pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
            pred = a if pa <= pb and pa <= pc else b if pb <= pc else c
            line[i] = (line[i] + pred) & 0xFF
