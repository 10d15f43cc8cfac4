"""The cortex test harness: a real gateway on an ephemeral loopback port.

Lives outside conftest.py so tests import it by a unique module name (several conftest.py files
exist in this tree).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from helexa.cortex.gateway import Gateway

NODE_TOKEN = "node-secret"


@dataclass
class Cortex:
    """A running gateway: its Gateway object, its URLs, and metric helpers."""

    gw: Gateway
    url: str
    metrics_url: str

    @property
    def base(self) -> str:
        return self.url + "/v1"

    def metric(self, name: str, **labels: str) -> float:
        v = self.gw.metrics.registry.get_sample_value(name, labels)
        return 0.0 if v is None else v

    async def poll(self) -> None:
        await self.gw.poller.poll_all()


CortexFactory = Callable[..., Awaitable[Cortex]]
