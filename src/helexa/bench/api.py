"""helexa-bench's read-only JSON API: GET only, CORS `*`, OpenAI error envelope.

Store reads are blocking SQLite calls, so each runs in a worker thread (the store keeps one
connection per thread) and never stalls the event loop that may also be driving a sweep.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from helexa.bench.store import DEFAULT_LIMIT, MAX_LIMIT, Store
from helexa.wire.errors import ApiError

log = logging.getLogger("helexa.bench.api")

STORE: web.AppKey[Store] = web.AppKey("store", Store)
CORS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, OPTIONS",
    "Access-Control-Allow-Headers": "*",
}
_OK_VALUES = {"true": True, "1": True, "false": False, "0": False}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(data: Any) -> web.Response:
    return web.Response(body=orjson.dumps(data), content_type="application/json", headers=CORS)


def _error(err: ApiError) -> web.Response:
    return web.Response(
        status=err.status,
        body=err.openai_body(),
        content_type="application/json",
        headers={**CORS, **err.headers()},
    )


@web.middleware
async def _middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.method == "OPTIONS":
        return web.Response(status=204, headers=CORS)
    if request.method not in ("GET", "HEAD"):
        return _error(
            ApiError(
                405, "method_not_allowed", f"{request.method} is not allowed; the API is read-only"
            )
        )
    try:
        return await handler(request)
    except ApiError as e:
        return _error(e)
    except web.HTTPNotFound:
        return _error(ApiError(404, "not_found", f"no route for {request.path}"))


def _param(request: web.Request, name: str, *, required: bool = False) -> str | None:
    value = request.query.get(name)
    if value is None or value == "":
        if required:
            raise ApiError(400, "missing_parameter", f"'{name}' is required", param=name)
        return None
    return value


async def _read(request: web.Request, fn: Callable[..., Any], *args: Any) -> web.Response:
    return _json(await asyncio.to_thread(fn, *args))


async def health(request: web.Request) -> web.Response:
    return await _read(request, request.app[STORE].health)


async def dimensions(request: web.Request) -> web.Response:
    return await _read(request, request.app[STORE].dimensions)


async def summary(request: web.Request) -> web.Response:
    return await _read(request, request.app[STORE].summary)


async def series(request: web.Request) -> web.Response:
    model = _param(request, "model", required=True)
    scenario = _param(request, "scenario", required=True)
    host = _param(request, "host")
    return await _read(request, request.app[STORE].series, model, scenario, host)


async def runs(request: web.Request) -> web.Response:
    filters: dict[str, Any] = {k: _param(request, k) for k in ("host", "model", "scenario", "sha")}
    ok = _param(request, "ok")
    if ok is not None:
        if ok.lower() not in _OK_VALUES:
            raise ApiError(
                400, "invalid_value", f"'ok' must be true or false, got '{ok}'", param="ok"
            )
        filters["ok"] = _OK_VALUES[ok.lower()]
    limit = DEFAULT_LIMIT
    raw = _param(request, "limit")
    if raw is not None:
        try:
            limit = int(raw)
        except ValueError:
            limit = 0
        if limit < 1:
            raise ApiError(
                400,
                "invalid_value",
                f"'limit' must be a positive integer, got '{raw}'",
                param="limit",
            )
        limit = min(limit, MAX_LIMIT)
    return await _read(request, request.app[STORE].runs, filters, limit)


def make_app(store: Store) -> web.Application:
    app = web.Application(middlewares=[_middleware])
    app[STORE] = store
    for path, handler in (
        ("/api/health", health),
        ("/api/dimensions", dimensions),
        ("/api/summary", summary),
        ("/api/series", series),
        ("/api/runs", runs),
    ):
        app.router.add_route("*", path, handler)
    return app


async def start_api(store: Store, listen: str) -> web.AppRunner:
    """Start listening on `HOST:PORT`; the caller owns `cleanup()`."""
    runner = web.AppRunner(make_app(store), access_log=None)
    await runner.setup()
    host, _, port = listen.rpartition(":")
    try:
        await web.TCPSite(runner, host, int(port)).start()
    except OSError:
        await runner.cleanup()
        raise
    log.info("bench API listening on %s", listen)
    return runner
