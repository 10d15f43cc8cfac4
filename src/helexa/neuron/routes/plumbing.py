"""What every neuron request goes through: node auth, the shutdown gate, the drain count,
error envelopes, the request id, and the JSON body reader."""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from helexa.neuron.principals import principal_of
from helexa.neuron.service import NEURON, Neuron
from helexa.wire import http
from helexa.wire.errors import ApiError

log = logging.getLogger("helexa.neuron.routes.plumbing")


PUBLIC = frozenset({"/health", "/version"})
INFERENCE = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "completions",
    "/v1/responses": "responses",
    "/v1/embeddings": "embeddings",
}
PROMPT_HEADER = "x-helexa-prompt-tokens"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MODEL_KEY = web.RequestKey("model", str)
PROMPT_KEY = web.RequestKey("prompt_tokens", int)
REQUEST_ID_KEY = web.RequestKey("request_id", str)
SAFE_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
CAPPED = frozenset({*INFERENCE, "/tokenize"})


def missing_token() -> ApiError:
    return ApiError(
        401, "invalid_node_token", "missing node token; supply 'Authorization: Bearer <token>'"
    )


def prompt_too_large(size: int, cap: int) -> ApiError:
    return ApiError(
        400,
        "context_length_exceeded",
        f"request is {size} bytes; a prompt on this neuron is at most {cap} bytes "
        "(max_prompt_tokens x 32)",
        extras={"bytes": size, "max_bytes": cap},
    )


def bad_token() -> ApiError:
    return ApiError(401, "invalid_node_token", "invalid node token")


def shutting_down() -> ApiError:
    return ApiError(503, "service_unavailable", "neuron is shutting down", retry_after=5)


def too_deep() -> ApiError:
    return ApiError(400, "invalid_value", "the request is nested too deeply to process")


def request_id(request: web.Request) -> str:
    """The caller's `x-request-id` when it is short and plain, else a fresh one: it is echoed
    in a header and written to logs."""
    rid = request.headers.get("x-request-id", "")
    return rid if SAFE_ID.fullmatch(rid) else "req_" + secrets.token_hex(12)


def error_response(err: ApiError, prompt_tokens: int | None = None) -> web.Response:
    headers = err.headers()
    if prompt_tokens is not None:
        headers[PROMPT_HEADER] = str(prompt_tokens)
    return web.Response(
        body=err.openai_body(), status=err.status, content_type=http.JSON, headers=headers
    )


@web.middleware
async def pipeline(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Auth, the shutdown gate, the drain count, and every failure turned into an envelope."""
    neuron = request.app[NEURON]
    path = request.path
    endpoint = INFERENCE.get(path)
    request[REQUEST_ID_KEY] = request_id(request)
    status = 500
    counted = False
    principal = None
    try:
        if path not in PUBLIC:
            _authenticate(request, neuron)
            if neuron.draining:
                raise shutting_down()
            neuron._enter()
            counted = True
            who = principal_of(request.headers) if path in CAPPED else None
            if who is not None:
                neuron.principals.enter(who)
                principal = who
        resp = await handler(request)
        status = resp.status
        return resp
    except ApiError as e:
        status = e.status
        return error_response(e, request.get(PROMPT_KEY))
    except web.HTTPException as e:
        status = e.status
        if e.status == 404:
            err = http.unknown_route(request.method, path)
        elif e.status == 405:
            err = http.method_not_allowed(request.method, path)
        elif e.status == 413:
            err = http.too_large(neuron.cfg.max_body_mb)
        else:
            raise
        return error_response(err)
    except RecursionError:
        status = 400
        return error_response(too_deep(), request.get(PROMPT_KEY))
    except asyncio.CancelledError:
        status = 499  # the client went away (nginx's code); nothing is sent
        raise
    except Exception:
        log.exception("unhandled error on %s %s", request.method, printable(path))
        status = 500
        return error_response(http.internal())
    finally:
        if principal is not None:
            neuron.principals.leave(principal)
        if counted:
            neuron._leave()
        if endpoint is not None:
            model = request.get(MODEL_KEY)
            if model is not None:
                # only known models get a series: a made-up name must not grow /metrics
                label = model if model in neuron.registry.records else "unknown"
                neuron.metrics.requests(label, endpoint, str(status)).inc()
        _log_request(request, status)


def _log_request(request: web.Request, status: int) -> None:
    """The access line: who cortex says is asking (its principal headers), by request id."""
    h = request.headers
    log.debug(
        "%s %s %d request=%s account=%s key=%s",
        request.method,
        printable(request.path),
        status,
        request[REQUEST_ID_KEY],
        printable(h.get("x-helexa-account-id", "-")),
        printable(h.get("x-helexa-key-id", "-")),
    )


def printable(v: str) -> str:
    """A caller's value fit for a log line: control characters escaped, at most 256 chars."""
    return v[:256].encode("unicode_escape").decode("ascii")


def _authenticate(request: web.Request, neuron: Neuron) -> None:
    if neuron.token is None:
        return
    raw = request.headers.get("authorization", "")
    scheme, _, value = raw.strip().partition(" ")
    token = value.strip() if scheme.lower() == "bearer" else ""
    if not token:
        raise missing_token()
    try:
        given = token.encode()
    except UnicodeEncodeError:  # aiohttp hands undecodable header bytes on as surrogates
        raise bad_token() from None
    if not hmac.compare_digest(given, neuron.token):
        raise bad_token()


async def on_prepare(request: web.Request, response: web.StreamResponse) -> None:
    rid = request.get(REQUEST_ID_KEY)  # None only where the pipeline never ran
    if rid is not None:
        response.headers["x-request-id"] = rid


async def read_json(request: web.Request, max_bytes: int | None = None) -> dict[str, Any]:
    """The JSON object body, read within `body_timeout_secs`; past `max_bytes` (a prompt's
    byte cap) it is refused before reading or parsing any of it."""
    neuron = request.app[NEURON]
    cfg = neuron.cfg
    clen = request.content_length
    if max_bytes is not None and clen is not None and clen > max_bytes:
        raise prompt_too_large(clen, max_bytes)
    raw = await http.read_body(request, cfg.max_body_mb, cfg.body_timeout_secs)
    if max_bytes is not None and len(raw) > max_bytes:
        raise prompt_too_large(len(raw), max_bytes)
    return await neuron.bodies.parse(raw)
