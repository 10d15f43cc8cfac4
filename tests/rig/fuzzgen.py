"""Seeded generator of hostile HTTP requests for cortex and the neuron (fuzzrun sends them).

Each case starts from a structurally valid request for a route and is then mutated (fields
dropped or replaced by odd JSON values, the body cut, wrapped, nested deeply or made invalid
UTF-8; headers missing, wrong, oversized or carrying control and non-UTF-8 bytes; unknown
paths, wrong methods, odd query strings). The same seed gives the same cases, so a failure
names a case that can be replayed.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson

METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD")


@dataclass
class Case:
    n: int
    method: str
    path: str
    headers: list[tuple[bytes, bytes]]
    body: bytes | None
    anthropic: bool  # the route answers in Anthropic's envelope
    hang_up: bool = False

    @property
    def malformed(self) -> bool:
        """A header value HTTP forbids (a control byte) or a Content-Encoding the body does not
        have: aiohttp's HTTP parser refuses it with a plain-text 400 before any application code
        runs."""
        return any(
            k == b"Content-Encoding" or any((b < 0x20 and b != 0x09) or b == 0x7F for b in v)
            for k, v in self.headers
        )

    def describe(self) -> str:
        body = (self.body or b"")[:300]
        return f"#{self.n} {self.method} {self.path[:120]} headers={self.headers!r} body={body!r}"


SCALARS: tuple[Any, ...] = (
    None,
    True,
    False,
    0,
    -1,
    1,
    2**31,
    2**63 - 1,
    -(2**63),
    1.5,
    -0.0,
    1e308,
    "",
    "x",
    "\x00\x1b[31m\u202e",
    "{{ 7*7 }}<|im_end|>",
)


def odd_value(rng: random.Random, depth: int = 0) -> Any:
    """A JSON value chosen to break assumptions (types, ranges, sizes, characters)."""
    pick = rng.randrange(len(SCALARS) + (6 if depth < 3 else 2))
    if pick < len(SCALARS):
        return SCALARS[pick]
    k = pick - len(SCALARS)
    if k == 0:
        return "é" * rng.randrange(1, 300)
    if k == 1:
        return "a" * rng.choice((1000, 70000))
    if k == 2:
        return [odd_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    if k == 3:
        return {"type": odd_value(rng, depth + 1), "text": odd_value(rng, depth + 1)}
    if k == 4:
        return {rng.choice(FIELDS): odd_value(rng, depth + 1)}
    return [{"role": "user", "content": odd_value(rng, depth + 1)}]


FIELDS = (
    "model",
    "messages",
    "prompt",
    "input",
    "max_tokens",
    "max_completion_tokens",
    "max_output_tokens",
    "stream",
    "stream_options",
    "temperature",
    "top_p",
    "top_k",
    "n",
    "stop",
    "seed",
    "tools",
    "tool_choice",
    "system",
    "logprobs",
    "response_format",
    "reasoning",
    "instructions",
    "keep_alive",
    "model_id",
    "served_model_id",
    "quant",
    "devices",
    "max_in_flight",
    "max_queue_depth",
    "max_wait_secs",
    "force",
    "node",
    "encoding_format",
    "dimensions",
    "chat_template_kwargs",
    "metadata",
    "thinking",
)


DEEP = b'"__deep__"'


def deep_json(depth: int) -> bytes:
    """`depth` levels of alternating objects and lists (JSON encoders refuse to write these)."""
    opens = [b'{"a":' if i % 2 else b"[" for i in range(depth)]
    closes = [b"}" if i % 2 else b"]" for i in reversed(range(depth))]
    return b"".join(opens) + b'"x"' + b"".join(closes)


def _mutate_obj(rng: random.Random, obj: dict[str, Any]) -> Any:
    for _ in range(rng.randrange(1, 4)):
        m = rng.randrange(8)
        if m == 0 and obj:
            obj.pop(rng.choice(list(obj)))
        elif m in (1, 2):
            obj[rng.choice(list(obj) or list(FIELDS))] = odd_value(rng)
        elif m == 3:
            obj[rng.choice(FIELDS)] = odd_value(rng)
        elif m == 4 and isinstance(obj.get("messages"), list) and obj["messages"]:
            msg = obj["messages"][0]
            if isinstance(msg, dict):
                msg[rng.choice(("role", "content", "tool_calls", "name", "x"))] = odd_value(rng)
        elif m == 5:
            obj[rng.choice(("tools", "messages", "input", "metadata"))] = DEEP.decode()[1:-1]
        elif m == 6:
            return rng.choice(([obj], "string", 42, None, [], True))
        else:
            obj["stream"] = rng.random() < 0.6
    return obj


def _mutate_bytes(rng: random.Random, raw: bytes) -> bytes:
    m = rng.randrange(7)
    if m == 0:
        return raw[: rng.randrange(len(raw) + 1)]
    if m == 1:
        i = rng.randrange(len(raw) + 1)
        return raw[:i] + rng.choice((b"\xff", b"\xc3", b"\x00", b"\xed\xa0\x80")) + raw[i:]
    if m == 2:
        return b"\xef\xbb\xbf" + raw
    if m == 3:
        return b""
    if m == 4:
        return b"[" * rng.choice((100, 5000, 200000))
    if m == 5:
        return raw.replace(b"1", b"NaN", 1).replace(b"0", b"1e99999", 1)
    return raw + b"garbage"


def body_bytes(rng: random.Random, obj: dict[str, Any] | None) -> bytes | None:
    """Valid JSON for `obj` (40 %), a mutated object (45 %) or mutated bytes (15 %)."""
    if obj is None:
        return None if rng.random() < 0.8 else rng.choice((b"{}", b"x"))
    r = rng.random()
    if r < 0.40:
        return orjson.dumps(obj)
    if r < 0.85:
        raw = orjson.dumps(_mutate_obj(rng, obj), default=str)
        return raw.replace(DEEP, deep_json(rng.choice((50, 400, 1000, 3000))), 1)
    return _mutate_bytes(rng, orjson.dumps(obj))


def odd_header_value(rng: random.Random) -> bytes:
    return rng.choice(
        (
            b"",
            b"\xff\xfe\xfd",
            b"caf\xc3\xa9",
            b"a" * rng.choice((100, 4000)),
            b"\x01\x7f",
            b"id\tx",
            b"../../etc/passwd",
            b"%00",
        )
    )


@dataclass
class Route:
    method: str
    path: Callable[[random.Random], str]
    body: Callable[[random.Random], dict[str, Any] | None]
    anthropic: bool = False


Pick = Callable[[random.Random], Any]


def fixed(p: str) -> Callable[[random.Random], str]:
    return lambda rng: p


def messages(rng: random.Random) -> list[dict[str, Any]]:
    content = rng.choice(("hi", "x" * 500, "{}[]()!?.,;0123456789" * 40))
    return [{"role": "user", "content": content}]


def openai_routes(model: Pick) -> list[Route]:
    """The OpenAI routes cortex and the neuron both serve, with valid-ish bodies for `model`."""

    def chat(rng: random.Random) -> dict[str, Any]:
        body = {"model": model(rng), "messages": messages(rng), "stream": rng.random() < 0.5}
        body[rng.choice(("max_tokens", "max_completion_tokens"))] = rng.randrange(1, 60)
        return body

    def completion(rng: random.Random) -> dict[str, Any]:
        return {"model": model(rng), "prompt": "hi", "stream": rng.random() < 0.5}

    def responses(rng: random.Random) -> dict[str, Any]:
        cap = rng.randrange(1, 60)
        return {"model": model(rng), "input": "hi", "max_output_tokens": cap}

    return [
        Route("POST", fixed("/v1/chat/completions"), chat),
        Route("POST", fixed("/v1/completions"), completion),
        Route("POST", fixed("/v1/responses"), responses),
        Route("POST", fixed("/v1/embeddings"), lambda r: {"model": model(r), "input": "hi"}),
        Route("GET", fixed("/v1/models"), lambda r: None),
    ]


Auth = Callable[[random.Random, bool], list[tuple[bytes, bytes]]]


def credentials(keys: list[str], weights: list[int] | None = None) -> Auth:
    """80 % one of `keys` (as `x-api-key` on half the Anthropic routes), else none or junk."""

    def auth(rng: random.Random, anthropic: bool) -> list[tuple[bytes, bytes]]:
        r = rng.random()
        if r < 0.1:
            return []
        if r < 0.2:
            return [
                (b"Authorization", rng.choice((b"Bearer ", b"Basic ", b"")) + odd_header_value(rng))
            ]
        key = rng.choices(keys, weights)[0].encode()
        if anthropic and rng.random() < 0.5:
            return [(b"x-api-key", key)]
        return [(b"Authorization", b"Bearer " + key)]

    return auth


def cases(
    rng: random.Random,
    routes: list[Route],
    auth: Auth,
    count: int,
    hang_up_rate: float = 0.04,
) -> Iterator[Case]:
    """`count` cases over `routes`; `auth(rng, anthropic)` gives the credential headers."""
    for n in range(count):
        route = rng.choice(routes)
        method, path = route.method, route.path(rng)
        r = rng.random()
        if r < 0.05:
            method = rng.choice(METHODS)
        elif r < 0.08:
            path = rng.choice(
                ("/nope", "/v1", "/v1/", "/%00", "/v1/chat/completions/x", "/" + "a" * 3000)
            )
        headers = auth(rng, route.anthropic)
        if rng.random() < 0.85:
            ct = b"application/json"
            if rng.random() < 0.1:
                ct = rng.choice((b"text/plain", b"multipart/form-data; boundary=x", b"a/b; x"))
            headers.append((b"Content-Type", ct))
        if rng.random() < 0.15:
            headers.append((b"X-Request-Id", odd_header_value(rng)))
        if rng.random() < 0.04:
            headers.append((b"Content-Encoding", rng.choice((b"gzip", b"deflate", b"br"))))
        if rng.random() < 0.05:
            name = rng.choice((b"x-helexa-key-id", b"x-helexa-account-id", b"anthropic-version"))
            headers.append((name, odd_header_value(rng)))
        if route.anthropic and rng.random() < 0.3:
            headers.append((b"anthropic-version", b"2023-06-01"))
        obj = route.body(rng)
        body = (
            body_bytes(rng, obj) if method not in ("GET", "HEAD") or rng.random() < 0.05 else None
        )
        hang = rng.random() < hang_up_rate
        yield Case(n, method, path, headers, body, route.anthropic, hang)
