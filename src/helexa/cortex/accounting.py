"""Per-request bookkeeping: in-flight counts, token metrics, metering and history.

Runs on the event loop only; every inference request passes through `dispatch` (once routed),
`finish` (once the observer has seen the whole reply) and `complete` (always, last).
"""

from __future__ import annotations

import collections
import time
from typing import Any

from helexa.cortex.auth import LocalProvider
from helexa.cortex.context import RequestContext
from helexa.cortex.fleet import NodeState
from helexa.cortex.metrics import CortexMetrics
from helexa.cortex.observer import TokenObserver

HISTORY_SIZE = 1000


class Accounting:
    def __init__(self, metrics: CortexMetrics, auth: LocalProvider) -> None:
        self.metrics = metrics
        self.auth = auth
        self.history: collections.deque[dict[str, Any]] = collections.deque(maxlen=HISTORY_SIZE)

    def _busy(self, node: NodeState, model: str, delta: int) -> None:
        n = node.local_in_flight[model] = max(0, node.local_in_flight.get(model, 0) + delta)
        self.metrics.in_flight(node.name, model).set(n)

    def dispatch(self, ctx: RequestContext) -> None:
        """A routed request is about to go upstream: count it and mark the model busy."""
        model, node = ctx.routed()
        self.metrics.requests(model, node.name).inc()
        if ctx.cold_start:
            self.metrics.cold_starts(model, node.name).inc()
        self._busy(node, model, +1)
        ctx.dispatched = True
        state = node.models.get(model)
        if state is not None:
            state.last_accessed = time.time()

    def finish(
        self, ctx: RequestContext, obs: TokenObserver, prompt: int | None, completion: int | None
    ) -> None:
        """The token observer's sink: metrics, metering, last_accessed. Counts are
        None when the reply carried no usage (cut short, or an error)."""
        node, model = ctx.node, ctx.model
        charge: int | None
        if prompt is not None or completion is not None:
            prompt, completion = prompt or 0, completion or 0
            charge = prompt + completion
        elif not obs.ok:
            prompt = completion = charge = 0  # the node refused it: nothing was generated
        elif obs.prompt_hint is not None and (obs.streaming or ctx.status >= 500):
            # Cut short (the client left, the node died): what was observably used, the
            # prompt and a token per stream frame relayed.
            prompt, completion = obs.prompt_hint, obs.frames
            charge = prompt + completion
        else:
            prompt = completion = 0
            # A body the client left before its usage: unknown, so the whole reservation.
            charge = 0 if ctx.status >= 500 else None
        ctx.prompt_tokens, ctx.completion_tokens = prompt, completion
        if node is not None and model is not None:
            m = self.metrics
            if obs.streaming:
                ttft = obs.ttft()
                ctx.ttft = ttft
                if ttft is not None:
                    m.ttft(model, node.name).observe(ttft)
            if prompt:
                m.prompt_tokens(model, node.name).inc(prompt)
            if completion:
                m.completion_tokens(model, node.name).inc(completion)
                tps = obs.tokens_per_second(completion)
                if tps is not None:
                    m.tps(model, node.name).observe(tps)
            state = node.models.get(model)
            if state is not None:
                state.last_accessed = time.time()
        if ctx.reservation is not None:
            self._charge(ctx, charge)

    def _charge(self, ctx: RequestContext, charge: int | None) -> None:
        """Settle the reservation (None: all of it); spend metrics show what was charged."""
        res = ctx.reservation
        if res is None or not res.open:
            return
        charged = self.auth.settle(res, res.tokens if charge is None else charge)
        p = res.principal
        prompt = min(ctx.prompt_tokens, charged)
        self.metrics.spend(p.account_id, p.key_id).inc(charged)
        self.metrics.spend_prompt(p.account_id, p.key_id).inc(prompt)
        self.metrics.spend_completion(p.account_id, p.key_id).inc(charged - prompt)

    def complete(self, ctx: RequestContext) -> None:
        """Always runs once per inference request: settle or release what it held, record
        history. A request that reached a node, wasn't refused and left no usage behind (the
        client went away before the reply was read) is charged its whole reservation."""
        res = ctx.reservation
        if res is not None and res.open:
            if ctx.sent and ctx.status < 400:
                self._charge(ctx, None)
            else:
                self.auth.release(res)
        self.undispatch(ctx)
        if ctx.status in (401, 403):
            return  # refused before it was anyone's request: no history of probes
        node, model = ctx.node, ctx.model
        now = time.perf_counter()
        self.history.append(
            {
                "ts": int(time.time()),
                "request_id": ctx.request_id,
                "route": ctx.path,
                "model": model,
                "node": node.name if node is not None else None,
                "status": ctx.status,
                "duration_ms": round((now - ctx.started) * 1000, 3),
                "ttft_ms": round(ctx.ttft * 1000, 3) if ctx.ttft is not None else None,
                "prompt_tokens": ctx.prompt_tokens,
                "completion_tokens": ctx.completion_tokens,
                "cold_start": ctx.cold_start,
                "key_id": ctx.principal.key_id if ctx.principal is not None else None,
            }
        )

    def undispatch(self, ctx: RequestContext) -> None:
        """The request leaves its (node, model): it completed, or a fallback takes over."""
        if ctx.dispatched and ctx.node is not None and ctx.model is not None:
            self._busy(ctx.node, ctx.model, -1)
        ctx.dispatched = False

    def move(self, ctx: RequestContext, new: NodeState) -> None:
        """Failover: the request's busy mark follows it to the replica."""
        model, old = ctx.routed()
        self._busy(old, model, -1)
        self._busy(new, model, +1)
        ctx.node = new
