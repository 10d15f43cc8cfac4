"""Sending fuzz cases and judging the replies: what a server must never answer.

Every reply must keep the rules (no 5xx but a 503 with Retry-After, the route's envelope on
every error, in a body or as a stream's error event, a safe x-request-id, small headers); a
request must never go unanswered.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from helexa.wire.sse import SSEDecoder
from rig.fuzzgen import Case
from rig.rawhttp import RawConnection, Reply

# What both servers echo as x-request-id: the caller's when it is short and plain, else a fresh
# one; anything else would be written into logs and other systems as is.
SAFE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


async def settle(held: Callable[[], list[str]], within: float = 5.0) -> list[str]:
    """Wait (bounded) until nothing is held; what still is. Hung-up requests finish on the
    server after the client left, so counters reach 0 a little after the last reply."""
    for _ in range(int(within / 0.01)):
        if not held():
            return []
        await asyncio.sleep(0.01)
    return held()


def check_reply(case: Case, reply: Reply) -> str | None:
    """Why `reply` breaks the rules (a 5xx other than 503 + Retry-After, an error without the
    route's envelope, in the body or as a stream's error event; unparseable JSON), or None."""
    s = reply.status
    big = [f"{k} ({len(v)} bytes)" for k, v in reply.headers.items() if len(v) > 8192]
    if big:
        return f"response headers over 8 KiB: {big}"
    rid = reply.headers.get("x-request-id")
    if rid is not None and not SAFE_REQUEST_ID.fullmatch(rid):
        return f"an x-request-id outside the safe charset: {rid[:80]!r}"
    ctype = reply.headers.get("content-type", "")
    if case.malformed and s == 400 and ctype.startswith("text/"):
        return None
    if s >= 500 and not (s == 503 and "retry-after" in reply.headers):
        return f"status {s}"
    if case.method == "HEAD":
        return None
    if s < 400 and ctype.startswith("text/event-stream"):
        return _check_stream(case, reply.body)
    try:
        body = orjson.loads(reply.body) if s >= 400 or ctype.startswith("application/json") else {}
    except orjson.JSONDecodeError:
        return f"a {s} JSON body that does not parse"
    return _check_envelope(case, body) if s >= 400 else None


def _check_stream(case: Case, raw: bytes) -> str | None:
    for event, data in SSEDecoder().feed(raw):
        if data == b"[DONE]":
            continue
        try:
            frame = orjson.loads(data)
        except orjson.JSONDecodeError:
            return f"a stream frame that is not JSON: {data[:100]!r}"
        if event == "error" or (isinstance(frame, dict) and "error" in frame):
            why = _check_envelope(case, frame)
            if why is not None:
                return f"a stream error event: {why}"
    return None


def _check_envelope(case: Case, env: Any) -> str | None:
    if not isinstance(env, dict) or not isinstance(env.get("error"), dict):
        return "no error object"
    err = env["error"]
    if case.anthropic and "/v1/messages" in case.path:
        if env.get("type") != "error" or not isinstance(err.get("type"), str):
            return "not an Anthropic envelope"
    elif not isinstance(err.get("type"), str) or "code" not in err:
        return "not an OpenAI envelope"
    if not isinstance(err.get("message"), str):
        return "an envelope without a message"
    return None


@dataclass
class FuzzResult:
    statuses: dict[int, int]
    failures: list[tuple[Case, str]]
    sent: int

    def report(self) -> str:
        """One line per (route, reason), with a count and the first case, for the assertion."""
        groups: dict[tuple[str, str], list[Case]] = {}
        for case, why in self.failures:
            route = case.path.split("?")[0][:40]
            groups.setdefault((f"{case.method} {route}", why.split(":")[0]), []).append(case)
        lines = [f"{len(self.failures)} of {self.sent} cases broke the rules:"]
        for (route, why), hits in sorted(groups.items(), key=lambda kv: -len(kv[1])):
            lines.append(f"  {len(hits)} x {route}: {why}; first: {hits[0].describe()}")
        first = {why for _, why in self.failures[:3]}
        return "\n".join([*lines, *(f"  e.g. {w[:400]}" for w in first)])


async def drive(host: str, port: int, todo: Iterator[Case], connections: int = 4) -> FuzzResult:
    """Send every case over `connections` kept-alive sockets at once; check each reply."""
    result = FuzzResult({}, [], 0)

    async def worker() -> None:
        conn = RawConnection(host, port, timeout=10)
        prev = "a fresh connection"
        try:
            for case in todo:
                result.sent += 1
                try:
                    reply = await conn.request(
                        case.method, case.path, case.headers, case.body, hang_up=case.hang_up
                    )
                except (OSError, asyncio.IncompleteReadError, TimeoutError) as e:
                    await conn.close()
                    result.failures.append((case, f"no reply: {e!r} (after {prev})"))
                    prev = "a fresh connection"
                    continue
                if reply is None or reply.closed:
                    prev = "a fresh connection"
                else:
                    prev = f"#{case.n} on this connection"
                if reply is None:
                    continue
                result.statuses[reply.status] = result.statuses.get(reply.status, 0) + 1
                why = check_reply(case, reply)
                if why is not None:
                    result.failures.append((case, f"{why}: {reply.body[:300]!r}"))
        finally:
            await conn.close()

    await asyncio.gather(*(worker() for _ in range(connections)))
    return result
