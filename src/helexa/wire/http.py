"""HTTP plumbing cortex and neuron share: the errors of the HTTP layer, the JSON body reader,
JSON and `/metrics` responses. One home, so both processes answer a bad body alike."""

from __future__ import annotations

import asyncio
import multiprocessing
from concurrent.futures import Executor, ProcessPoolExecutor
from typing import Any

import orjson
from aiohttp import web

from helexa.wire import json_shape
from helexa.wire.errors import ApiError

JSON = "application/json"
METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def num(x: float) -> str:
    """32.0 prints as 32, 0.5 stays 0.5."""
    return str(int(x)) if float(x).is_integer() else str(x)


def invalid_json(detail: str) -> ApiError:
    return ApiError(400, "invalid_json", f"request body is not valid JSON: {detail}")


def not_an_object() -> ApiError:
    return ApiError(400, "invalid_json", "request body must be a JSON object")


def missing_model() -> ApiError:
    return ApiError(400, "missing_model_field", "missing 'model' field in request body")


def too_large(max_body_mb: float) -> ApiError:
    return ApiError(
        413, "request_too_large", f"request body exceeds the {num(max_body_mb)} MB limit"
    )


def unknown_route(method: str, path: str) -> ApiError:
    return ApiError(404, "unknown_route", f"no route for {method} {path}")


def method_not_allowed(method: str, path: str) -> ApiError:
    return ApiError(405, "method_not_allowed", f"method {method} is not allowed on {path}")


def internal() -> ApiError:
    return ApiError(500, "internal_server_error", "internal server error")


def body_timeout(secs: float) -> ApiError:
    return ApiError(408, "request_timeout", f"request body not received within {num(secs)}s")


async def read_body(
    request: web.Request, max_body_mb: float, timeout: float | None = None
) -> bytes:
    """The raw body within the limit and, given `timeout`, the deadline: a client that trickles
    its body must not hold a connection and its buffer indefinitely. An unreadable body is
    `invalid_json`."""
    clen = request.content_length
    if clen is not None and clen > int(max_body_mb * 1024 * 1024):
        raise too_large(max_body_mb)
    enc = request.headers.get("content-encoding", "").strip().lower() or "identity"
    if enc != "identity":  # not decoded: a bad or bombed one would stall aiohttp's decoder
        raise invalid_json(f"the body could not be read (content-encoding: {enc[:64]})")
    try:
        async with asyncio.timeout(timeout):
            return await request.read()
    except TimeoutError:
        raise body_timeout(timeout or 0) from None
    except web.HTTPRequestEntityTooLarge:
        raise too_large(max_body_mb) from None
    except web.RequestPayloadError:
        # A body aiohttp can't decode (bad Content-Encoding data) or one cut short.
        enc = request.headers.get("content-encoding", "none")[:64]
        raise invalid_json(f"the body could not be read (content-encoding: {enc})") from None


def parse_object(body: bytes) -> dict[str, Any]:
    """A JSON object, or the 400 that says why not."""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise invalid_json(str(e)) from None
    if not isinstance(obj, dict):
        raise not_an_object()
    return obj


BIG_BODY = 256 * 1024  # parsed where it is served up to this size (well under a millisecond)
MAX_VALUES = 1_000_000  # JSON values in a larger body: at worst (all `{}`) ~75 ms to parse


def parses_busy() -> ApiError:
    return ApiError(
        503, "server_busy", "too many large request bodies are being parsed", retry_after=1
    )


def too_many_values(n: int) -> ApiError:
    message = f"request body holds {n} JSON values; at most {MAX_VALUES} are accepted"
    return ApiError(400, "invalid_json", message)


class BodyParser:
    """JSON bodies parsed as objects. A body over BIG_BODY is first measured in a child
    process (json_shape: parsing holds the GIL, so a thread would stall the event loop just the
    same), at most `slots` at a time (the next is refused with a 503); one with more than
    MAX_VALUES values is refused, so a body of millions of `{}` neither stalls the loop nor
    multiplies into gigabytes of objects here."""

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self.free = slots
        self.pool: Executor | None = None

    async def parse(self, body: bytes) -> dict[str, Any]:
        if len(body) <= BIG_BODY:
            return parse_object(body)
        if self.free <= 0:
            raise parses_busy()
        if self.pool is None:
            spawn = multiprocessing.get_context("spawn")  # no copy of this process's memory
            self.pool = ProcessPoolExecutor(self.slots, mp_context=spawn)
        self.free -= 1
        try:
            loop = asyncio.get_running_loop()
            n, error = await loop.run_in_executor(self.pool, json_shape.values, body)
        finally:
            self.free += 1
        if error is not None:
            raise invalid_json(error)
        if n > MAX_VALUES:
            raise too_many_values(n)
        return parse_object(body)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)
            self.pool = None


def json_response(
    obj: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(body=orjson.dumps(obj), status=status, content_type=JSON, headers=headers)


def metrics_response(exposition: bytes) -> web.Response:
    """A Prometheus text exposition."""
    return web.Response(body=exposition, headers={"content-type": METRICS_TYPE})
