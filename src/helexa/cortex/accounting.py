"""Per-request bookkeeping: in-flight counts, token metrics, metering and history.

Runs on the event loop only; every inference request passes through `dispatch` (once routed),
`finish` (once the observer has seen the whole reply) and `complete` (always, last).
"""

from __future__ import annotations

import collections
import math
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

    def finish(self, ctx: RequestContext, obs: TokenObserver, prompt: int, completion: int) -> None:
        """The token observer's sink: metrics, metering, last_accessed (§1.7, §1.13)."""
        node, model = ctx.node, ctx.model
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
        if ctx.reservation is not None and ctx.principal is not None:
            self.auth.settle(ctx.reservation, prompt + completion)
            p = ctx.principal
            self.metrics.spend(p.account_id, p.key_id).inc(prompt + completion)
            self.metrics.spend_prompt(p.account_id, p.key_id).inc(prompt)
            self.metrics.spend_completion(p.account_id, p.key_id).inc(completion)

    def complete(self, ctx: RequestContext) -> None:
        """Always runs once per inference request: release what it held, record history."""
        if ctx.reservation is not None:
            self.auth.release(ctx.reservation)
        self.undispatch(ctx)
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

    @staticmethod
    def reserve_estimate(body_len: int, obj: dict[str, Any]) -> int:
        """Prompt estimate + output cap, reserved before dispatch (§1.13 enforcement)."""
        max_out = 4096
        for key in ("max_tokens", "max_completion_tokens", "max_output_tokens"):
            v = obj.get(key)
            if isinstance(v, int) and not isinstance(v, bool) and v >= 0:
                max_out = v
                break
        return math.ceil(body_len / 4) + max_out
