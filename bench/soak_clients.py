"""The soak's clients: one request each loop, classified by what the client could see.

Every request ends in exactly one outcome:

- `completed`: 200 and the whole answer (JSON with usage, or a stream to `[DONE]` /
  `message_stop` with its usage);
- `failed`: an error the client was told about: an error status with a JSON envelope, or an
  error event in the stream;
- `cut`: the client hung up on purpose mid-stream;
- `lost`: anything else (a reset, a timeout, a stream that just stops, an error without an
  envelope). The soak passes only with 0 lost.

Token figures per key let the report compare cortex's ledger with what was used:
completed requests add their usage exactly; cut and failed ones add a range (at least the prompt
and the deltas the client saw, at most the prompt plus the output cap).
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from helexa.wire.sse import SSEDecoder

MODEL = "soak-model"
OPEN_UPPER = -1  # the upper bound of a cut request whose prompt count never arrived


@dataclass
class KeyTally:
    completed: int = 0  # usage the neurons reported, summed over completed requests
    low: int = 0  # cut and failed requests: at least this much was used
    high: int = 0  # ... and at most this much (prompt + output cap)
    open_high: int = 0  # cut or failed requests with no prompt count: no upper bound known


@dataclass
class Tally:
    outcomes: Counter[str] = field(default_factory=Counter)
    lost: Counter[str] = field(default_factory=Counter)
    errors_5xx: Counter[str] = field(default_factory=Counter)
    errors_4xx: Counter[str] = field(default_factory=Counter)
    keys: dict[str, KeyTally] = field(default_factory=dict)
    samples: dict[str, bytes] = field(default_factory=dict)  # the first body per lost cause

    def lose(self, cause: str, raw: bytes = b"") -> str:
        self.lost[cause] += 1
        self.samples.setdefault(cause, raw[:300])
        return "lost"

    def key(self, key_id: str) -> KeyTally:
        return self.keys.setdefault(key_id, KeyTally())


@dataclass
class Seen:
    """What one request showed the client."""

    prompt: int | None = None
    deltas: int = 0
    usage: tuple[int, int] | None = None
    done: bool = False
    error: str | None = None


def body(rng: random.Random, anthropic: bool, stream: bool, cap: int) -> dict[str, Any]:
    text = rng.choice(("hello there", "tell me a story " * 8, "{}[]()0123456789!?" * 6))
    msgs = [{"role": "user", "content": text}]
    b: dict[str, Any] = {"model": MODEL, "messages": msgs, "max_tokens": cap, "stream": stream}
    if stream and not anthropic:
        b["stream_options"] = {"include_usage": True}
    return b


def read_frame(seen: Seen, anthropic: bool, event: str | None, data: bytes) -> None:
    if data == b"[DONE]":
        seen.done = True
        return
    obj = orjson.loads(data)
    if event == "error" or ("error" in obj and obj.get("type") in (None, "error")):
        err = obj.get("error") or {}
        seen.error = str(err.get("code") or err.get("type") or "error")
        return
    if anthropic:
        if event == "message_start":
            seen.prompt = obj["message"]["usage"]["input_tokens"]
        elif event == "content_block_delta":
            seen.deltas += 1
        elif event == "message_delta":
            seen.usage = (seen.prompt or 0, obj["usage"]["output_tokens"])
        elif event == "message_stop":
            seen.done = True
        return
    if obj.get("usage"):
        u = obj["usage"]
        seen.usage = (u["prompt_tokens"], u["completion_tokens"])
    for choice in obj.get("choices") or ():
        if (choice.get("delta") or {}).get("content"):
            seen.deltas += 1


def error_cause(status: int, raw: bytes) -> str | None:
    """`status code` from an error envelope (either shape), or None when it is not one."""
    try:
        err = orjson.loads(raw)["error"]
        return f"{status} {err.get('code') or err.get('type')}"
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None


class Client:
    def __init__(self, n: int, base: str, key: str, key_id: str, hangs_up: bool, tally: Tally):
        self.rng = random.Random(n)
        self.base, self.key, self.key_id = base, key, key_id
        self.hangs_up = hangs_up
        self.tally = tally

    async def run(self, session: aiohttp.ClientSession, stop: asyncio.Event) -> None:
        while not stop.is_set():
            anthropic = self.rng.random() < 0.3
            stream = self.hangs_up or self.rng.random() < 0.6
            cap = self.rng.randrange(4, 40)
            try:
                outcome = await self.one(session, anthropic, stream, cap)
            except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError, KeyError) as e:
                outcome = self.tally.lose(type(e).__name__, repr(e).encode())
            self.tally.outcomes[outcome] += 1
            await asyncio.sleep(self.rng.random() * 0.05)

    async def one(
        self, session: aiohttp.ClientSession, anthropic: bool, stream: bool, cap: int
    ) -> str:
        path = "/v1/messages" if anthropic else "/v1/chat/completions"
        headers = {"x-api-key": self.key} if anthropic else {"authorization": f"Bearer {self.key}"}
        payload = body(self.rng, anthropic, stream, cap)
        seen = Seen()
        tk = self.tally.key(self.key_id)
        async with session.post(self.base + path, json=payload, headers=headers) as r:
            if r.headers.get("x-helexa-prompt-tokens", "").isdigit():
                seen.prompt = int(r.headers["x-helexa-prompt-tokens"])
            if r.status != 200:
                raw = await r.read()
                cause = error_cause(r.status, raw)
                if cause is None:
                    return self.tally.lose(f"{r.status} without an envelope", raw)
                if r.status < 500:
                    self.tally.errors_4xx[f"{cause} ({self.key_id})"] += 1  # costs nothing
                    return "failed"
                self.tally.errors_5xx[cause] += 1
                self.bound(tk, seen, cap, failed_early=True)
                return "failed"
            if not stream:
                obj = await r.json(loads=orjson.loads)
                u = obj["usage"]
                tk.completed += (
                    u["input_tokens"] + u["output_tokens"]
                    if anthropic
                    else u["prompt_tokens"] + u["completion_tokens"]
                )
                return "completed"
            hang_after = self.rng.randrange(1, 6) if self.hangs_up else None
            dec = SSEDecoder()
            async for chunk in r.content.iter_any():
                for event, data in dec.feed(chunk):
                    read_frame(seen, anthropic, event, data)
                if hang_after is not None and seen.deltas >= hang_after:
                    r.close()
                    self.bound(tk, seen, cap)
                    return "cut"
        if seen.error is not None:
            self.tally.errors_5xx[f"mid-stream {seen.error}"] += 1
            self.bound(tk, seen, cap)
            return "failed"
        if seen.done and seen.usage is not None:
            tk.completed += sum(seen.usage)
            return "completed"
        if hang_after is not None:  # the answer ended before the client meant to hang up
            self.bound(tk, seen, cap)
            return "cut"
        return self.tally.lose("stream ended without a terminal frame")

    @staticmethod
    def bound(tk: KeyTally, seen: Seen, cap: int, failed_early: bool = False) -> None:
        if seen.usage is not None and seen.done:
            tk.low += sum(seen.usage)
            tk.high += sum(seen.usage)
            return
        if seen.prompt is None:
            tk.low += seen.deltas
            tk.open_high += 1
            return
        tk.low += 0 if failed_early else seen.prompt + seen.deltas
        tk.high += seen.prompt + cap
