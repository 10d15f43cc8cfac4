"""Fallback chains: when a model can't serve right now, try the next one.

Only a 503 before any byte reached the client falls back: the model is busy, loading elsewhere
or unreachable. A 404, another 4xx, a 502, a 504 or a failure mid-stream is the answer itself.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from helexa.config.catalogue import Catalogue
from helexa.cortex.accounting import Accounting
from helexa.cortex.context import RequestContext
from helexa.cortex.proxy import UpstreamUnavailable
from helexa.wire.errors import ApiError

log = logging.getLogger("helexa.cortex.fallback")
# Routes a requested name onto ctx (model, node) and marks it dispatched.
Route = Callable[[str], Awaitable[None]]
# Sends the request to ctx's (node, model); given whether an upstream 503 may fall back.
Attempt = Callable[[bool], Awaitable[web.StreamResponse]]


async def with_fallbacks(
    catalogue: Catalogue,
    accounting: Accounting,
    ctx: RequestContext,
    requested: str,
    route: Route,
    attempt: Attempt,
) -> web.StreamResponse:
    """Serve `requested`, then each fallback of its concrete id in turn while the failure is a
    503; the last candidate's failure is the client's answer."""
    names = [requested, *catalogue.fallbacks.get(catalogue.resolve_alias(requested), ())]
    last = len(names) - 1
    for i, name in enumerate(names):
        try:
            await route(name)
            return await attempt(i < last)
        except (ApiError, UpstreamUnavailable) as e:
            if i == last or (isinstance(e, ApiError) and e.status != 503):
                raise
            nxt = catalogue.resolve_alias(names[i + 1])
            log.warning("%s unavailable (%s); falling back to %s", ctx.model, e, nxt)
            accounting.undispatch(ctx)
            ctx.node, ctx.cold_start, ctx.fallback_model = None, False, nxt
    raise AssertionError("the last candidate returns or raises")
