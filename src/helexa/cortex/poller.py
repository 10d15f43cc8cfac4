"""Keeps the fleet view fresh: discovery, /models and /health of every neuron."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from pydantic import TypeAdapter, ValidationError

from helexa.config.cortex import GatewaySettings
from helexa.cortex.fleet import Fleet, NodeState
from helexa.cortex.metrics import CortexMetrics
from helexa.cortex.neuron_client import NeuronCallError, NeuronClient
from helexa.wire.neuron import Discovery, Health, ModelInfo

log = logging.getLogger("helexa.cortex.poller")
_MODELS = TypeAdapter(list[ModelInfo])


class Poller:
    def __init__(
        self,
        fleet: Fleet,
        client: NeuronClient,
        gateway: GatewaySettings,
        metrics: CortexMetrics,
        on_round: Callable[[], object] | None = None,
    ) -> None:
        self.fleet = fleet
        self.client = client
        self.settings = gateway
        self.metrics = metrics
        self.on_round = on_round  # runs first in every round (the catalogue's change check)
        self._task: asyncio.Task[None] | None = None

    async def poll_all(self) -> None:
        if self.on_round is not None:
            self.on_round()
        await asyncio.gather(*(self.poll_node(n) for n in self.fleet))

    async def poll_node(self, node: NodeState) -> None:
        await self._discovery(node)
        await self.refresh(node)

    async def refresh(self, node: NodeState) -> None:
        """/models then /health: what placement re-reads after it changed a node."""
        await self._models(node)
        await self._health(node)

    async def _discovery(self, node: NodeState) -> None:
        now = time.monotonic()
        due = (
            node.discovery is None
            or node.discovery.max_prompt_tokens == 0
            or node.discovery_at is None
            or now - node.discovery_at >= self.settings.discovery_interval_secs
        )
        if not due:
            return
        try:
            raw = await self.client.call(
                node, "GET", "/discovery", self.settings.probe_timeout_secs
            )
            node.discovery = Discovery.model_validate(raw)
            node.discovery_at = now
        except (NeuronCallError, ValidationError) as e:
            log.debug("discovery of %s failed: %s", node.name, e)

    async def _models(self, node: NodeState) -> None:
        try:
            raw = await self.client.call(node, "GET", "/models", self.settings.probe_timeout_secs)
            infos = _MODELS.validate_python(raw)
        except (NeuronCallError, ValidationError) as e:
            if node.healthy:
                log.warning("node %s unhealthy: /models failed: %s", node.name, e)
            self.set_health(node, False)
            return
        for info in infos:
            node.upsert(info)
            self.fleet.observe_vram(info.id, info.vram_used_mb)
        node.prune({i.id for i in infos})
        node.last_poll = time.time()
        if not node.healthy:
            log.info("node %s healthy", node.name)
        self.set_health(node, True)

    async def _health(self, node: NodeState) -> None:
        try:
            raw = await self.client.call(node, "GET", "/health", self.settings.probe_timeout_secs)
            health = Health.model_validate(raw)
        except (NeuronCallError, ValidationError) as e:
            log.debug("health of %s failed: %s", node.name, e)
            return
        node.activation = health.activation
        node.devices_health = health.devices
        for d in health.devices:
            dev = str(d.index)
            if d.vram_used_mb is not None:
                self.metrics.vram_used(node.name, dev).set(d.vram_used_mb)
            if d.vram_free_mb is not None:
                self.metrics.vram_free(node.name, dev).set(d.vram_free_mb)
        for mh in health.models:
            m = node.models.get(mh.id)
            if m is not None:
                m.in_flight = mh.in_flight
                m.queue_depth = mh.queue_depth
            self.metrics.queue_depth(node.name, mh.id).set(mh.queue_depth)

    def set_health(self, node: NodeState, healthy: bool) -> None:
        node.set_healthy(healthy)
        self.metrics.node_healthy(node.name).set(1 if healthy else 0)

    def mark_unreachable(self, node: NodeState) -> None:
        """Passive health: a connect failure while proxying."""
        if node.healthy:
            log.warning("node %s marked unhealthy after a connect failure", node.name)
        self.set_health(node, False)

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="cortex-poller")

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.poll_interval_secs)
            try:
                await self.poll_all()
            except Exception:
                log.exception("poll round failed")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
