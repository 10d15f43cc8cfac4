"""What cortex knows about each neuron and the models on it: rebuilt from polls, never stored.

Plain dataclasses mutated only from the event loop, so no locks are needed for reads.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from helexa.config.cortex import NeuronRemote
from helexa.wire.neuron import ActivationStatus, DeviceHealth, Discovery, Limit, ModelInfo

KNOWN_STATUSES = frozenset({"loaded", "loading", "recovering", "unloaded", "failed"})
# What a client learns of a failed model: the neuron's own text names files and hosts, so it
# stays in the logs and the admin view.
FAILED_VIEW = {
    "code": "model_failed",
    "message": "the model failed on this node; the operator's logs have the details",
}


def normalise_status(status: str) -> str:
    """`reloading` and any unknown string read as `loaded`, as the original did."""
    return status if status in KNOWN_STATUSES else "loaded"


@dataclass(slots=True)
class ModelState:
    status: str
    last_accessed: float | None = None
    vram_used_mb: int | None = None
    devices: list[int] = field(default_factory=list)
    harness: str | None = None
    quant: str | None = None
    capabilities: list[str] = field(default_factory=list)
    tool_call: bool = False
    reasoning: bool = False
    limit: Limit | None = None
    error: str | None = None
    in_flight: int = 0
    queue_depth: int = 0
    evicting: bool = False
    keep_alive: float | None = None  # the last request's idle TTL for this load


@dataclass(slots=True)
class NodeState:
    name: str
    endpoint: str
    token: str | None
    healthy: bool = False
    last_poll: float | None = None
    discovery: Discovery | None = None
    discovery_at: float | None = None
    activation: ActivationStatus | None = None
    devices_health: list[DeviceHealth] | None = None
    lifecycle_cycles: int = 0
    models: dict[str, ModelState] = field(default_factory=dict)
    local_in_flight: dict[str, int] = field(default_factory=dict)
    endpoint_cache: dict[str, str] = field(default_factory=dict)
    placement_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def status_of(self, model_id: str) -> str | None:
        m = self.models.get(model_id)
        return m.status if m is not None else None

    def busy(self, model_id: str) -> int:
        """max(cortex's live count, neuron's in_flight + queue_depth)."""
        local = self.local_in_flight.get(model_id, 0)
        m = self.models.get(model_id)
        polled = m.in_flight + m.queue_depth if m is not None else 0
        return max(local, polled)

    def activation_loading(self) -> list[str]:
        a = self.activation
        if a is None:
            return []
        ids = list(a.pending)
        if a.in_progress:
            ids.insert(0, a.in_progress)
        return ids

    def is_loading(self, model_id: str) -> bool:
        return self.status_of(model_id) == "loading" or model_id in self.activation_loading()

    def set_healthy(self, healthy: bool) -> None:
        self.healthy = healthy
        if not healthy:
            self.endpoint_cache.clear()

    def set_status(self, model_id: str, status: str) -> None:
        m = self.models.get(model_id)
        if m is None:
            self.models[model_id] = m = ModelState(status=status)
        m.status = status
        if status != "loaded":
            self.endpoint_cache.pop(model_id, None)

    def upsert(self, info: ModelInfo) -> None:
        """Take the neuron's view of a model but keep what only cortex knows (last_accessed)."""
        status = normalise_status(info.status)
        m = self.models.get(info.id)
        if m is None:
            m = self.models[info.id] = ModelState(status=status)
        elif m.status != status and status != "loaded":
            self.endpoint_cache.pop(info.id, None)
        m.status = status
        m.vram_used_mb = info.vram_used_mb
        m.devices = list(info.devices)
        m.harness = info.harness
        m.quant = info.quant
        m.capabilities = list(info.capabilities)
        m.tool_call = info.tool_call
        m.reasoning = info.reasoning
        m.limit = info.limit
        m.error = info.error

    def prune(self, keep: set[str]) -> None:
        for model_id in [k for k in self.models if k not in keep]:
            del self.models[model_id]
            self.endpoint_cache.pop(model_id, None)

    def free_by_device(self) -> dict[int, int] | None:
        """Measured free memory per device index, or None when no /health has arrived."""
        if self.devices_health is None:
            return None
        return {d.index: d.vram_free_mb or 0 for d in self.devices_health}

    def _activation(self, details: bool) -> dict[str, Any] | None:
        if self.activation is None:
            return None
        view = self.activation.model_dump()
        if not details:
            for f in view["failed"]:
                f["error"] = FAILED_VIEW["message"]
        return view

    def as_api(self, details: bool) -> dict[str, Any]:
        """The `/api/fleet` view of this node; `details`: the neuron's error text (admins)."""
        return {
            "name": self.name,
            "endpoint": self.endpoint,
            "healthy": self.healthy,
            "last_poll": int(self.last_poll) if self.last_poll else None,
            "discovery": self.discovery.model_dump() if self.discovery else None,
            "devices": [d.model_dump() for d in self.devices_health or []],
            "activation": self._activation(details),
            "lifecycle_cycles": self.lifecycle_cycles,
            "models": [
                {
                    "id": mid,
                    "status": m.status,
                    "vram_used_mb": m.vram_used_mb,
                    "devices": m.devices,
                    "last_accessed": int(m.last_accessed) if m.last_accessed else None,
                    "in_flight": self.busy(mid),
                    "queue_depth": m.queue_depth,
                    "error": m.error if details or m.error is None else FAILED_VIEW,
                }
                for mid, m in sorted(self.models.items())
            ],
        }


class Fleet:
    """All configured neurons, in name order, plus cross-node memory observations."""

    def __init__(self, neurons: list[NeuronRemote]) -> None:
        self.nodes: dict[str, NodeState] = {
            n.name: NodeState(name=n.name, endpoint=n.endpoint, token=n.token)
            for n in sorted(neurons, key=lambda n: n.name)
        }
        self.max_vram_seen: dict[str, int] = {}

    def __iter__(self) -> Iterator[NodeState]:
        return iter(self.nodes.values())

    def healthy(self) -> list[NodeState]:
        return [n for n in self.nodes.values() if n.healthy]

    def observe_vram(self, model_id: str, mb: int | None) -> None:
        if mb is not None and mb > self.max_vram_seen.get(model_id, -1):
            self.max_vram_seen[model_id] = mb
