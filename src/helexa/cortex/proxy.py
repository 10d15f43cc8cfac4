"""Byte-for-byte proxying to a neuron, with failover before the first byte.

The body is relayed chunk by chunk as it arrives and never re-serialised; SSE is parsed only by
the token observer's tail scan, once, at the end.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable

import aiohttp
import orjson
from aiohttp import web
from multidict import CIMultiDict

from helexa.config.cortex import GatewaySettings
from helexa.cortex import errors
from helexa.cortex.accounting import Accounting
from helexa.cortex.context import RequestContext
from helexa.cortex.fleet import NodeState
from helexa.cortex.metrics import CortexMetrics
from helexa.cortex.observer import PROMPT_HEADER, TokenObserver, prompt_header
from helexa.cortex.poller import Poller
from helexa.cortex.router import NodeUnreachable, Router
from helexa.cortex.stream_usage import UsageStripper
from helexa.cortex.upstream import Response, UpstreamConnectError, UpstreamPool
from helexa.wire import sse
from helexa.wire.errors import API_ERROR, ApiError

log = logging.getLogger("helexa.cortex.proxy")

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "content-length",
        "date",
        "server",
    }
)
WHOLE_BODY_MAX = 1 << 20  # non-streaming replies up to this size are sent in one write
CRASH_REPLY_MAX = 1 << 16  # a 503 up to this size is looked into for `worker_crashed`
FORWARDED = ("content-type", "accept", "traceparent", "tracestate")
_CONNECT_ERRORS = (UpstreamConnectError, aiohttp.ConnectionTimeoutError)
_BEFORE_HEADERS = (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)


class UpstreamUnavailable(Exception):
    """An upstream 503 before any byte reached the client: a fallback may serve."""


def error_code(raw: bytes) -> str | None:
    """The `error.code` of an error envelope, or None."""
    try:
        env = orjson.loads(raw).get("error")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    code = env.get("code") if isinstance(env, dict) else None
    return code if isinstance(code, str) else None


class ClientGone(Exception):
    """Writing to the client failed: it hung up (not the node's failure)."""


async def to_client(write: Awaitable[None]) -> None:
    try:
        await write
    except ConnectionResetError:  # aiohttp's ClientConnectionResetError is one too
        raise ClientGone from None


def midstream_error(path: str, code: str, message: str) -> bytes:
    """The route's own error frame for a failure after the status was sent."""
    if path == "/v1/responses":
        payload = {"type": "error", "code": code, "message": message, "param": None}
        return sse.event_frame("error", orjson.dumps(payload))
    return sse.error_frame(ApiError(502, code, message, type=API_ERROR))


class Proxy:
    def __init__(
        self,
        upstream: UpstreamPool,
        router: Router,
        poller: Poller,
        metrics: CortexMetrics,
        gateway: GatewaySettings,
        accounting: Accounting,
    ) -> None:
        self.upstream = upstream
        self.router = router
        self.poller = poller
        self.metrics = metrics
        self.settings = gateway
        self.accounting = accounting

    def upstream_headers(
        self, request: web.Request, ctx: RequestContext, node: NodeState
    ) -> dict[str, str]:
        src = request.headers
        h = {k: src[k] for k in FORWARDED if k in src}
        h["x-request-id"] = ctx.request_id
        h["accept-encoding"] = "identity"
        if ctx.principal is not None:
            h["x-helexa-account-id"] = ctx.principal.account_id
            h["x-helexa-key-id"] = ctx.principal.key_id
        if node.token:
            h["authorization"] = f"Bearer {node.token}"
        return h

    async def open(
        self, request: web.Request, ctx: RequestContext, path: str, body: bytes
    ) -> Response:
        """Send the request and wait for the upstream headers, failing over once."""
        model = ctx.routed()[0]
        failed_over = False
        while True:
            node = ctx.routed()[1]
            try:
                url = await self.router.endpoint(node, model) + path
                headers = self.upstream_headers(request, ctx, node)
                ctx.mark_dispatch()
                ctx.sent = True
                resp = await self.upstream.post(url, body, headers)
                other = None if failed_over else await self._crash_replica(resp, model, node)
                if other is None:
                    return resp
                log.warning("worker for %s on %s crashed before replying", model, node.name)
                self.metrics.request_errors(model, node.name).inc()
            except (*_CONNECT_ERRORS, *_BEFORE_HEADERS, NodeUnreachable) as e:
                if isinstance(e, (*_CONNECT_ERRORS, NodeUnreachable)):
                    self.poller.mark_unreachable(node)
                log.warning("upstream %s for %s failed before headers: %r", node.name, model, e)
                self.metrics.request_errors(model, node.name).inc()
                if failed_over:
                    raise errors.upstream_connection_error() from None
                other = self.router.replica(model, node)
                if other is None:
                    raise errors.unreachable_no_replica(node.name, model) from None
            except TimeoutError:
                self.metrics.request_errors(model, node.name).inc()
                raise errors.upstream_timeout(self.settings.request_timeout_secs) from None
            except aiohttp.ClientError as e:
                log.warning("upstream %s for %s failed: %r", node.name, model, e)
                self.metrics.request_errors(model, node.name).inc()
                raise errors.upstream_connection_error() from None
            self.metrics.failovers(model).inc()
            failed_over = True
            self.accounting.move(ctx, other)

    async def _crash_replica(self, resp: Response, model: str, node: NodeState) -> NodeState | None:
        """Another replica when the node's worker crashed before replying (a small 503
        `worker_crashed`): nothing reached the client, so like a connect failure the request
        may run once elsewhere. Otherwise the reply stays as it was, body included."""
        clen = resp.content_length
        if resp.status != 503 or clen is None or clen > CRASH_REPLY_MAX:
            return None
        other = self.router.replica(model, node)
        if other is None:
            return None
        try:
            raw = await resp.read()
        except BaseException:
            resp.close()
            raise
        if error_code(raw) != "worker_crashed":
            resp.content.unread(raw)
            return None
        resp.close()
        return other

    async def passthrough(
        self,
        request: web.Request,
        ctx: RequestContext,
        path: str,
        body: bytes,
        fall_back: bool = False,
    ) -> web.StreamResponse:
        """Relay the reply; with `fall_back`, an upstream 503 raises UpstreamUnavailable."""
        upstream = await self.open(request, ctx, path, body)
        model, node = ctx.routed()
        try:
            self.metrics.duration(model, node.name).observe(time.perf_counter() - ctx.started)
            status = upstream.status
            if status >= 400:
                log.warning("upstream %s answered %d for %s", node.name, status, model)
                if status >= 500:
                    self.metrics.request_errors(model, node.name).inc()
                if status == 503 and fall_back:
                    raise UpstreamUnavailable(f"node '{node.name}' answered 503")
            headers = self._response_headers(upstream, ctx)
            ctype = upstream.headers.get("content-type", "")
            streaming = ctype.startswith("text/event-stream")
            observer = TokenObserver(
                ctx.started,
                streaming,
                lambda o, p, c: self.accounting.finish(ctx, o, p, c),
                responses_keys=path == "/v1/responses",
                prompt_hint=prompt_header(upstream.headers.get(PROMPT_HEADER)),
                ok=status < 400,
            )
            ctx.status = status
            clen = upstream.content_length
            if not streaming and clen is not None and clen <= WHOLE_BODY_MAX:
                return await self._whole(upstream, observer, ctx, headers)
            resp = web.StreamResponse(status=status, reason=upstream.reason, headers=headers)
            if clen is not None and not (streaming and ctx.strip_usage):
                resp.content_length = clen
            await resp.prepare(request)
            try:
                await self._relay(request, upstream, resp, observer, ctx, path)
            finally:
                observer.finish()
            return resp
        finally:
            upstream.close()

    @staticmethod
    def _response_headers(upstream: Response, ctx: RequestContext) -> CIMultiDict[str]:
        out: CIMultiDict[str] = CIMultiDict()
        for k, v in upstream.headers.items():
            if k.lower() not in HOP_BY_HOP:
                out.add(k, v)
        for k, v in ctx.helexa_headers().items():
            out[k] = v
        return out

    async def read_whole(self, upstream: Response, ctx: RequestContext) -> bytes:
        """Read a whole reply body. If the upstream dies while sending it, nothing has reached
        the client yet, so it gets a proper 502 (or 504) envelope."""
        model, node = ctx.routed()
        try:
            return await upstream.read()
        except (TimeoutError, aiohttp.ClientError) as e:
            log.warning("upstream %s lost while sending a reply: %r", node.name, e)
            self.metrics.request_errors(model, node.name).inc()
            if isinstance(e, TimeoutError):
                raise errors.upstream_timeout(self.settings.request_timeout_secs) from None
            raise errors.upstream_connection_error() from None

    async def _whole(
        self,
        upstream: Response,
        observer: TokenObserver,
        ctx: RequestContext,
        headers: CIMultiDict[str],
    ) -> web.Response:
        """A small non-streaming reply goes out in one write."""
        raw = await self.read_whole(upstream, ctx)
        observer.feed(raw)
        observer.finish()
        return web.Response(body=raw, status=upstream.status, headers=headers)

    async def _relay(
        self,
        request: web.Request,
        upstream: Response,
        resp: web.StreamResponse,
        observer: TokenObserver,
        ctx: RequestContext,
        path: str,
    ) -> None:
        feed, write = observer.feed, resp.write
        strip = UsageStripper() if ctx.strip_usage and observer.streaming else None
        try:
            async for chunk in upstream.content.iter_any():
                feed(chunk)
                if strip is not None:
                    chunk = strip.feed(chunk)
                    if not chunk:
                        continue
                await to_client(write(chunk))
            if strip is not None and (rest := strip.flush()):
                await to_client(write(rest))
            await to_client(resp.write_eof())
        except ClientGone:
            # The client hung up: nothing to tell it, and the node did nothing wrong. The
            # observer charges what was relayed; closing the upstream cancels the generation.
            log.debug("client left %s mid-stream (request %s)", path, ctx.request_id)
            return
        except TimeoutError:
            secs = self.settings.request_timeout_secs
            await self._fail_midstream(
                request,
                resp,
                ctx,
                path,
                "upstream_timeout",
                f"upstream stream stalled for {secs:g}s",
            )
            return
        except aiohttp.ClientError as e:
            log.warning("upstream %s lost mid-stream: %r", ctx.node and ctx.node.name, e)
            await self._fail_midstream(
                request,
                resp,
                ctx,
                path,
                "upstream_connection_error",
                "upstream connection lost mid-stream",
            )

    async def _fail_midstream(
        self,
        request: web.Request,
        resp: web.StreamResponse,
        ctx: RequestContext,
        path: str,
        code: str,
        message: str,
    ) -> None:
        model, node = ctx.routed()
        self.metrics.request_errors(model, node.name).inc()
        ctx.status = 502
        if resp.content_type != "text/event-stream":
            # A JSON body cut short can't carry an error frame: end the connection so the
            # client sees a truncated reply rather than a silent success.
            if request.transport is not None:
                request.transport.close()
            return
        try:
            await resp.write(midstream_error(path, code, message))
            await resp.write_eof()
        except ConnectionResetError:
            log.debug("client left before the error frame of request %s", ctx.request_id)
