"""`/v1/messages` and `/v1/messages/count_tokens`: Anthropic clients over OpenAI-speaking
neurons. Translation itself is pure code in `helexa.translate`."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from helexa.cortex import errors
from helexa.cortex.context import RequestContext
from helexa.cortex.neuron_client import NeuronCallError
from helexa.cortex.observer import PROMPT_HEADER, TokenObserver, prompt_header
from helexa.cortex.proxy import ClientGone, Proxy, to_client
from helexa.cortex.upstream import Response
from helexa.translate.request import anthropic_fields
from helexa.translate.response import message_id, translate_response
from helexa.translate.stream import PING, AnthropicStream
from helexa.wire import sse
from helexa.wire.errors import ApiError

log = logging.getLogger("helexa.cortex.messages")
PING_AFTER_SECS = 10.0
CHAT_PATH = "/v1/chat/completions"


def invalid_body(detail: str) -> ApiError:
    return ApiError(400, "invalid_anthropic_body", f"invalid Anthropic request body: {detail}")


def upstream_error(status: int, body: Any, retry_after: str | None) -> ApiError:
    """A neuron non-2xx in Anthropic terms: 4xx messages pass (naming the Anthropic fields
    rather than the chat ones they became), 5xx are summarised, and context overflow uses the
    wording Claude Code compacts on."""
    env = body.get("error") if isinstance(body, dict) else None
    env = env if isinstance(env, dict) else {}
    if env.get("code") == "context_length_exceeded":
        msg = f"prompt is too long: {env.get('prompt_len')} tokens > {env.get('max')} maximum"
        return ApiError(400, "context_length_exceeded", msg)
    message = env.get("message")
    if status >= 500 or not isinstance(message, str):
        message = f"upstream returned {status}"
    else:
        message = anthropic_fields(message)
    err = ApiError(status, env.get("code") if isinstance(env.get("code"), str) else None, message)
    if retry_after is not None and retry_after.isdigit():
        err.retry_after = int(retry_after)
    return err


async def relay(
    request: web.Request, proxy: Proxy, ctx: RequestContext, payload: bytes
) -> web.StreamResponse:
    """Send the translated chat request and answer in Anthropic form, streaming or not."""
    upstream = await proxy.open(request, ctx, CHAT_PATH, payload)
    model, node = ctx.routed()
    metrics = proxy.metrics
    try:
        metrics.duration(model, node.name).observe(time.perf_counter() - ctx.started)
        if upstream.status >= 400:
            raw = await upstream.read()
            log.warning("upstream %s answered %d for %s", node.name, upstream.status, model)
            if upstream.status >= 500:
                metrics.request_errors(model, node.name).inc()
            try:
                body = orjson.loads(raw)
            except orjson.JSONDecodeError:
                body = None
            raise upstream_error(upstream.status, body, upstream.headers.get("retry-after"))
        streaming = upstream.headers.get("content-type", "").startswith("text/event-stream")
        headers = ctx.helexa_headers()
        prompt = upstream.headers.get(PROMPT_HEADER)
        if prompt is not None:
            headers[PROMPT_HEADER] = prompt  # neuron → client, as on the OpenAI routes
        observer = TokenObserver(
            ctx.started,
            streaming,
            lambda o, p, c: proxy.accounting.finish(ctx, o, p, c),
            prompt_hint=prompt_header(prompt),
        )
        ctx.status = 200
        try:
            if not streaming:
                return await _whole(proxy, upstream, observer, ctx, headers)
            return await _stream(request, proxy, upstream, observer, ctx, headers)
        finally:
            observer.finish()
    finally:
        upstream.close()


async def _whole(
    proxy: Proxy,
    upstream: Response,
    observer: TokenObserver,
    ctx: RequestContext,
    headers: dict[str, str],
) -> web.Response:
    raw = await proxy.read_whole(upstream, ctx)
    observer.feed(raw)
    try:
        reply = translate_response(orjson.loads(raw), ctx.model or "", message_id())
    except ValueError as e:  # includes orjson.JSONDecodeError
        log.warning("malformed upstream reply for %s: %s: %.512r", ctx.model, e, raw)
        raise errors.upstream_malformed() from None
    return web.Response(body=orjson.dumps(reply), content_type="application/json", headers=headers)


async def _stream(
    request: web.Request,
    proxy: Proxy,
    upstream: Response,
    observer: TokenObserver,
    ctx: RequestContext,
    headers: dict[str, str],
) -> web.StreamResponse:
    model, node = ctx.routed()
    prompt = upstream.headers.get(PROMPT_HEADER, "0")
    machine = AnthropicStream(model, message_id(), int(prompt) if prompt.isdigit() else 0)
    resp = web.StreamResponse(status=200, headers={**sse.HEADERS, **headers})
    await resp.prepare(request)
    try:
        failure = await _relay(resp, proxy, upstream, observer, machine)
    except ClientGone:  # the client hung up: nothing to tell it, the node did nothing wrong
        log.debug("client left /v1/messages mid-stream (request %s)", ctx.request_id)
        return resp
    if failure is not None:
        log.warning("messages stream for %s failed mid-stream: %s", model, failure)
        proxy.metrics.request_errors(model, node.name).inc()
        ctx.status = 502
    return resp


async def _relay(
    resp: web.StreamResponse,
    proxy: Proxy,
    upstream: Response,
    observer: TokenObserver,
    machine: AnthropicStream,
) -> str | None:
    """Translate the upstream stream onto `resp`; the failure to report, if any. Raises
    ClientGone when the client hangs up."""
    write = resp.write
    await to_client(write(machine.start()))
    decoder = sse.SSEDecoder()
    content = upstream.content
    failure: str | None = None
    clock = asyncio.get_running_loop().time
    last_event = clock()
    try:
        while not machine.finished:
            # A ping goes out after PING_AFTER_SECS without an event to the client, however
            # busy the upstream is with frames that translate to nothing.
            quiet = PING_AFTER_SECS - (clock() - last_event)
            if quiet <= 0:
                await to_client(write(PING))
                last_event = clock()
                continue
            try:
                async with asyncio.timeout(quiet) as idle:
                    chunk = await content.readany()
            except TimeoutError:
                if idle.expired():
                    continue
                raise
            if not chunk:
                break
            observer.feed(chunk)
            out = b"".join(machine.feed(data) for _, data in decoder.feed(chunk))
            if out:
                await to_client(write(out))
                last_event = clock()
        if machine.failed:
            failure = "upstream sent an error frame"
        elif not machine.finished:
            if machine.finish_reason is None:
                failure = "upstream ended before the message finished"
            await to_client(write(machine.end()))
    except TimeoutError:
        secs = proxy.settings.request_timeout_secs
        failure = f"stalled for {secs:g}s"
        await to_client(write(machine.fail(f"upstream stream stalled for {secs:g}s")))
    except aiohttp.ClientError as e:
        failure = repr(e)
        await to_client(write(machine.fail("upstream connection lost mid-stream")))
    await to_client(resp.write_eof())
    return failure


async def count_tokens(
    proxy: Proxy,
    ctx: RequestContext,
    model_id: str,
    chat: dict[str, Any],
    load_id: str | None,
    gguf_quant: str | None = None,
) -> web.Response:
    """Count with the model's own tokenizer and template on a neuron; loads nothing.
    `gguf_quant` picks a GGUF repo's file (whose header holds the tokenizer)."""
    node = proxy.router.tokenizer_node(model_id)
    ctx.model, ctx.node = model_id, node
    body: dict[str, Any] = {"model": model_id, "messages": chat["messages"]}
    if load_id is not None:
        body["model_id"] = load_id
    if gguf_quant is not None:
        body["quant"] = gguf_quant
    # The chat route renders no tools under tool_choice "none", so they are not counted either.
    if "tools" in chat and chat.get("tool_choice") != "none":
        body["tools"] = chat["tools"]
    if "chat_template_kwargs" in chat:
        body["chat_template_kwargs"] = chat["chat_template_kwargs"]
    client = proxy.router.client
    try:
        reply = await client.call(
            node, "POST", "/tokenize", proxy.settings.request_timeout_secs, body
        )
    except NeuronCallError as e:
        if e.kind == "http" and e.status is not None:
            raise upstream_error(e.status, e.payload, None) from None
        if e.kind == "timeout":
            raise errors.upstream_timeout(proxy.settings.request_timeout_secs) from None
        log.warning("tokenize of %s on %s failed: %s", model_id, node.name, e)
        raise errors.upstream_connection_error() from None
    count = reply.get("count") if isinstance(reply, dict) else None
    if not isinstance(count, int):
        log.warning("tokenize of %s on %s: no count in %.200r", model_id, node.name, reply)
        raise errors.upstream_malformed()
    return web.Response(
        body=orjson.dumps({"input_tokens": count}),
        content_type="application/json",
        headers=ctx.helexa_headers(),
    )
