"""What every neuron request goes through: node auth, the shutdown gate, the drain count,
error envelopes, the request id, and the JSON body reader."""

from __future__ import annotations

import asyncio
import hmac
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

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


def missing_token() -> ApiError:
    return ApiError(
        401, "invalid_node_token", "missing node token; supply 'Authorization: Bearer <token>'"
    )


def bad_token() -> ApiError:
    return ApiError(401, "invalid_node_token", "invalid node token")


def shutting_down() -> ApiError:
    return ApiError(503, "service_unavailable", "neuron is shutting down", retry_after=5)


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
    request[REQUEST_ID_KEY] = request.headers.get("x-request-id") or "req_" + secrets.token_hex(12)
    status = 500
    counted = False
    try:
        if path not in PUBLIC:
            _authenticate(request, neuron)
            if neuron.draining:
                raise shutting_down()
            neuron._enter()
            counted = True
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
    except asyncio.CancelledError:
        status = 499  # the client went away (nginx's code); nothing is sent
        raise
    except Exception:
        log.exception("unhandled error on %s %s", request.method, path)
        status = 500
        return error_response(http.internal())
    finally:
        if counted:
            neuron._leave()
        if endpoint is not None:
            model = request.get(MODEL_KEY)
            if model is not None:
                neuron.metrics.requests(model, endpoint, str(status)).inc()
        _log_request(request, status)


def _log_request(request: web.Request, status: int) -> None:
    """The access line: who cortex says is asking (its principal headers), by request id."""
    h = request.headers
    log.debug(
        "%s %s %d request=%s account=%s key=%s",
        request.method,
        request.path,
        status,
        request[REQUEST_ID_KEY],
        h.get("x-helexa-account-id", "-"),
        h.get("x-helexa-key-id", "-"),
    )


def _authenticate(request: web.Request, neuron: Neuron) -> None:
    if neuron.token is None:
        return
    raw = request.headers.get("authorization", "")
    scheme, _, value = raw.strip().partition(" ")
    token = value.strip() if scheme.lower() == "bearer" else ""
    if not token:
        raise missing_token()
    if not hmac.compare_digest(token.encode(), neuron.token):
        raise bad_token()


async def on_prepare(request: web.Request, response: web.StreamResponse) -> None:
    rid = request.get(REQUEST_ID_KEY)  # None only where the pipeline never ran
    if rid is not None:
        response.headers["x-request-id"] = rid


async def read_json(request: web.Request) -> dict[str, Any]:
    return http.parse_object(await http.read_body(request, request.app[NEURON].cfg.max_body_mb))
