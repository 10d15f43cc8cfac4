"""cortex's HTTP surface: the OpenAI routes, fleet views, admin routes and metrics.

One middleware does what every request needs (request id, auth, error envelopes) so the hot
path pays for a single wrapper.
"""

from __future__ import annotations

import logging
import posixpath
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from helexa.cortex import dashboard, errors, messages, reserve
from helexa.cortex.auth import BudgetError, bearer_token
from helexa.cortex.bounds import check_prompt_bytes
from helexa.cortex.context import RequestContext, checked_model_id, request_id_from
from helexa.cortex.fallback import Attempt, with_fallbacks
from helexa.cortex.gateway import Gateway
from helexa.cortex.idle import parse_keep_alive
from helexa.cortex.models_view import build_models, model_entry
from helexa.cortex.neuron_client import NeuronCallError
from helexa.cortex.stream_usage import ask_upstream
from helexa.translate.request import TranslationError, translate_request
from helexa.version import build_info
from helexa.wire import http
from helexa.wire.errors import ApiError
from helexa.wire.http import JSON, json_response

log = logging.getLogger("helexa.cortex.app")

GATEWAY = web.AppKey("gateway", Gateway)
CTX = web.RequestKey("ctx", RequestContext)
PUBLIC = frozenset({"/health", "/", "/version", "/dashboard"})  # the page holds no data
OPENAI_ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/embeddings")
TRACKED = frozenset((*OPENAI_ROUTES, "/v1/messages"))  # routed: metered, counted, in history
EXPOSED = {  # CORS, for configured origins only (never /api/*: a web page must not read those)
    "vary": "origin",
    "access-control-expose-headers": (
        "x-helexa-node, x-helexa-model, x-helexa-overhead-ms, x-helexa-cold-start, "
        "x-helexa-fallback-model, x-helexa-prompt-tokens, retry-after, x-request-id"
    ),
}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_response(err: ApiError, ctx: RequestContext | None) -> web.Response:
    headers = err.headers()
    anthropic = False
    if ctx is not None:
        headers.update(ctx.helexa_headers())
        ctx.status = err.status
        anthropic = ctx.anthropic
    body = err.anthropic_body() if anthropic else err.openai_body()
    return web.Response(body=body, status=err.status, content_type=JSON, headers=headers)


# -- middleware -------------------------------------------------------------------------------


@web.middleware
async def pipeline(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Request id, CORS preflight, auth, and every failure turned into an envelope."""
    gw = request.app[GATEWAY]
    path = request.path
    ctx = RequestContext(
        request_id=request_id_from(request.headers.get("x-request-id")),
        path=path,
        started=time.perf_counter(),
        anthropic=path.startswith("/v1/messages"),
    )
    request[CTX] = ctx
    tracked = path in TRACKED
    try:
        if request.method == "OPTIONS":
            return web.Response(status=204, headers=_preflight(request, gw))
        if path not in PUBLIC:
            ctx.principal = _authenticate(request, gw, ctx)
        return await handler(request)
    except ApiError as e:
        gw.metrics.rejections(e.code or "unknown").inc()
        return error_response(e, ctx)
    except web.HTTPException as e:
        if e.status == 404:
            return error_response(http.unknown_route(request.method, path), ctx)
        if e.status == 405:
            return error_response(http.method_not_allowed(request.method, path), ctx)
        if e.status == 413:
            return error_response(http.too_large(gw.gateway_settings.max_body_mb), ctx)
        raise
    except (RecursionError, orjson.JSONEncodeError):  # a client's deeply nested tools/arguments
        gw.metrics.rejections("invalid_value").inc()
        nested = errors.invalid_value("body", "request body is nested too deeply")
        return error_response(nested, ctx)
    except Exception:
        log.exception("unhandled error on %s %s (request %s)", request.method, path, ctx.request_id)
        gw.metrics.rejections("internal_server_error").inc()
        return error_response(http.internal(), ctx)
    finally:
        if tracked:  # after the envelope is built, so history sees the final status
            gw.accounting.complete(ctx)


def _cors(request: web.Request, gw: Gateway) -> dict[str, str] | None:
    """The CORS headers for this request's origin when it is configured, else None."""
    origin = request.headers.get("origin")
    if origin is None or origin not in gw.gateway_settings.cors_origins:
        return None
    if request.path.startswith("/api/"):
        return None
    return {**EXPOSED, "access-control-allow-origin": origin}


def _preflight(request: web.Request, gw: Gateway) -> dict[str, str]:
    h = _cors(request, gw)
    if h is None:
        return {"vary": "origin"}  # no allow-origin: the browser refuses the real request
    h["access-control-allow-methods"] = "GET, POST, OPTIONS"
    h["access-control-allow-headers"] = request.headers.get("access-control-request-headers", "*")
    h["access-control-max-age"] = "600"
    return h


def _authenticate(request: web.Request, gw: Gateway, ctx: RequestContext) -> Any:
    key = bearer_token(request.headers.get("authorization"))
    if key is None and ctx.anthropic:
        key = (request.headers.get("x-api-key") or "").strip() or None
    if key is not None:
        principal = gw.auth.resolve(key)
        if principal is None:
            raise errors.invalid_key()
        return principal
    if gw.require_auth:
        raise errors.missing_key()
    return None


async def _on_prepare(request: web.Request, response: web.StreamResponse) -> None:
    ctx = request.get(CTX)
    if ctx is not None and "x-request-id" not in response.headers:
        response.headers["x-request-id"] = ctx.request_id
    cors = _cors(request, request.app[GATEWAY])
    if cors is not None:
        response.headers.update(cors)


# -- inference --------------------------------------------------------------------------------


async def read_json_body(request: web.Request, gw: Gateway) -> tuple[bytes, dict[str, Any]]:
    """Body limit and deadline, then parse (a large body off the event loop): what every
    inference route shares."""
    cfg = gw.gateway_settings
    body = await http.read_body(request, cfg.max_body_mb, cfg.body_timeout_secs)
    request[CTX].body_read_at = time.perf_counter()
    return body, await gw.parser.parse(body)


async def _route(gw: Gateway, ctx: RequestContext, model: str, prompt: int, obj: Any) -> None:
    """Reserve budget, resolve the model, mark the request dispatched."""
    # Errors from here on carry x-helexa-model: the alias is resolved.
    ctx.model = gw.catalogue.resolve_alias(model)
    check_prompt_bytes(gw.fleet, ctx.model, prompt)
    if ctx.principal is not None and ctx.reservation is None:  # once, whatever falls back
        limit = reserve.limit_output(gw.fleet, ctx.model)
        ctx.output_cap = reserve.output_cap(ctx.path, obj, limit)
        try:
            ctx.reservation = gw.auth.reserve(ctx.principal, prompt + ctx.output_cap)
        except BudgetError as e:
            raise e.to_api() from None
    try:
        route = await gw.router.resolve(model)
    except ApiError as e:
        # A cold-load failure comes after a node was chosen: x-helexa-node names it.
        node = e.extras.get("node")
        if isinstance(node, str) and node in gw.fleet.nodes:
            ctx.node = gw.fleet.nodes[node]
        raise
    ctx.model, ctx.node, ctx.cold_start = route.model_id, route.node, route.cold_start
    gw.accounting.dispatch(ctx)


async def _serve(
    gw: Gateway,
    ctx: RequestContext,
    model: str,
    prompt: int,
    obj: Any,
    keep_alive: float | None,
    attempt: Attempt,
) -> web.StreamResponse:
    """Route and send, falling back on a 503; keep_alive applies where it ran."""
    checked_model_id(model)
    try:
        with gw.key_limits.hold(ctx.principal):
            return await with_fallbacks(
                gw.catalogue,
                gw.accounting,
                ctx,
                model,
                lambda name: _route(gw, ctx, name, prompt, obj),
                attempt,
            )
    finally:
        gw.idle.note(ctx, keep_alive)


async def inference(request: web.Request) -> web.StreamResponse:
    gw = request.app[GATEWAY]
    ctx: RequestContext = request[CTX]
    body, obj = await read_json_body(request, gw)
    model = obj.get("model")
    if not isinstance(model, str) or not model:
        raise http.missing_model()
    prompt = reserve.prompt_bound(body)  # the client's body is what budgets estimate from
    stripped = "keep_alive" in obj  # cortex's own field: never forwarded
    keep_alive = parse_keep_alive(obj.pop("keep_alive", None))
    ctx.strip_usage, body = ask_upstream(request.path, obj, body)

    async def attempt(fall_back: bool) -> web.StreamResponse:
        nonlocal body
        if ctx.output_cap is not None:  # the node generates no more than was reserved
            body = reserve.write_cap(request.path, obj, body, ctx.output_cap)
        out = body
        if stripped or obj["model"] != ctx.model:  # one re-serialisation for both
            obj["model"] = ctx.model
            out = orjson.dumps(obj)
        return await gw.proxy.passthrough(request, ctx, request.path, out, fall_back)

    return await _serve(gw, ctx, model, prompt, obj, keep_alive, attempt)


async def anthropic_messages(request: web.Request) -> web.StreamResponse:
    gw = request.app[GATEWAY]
    ctx: RequestContext = request[CTX]
    body, obj = await read_json_body(request, gw)
    raw_keep_alive = obj.pop("keep_alive", None)
    try:
        chat = translate_request(obj)
    except TranslationError as e:
        raise messages.invalid_body(str(e)) from None
    keep_alive = parse_keep_alive(raw_keep_alive)

    async def attempt(_: bool) -> web.StreamResponse:  # a 503 here is an ApiError already
        chat["model"] = ctx.model
        if ctx.output_cap is not None:
            chat["max_tokens"] = ctx.output_cap
        return await messages.relay(request, gw.proxy, ctx, orjson.dumps(chat))

    prompt = reserve.prompt_bound(body)
    return await _serve(gw, ctx, chat["model"], prompt, chat, keep_alive, attempt)


async def anthropic_count_tokens(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    ctx: RequestContext = request[CTX]
    body, obj = await read_json_body(request, gw)
    try:
        chat = translate_request(obj, count_tokens=True)
    except TranslationError as e:
        raise messages.invalid_body(str(e)) from None
    model_id = gw.catalogue.resolve_alias(checked_model_id(chat["model"]))
    check_prompt_bytes(gw.fleet, model_id, len(body))
    if ctx.principal is not None:  # counting costs a node's tokenizer: not for a spent key
        try:
            gw.auth.release(gw.auth.reserve(ctx.principal, 1))  # a spent key can't reserve 1
        except BudgetError as e:
            raise e.to_api() from None
    profile = gw.catalogue.get(model_id)
    load_id = profile.load_id() if profile is not None else None
    gguf_quant = profile.quant if profile is not None and profile.harness == "llamacpp" else None
    with gw.key_limits.hold(ctx.principal):
        return await messages.count_tokens(gw.proxy, ctx, model_id, chat, load_id, gguf_quant)


# -- fleet views --------------------------------------------------------------------------------


async def health(request: web.Request) -> web.Response:
    fleet = request.app[GATEWAY].fleet
    total = len(fleet.nodes)
    healthy = len(fleet.healthy())
    status = "ok" if healthy > 0 else "degraded"
    return json_response({"status": status, "nodes": {"healthy": healthy, "total": total}})


async def version(request: web.Request) -> web.Response:
    return json_response(build_info().model_dump())


async def models(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    return json_response(build_models(gw.fleet, gw.catalogue))


def _is_admin(request: web.Request) -> bool:
    principal = request[CTX].principal
    return principal is not None and principal.admin


async def model_view(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    model_id = request.match_info["id"]
    entry = model_entry(gw.fleet, gw.catalogue, model_id)
    if entry is None:
        raise errors.model_not_found(model_id)
    return json_response(entry)


async def fleet_view(request: web.Request) -> web.Response:
    """Hostnames, endpoints and load errors: an operator's view, admin-only under auth."""
    gw = request.app[GATEWAY]
    admin = _is_admin(request)
    if gw.require_auth and not admin:
        raise errors.admin_required()
    return json_response({"nodes": [n.as_api(details=admin) for n in gw.fleet]})


async def history(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    raw = request.query.get("limit", "100")
    if not (raw.isascii() and raw.isdigit()):  # isdigit alone accepts '²', which int() refuses
        raise errors.invalid_value("limit", "invalid limit: use an integer 1-1000")
    limit = max(1, min(1000, int(raw)))
    items = list(gw.accounting.history)
    principal = request[CTX].principal
    if gw.require_auth and principal is not None and not principal.admin:
        items = [i for i in items if i["key_id"] == principal.key_id]  # a tenant sees its own
    items = items[-limit:]
    items.reverse()
    return json_response({"object": "list", "data": items})


# -- admin --------------------------------------------------------------------------------------


async def _admin_body(request: web.Request, gw: Gateway, need_node: bool) -> tuple[str, str | None]:
    ctx: RequestContext = request[CTX]
    if ctx.principal is None or not ctx.principal.admin:
        raise errors.admin_required()
    _, obj = await read_json_body(request, gw)
    model = obj.get("model")
    node = obj.get("node")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "missing_model_field", "missing 'model' field in request body")
    checked_model_id(model)
    if node is not None and not isinstance(node, str):
        raise errors.invalid_value("node", "'node' must be a string naming a configured neuron")
    if need_node and not node:
        raise ApiError(
            400, "missing_node_field", "missing 'node' field in request body", param="node"
        )
    if node and node not in gw.fleet.nodes:
        raise ApiError(404, "node_not_found", f"node '{node}' is not configured", param="node")
    return model, node


async def admin_load(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    model, node_name = await _admin_body(request, gw, need_node=False)
    model_id = gw.catalogue.resolve_alias(model)
    if node_name is None:
        route = await gw.router.resolve(model_id)
        node = route.node
    else:
        _check_loadable(gw, model_id)
        target = gw.fleet.nodes[node_name]
        lc = gw.lifecycle
        node = await lc.single_flight(model_id, lambda: lc.load_here(target, model_id))
    return json_response({"status": "loaded", "node": node.name, "model": model_id})


def _check_loadable(gw: Gateway, model_id: str) -> None:
    """A node loads what it is told, paths included: an admin key may name catalogue models,
    and other ids only under gateway.admin_load_roots (directories or hub namespaces)."""
    if gw.catalogue.get(model_id) is not None:
        return
    norm = posixpath.normpath(model_id)
    for root in gw.gateway_settings.admin_load_roots:
        if norm.startswith(posixpath.normpath(root).rstrip("/") + "/"):
            return
    raise ApiError(
        403,
        "model_not_allowed",
        f"'{model_id}' is not in the catalogue nor under gateway.admin_load_roots",
        type="permission_error",
    )


async def admin_unload(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    model, node_name = await _admin_body(request, gw, need_node=True)
    assert node_name is not None
    model_id = gw.catalogue.resolve_alias(model)
    node = gw.fleet.nodes[node_name]
    try:
        await gw.lifecycle.unload(node, model_id)
    except NeuronCallError as e:
        if e.kind == "http" and e.status is not None and 400 <= e.status < 500:
            raise ApiError(
                e.status,
                e.code,
                f"neuron refused to unload '{model_id}' on '{node_name}' (HTTP {e.status})",
            ) from None
        log.warning("admin unload of %s on %s failed: %s", model_id, node_name, e)
        raise ApiError(
            502, "upstream_error", f"unloading '{model_id}' on '{node_name}' failed"
        ) from None
    return json_response({"status": "unloaded", "node": node_name, "model": model_id})


# -- applications -------------------------------------------------------------------------------


def make_app(gw: Gateway) -> web.Application:
    app = web.Application(middlewares=[pipeline], client_max_size=gw.max_body)
    app[GATEWAY] = gw
    r = app.router
    for path in OPENAI_ROUTES:
        r.add_post(path, inference)
    r.add_post("/v1/messages", anthropic_messages)
    r.add_post("/v1/messages/count_tokens", anthropic_count_tokens)
    r.add_get("/v1/models", models)
    r.add_get("/v1/models/{id:.+}", model_view)
    r.add_get("/health", health)
    r.add_get("/", health)
    r.add_get("/version", version)
    r.add_get("/dashboard", dashboard.page)
    r.add_get("/api/fleet", fleet_view)
    r.add_get("/api/history", history)
    r.add_post("/api/models/load", admin_load)
    r.add_post("/api/models/unload", admin_unload)
    app.on_response_prepare.append(_on_prepare)
    return app


def make_metrics_app(gw: Gateway) -> web.Application:
    async def metrics(_: web.Request) -> web.Response:
        return http.metrics_response(gw.metrics.exposition())

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    return app
