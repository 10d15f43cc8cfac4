"""Idle TTL: models nobody has used for their `keep_alive` are unloaded.

The TTL of a (node, model) is the last request's `keep_alive` while that load lasts, else the
catalogue's `keep_alive_secs`; without either a model stays loaded until evicted for room.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import time
from typing import Any

import orjson

from helexa.config.catalogue import Catalogue
from helexa.cortex import errors
from helexa.cortex.context import RequestContext
from helexa.cortex.fleet import Fleet, ModelState, NodeState
from helexa.cortex.lifecycle import Lifecycle
from helexa.cortex.metrics import CortexMetrics
from helexa.cortex.neuron_client import NeuronCallError
from helexa.wire.errors import ApiError

log = logging.getLogger("helexa.cortex.idle")
_UNIT_SECS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
_DURATION = re.compile(rf"(?:{_NUMBER}(?:ms|s|m|h))+")
_PART = re.compile(rf"({_NUMBER})(ms|s|m|h)")
_PLAIN = re.compile(_NUMBER)


def _invalid(value: Any) -> ApiError:
    shown = value if isinstance(value, str) else orjson.dumps(value).decode()
    if len(shown) > 64:
        shown = shown[:64] + "..."
    return errors.invalid_value(
        "keep_alive", f"invalid keep_alive '{shown}': use seconds or a duration like '5m'"
    )


def _duration(text: str) -> float | None:
    """Seconds in "300", "30s", "5m", "1h30m" (Go-style, as Ollama clients send); None if not."""
    if _PLAIN.fullmatch(text):
        return float(text)
    if _DURATION.fullmatch(text):
        return sum(float(n) * _UNIT_SECS[u] for n, u in _PART.findall(text))
    return None


def parse_keep_alive(value: Any) -> float | None:
    """A request's `keep_alive` as seconds: None when absent, math.inf for "never" (negative);
    anything else is a 400 invalid_value."""
    if value is None:
        return None
    secs: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        secs = float(value)
    elif isinstance(value, str):
        text = value.strip()
        negative = text.startswith("-")
        secs = _duration(text[1:] if negative else text)
        if secs is not None and negative:
            secs = -secs
    if secs is None or math.isnan(secs):
        raise _invalid(value)
    return math.inf if secs < 0 else secs


class IdleReaper:
    """Every `idle_check_secs`, unload what has sat idle past its TTL (and isn't pinned there)."""

    def __init__(
        self,
        fleet: Fleet,
        catalogue: Catalogue,
        lifecycle: Lifecycle,
        metrics: CortexMetrics,
        interval: float,
    ) -> None:
        self.fleet = fleet
        self.catalogue = catalogue
        self.lifecycle = lifecycle
        self.metrics = metrics
        self.interval = interval
        self._seen: dict[tuple[str, str], float] = {}  # first sighting of never-used models
        self._kick = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def note(self, ctx: RequestContext, ttl: float | None) -> None:
        """A request ended: its `keep_alive` becomes the TTL where it ran; `0` unloads now."""
        if ttl is None or not ctx.dispatched or ctx.node is None or ctx.model is None:
            return
        state = ctx.node.models.get(ctx.model)
        if state is not None:
            state.keep_alive = ttl
            if ttl == 0:
                self._kick.set()  # the sweep runs after this request's in-flight mark is gone

    def ttl(self, node: NodeState, model_id: str, state: ModelState) -> float:
        """Seconds of idleness before an unload; math.inf when never."""
        profile = self.catalogue.get(model_id)
        if profile is not None and node.name in profile.pinned_on:
            return math.inf
        ttl = state.keep_alive
        if ttl is None and profile is not None:
            ttl = profile.keep_alive_secs
        if ttl is None or ttl < 0:
            return math.inf
        return ttl

    def _expired(self, node: NodeState, model_id: str, now: float) -> bool:
        state = node.models.get(model_id)
        if state is None or state.status != "loaded" or state.evicting:
            self._seen.pop((node.name, model_id), None)
            return False
        if node.busy(model_id) or self.lifecycle.flight(model_id) is not None:
            return False
        ttl = self.ttl(node, model_id, state)
        if ttl == math.inf:
            return False
        since = state.last_accessed
        if since is None:  # loaded by the neuron itself and never used: idle since first seen
            since = self._seen.setdefault((node.name, model_id), now)
        return now >= since + ttl

    async def sweep(self) -> None:
        """One pass over the healthy fleet, nodes in parallel."""
        await asyncio.gather(*(self._sweep_node(node) for node in self.fleet.healthy()))

    async def _sweep_node(self, node: NodeState) -> None:
        if node.placement_lock.locked():
            return  # a load there may take minutes and may evict what is idle: next sweep
        async with node.placement_lock:
            for model_id in list(node.models):
                if self._expired(node, model_id, time.time()):
                    await self._unload(node, model_id)

    async def _unload(self, node: NodeState, model_id: str) -> None:
        try:
            await self.lifecycle.unload(node, model_id)
        except NeuronCallError as e:
            log.warning("idle unload of %s on %s failed: %s", model_id, node.name, e)
            return
        self.metrics.evictions(node.name, model_id).inc()
        log.info("unloaded %s from %s: idle past its keep_alive", model_id, node.name)

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="cortex-idle-reaper")

    async def _loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval):
                    await self._kick.wait()
            self._kick.clear()
            try:
                await self.sweep()
            except Exception:
                log.exception("idle sweep failed")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
