"""Records every request a real client sends to cortex, as an aiohttp middleware.

Third-party clients (Claude Code, SDKs) send requests nobody here wrote; when one fails, the
test prints what was actually sent.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web
from multidict import CIMultiDict

from rig.fake_neuron import Handler


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    query: str
    headers: CIMultiDict[str]
    body: bytes
    status: int


class Recorder:
    def __init__(self) -> None:
        self.seen: list[Seen] = []

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        body = await request.read()  # aiohttp keeps it: the handler reads it again
        status = 0
        try:
            resp = await handler(request)
            status = resp.status
            return resp
        except web.HTTPException as e:
            status = e.status
            raise
        finally:
            self.seen.append(
                Seen(
                    request.method,
                    request.path,
                    request.query_string,
                    CIMultiDict(request.headers),
                    body,
                    status,
                )
            )

    def paths(self, method: str = "POST") -> list[str]:
        return [s.path for s in self.seen if s.method == method]

    def dump(self, limit: int = 2000) -> str:
        """Every request, one block each, bodies cut at `limit` bytes: for failure messages."""
        out = []
        for s in self.seen:
            query = f"?{s.query}" if s.query else ""
            head = "\n".join(f"  {k}: {v}" for k, v in s.headers.items())
            out.append(f"{s.method} {s.path}{query} -> {s.status}\n{head}\n  {s.body[:limit]!r}")
        return "\n\n".join(out)
