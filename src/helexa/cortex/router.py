"""From a requested model name to a node and an inference URL (see docs/reference.md#routing)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from helexa.config.catalogue import Catalogue
from helexa.config.cortex import GatewaySettings
from helexa.cortex import errors
from helexa.cortex.fleet import Fleet, NodeState
from helexa.cortex.lifecycle import Lifecycle
from helexa.cortex.neuron_client import NeuronCallError, NeuronClient, model_path

log = logging.getLogger("helexa.cortex.router")
_LOOPBACK = frozenset({"localhost", "127.0.0.1", "0.0.0.0", "::1"})


class NodeUnreachable(Exception):
    """The neuron could not be reached to resolve an endpoint: a connect failure."""


@dataclass(slots=True)
class Route:
    node: NodeState
    model_id: str
    cold_start: bool


def rewrite_loopback(url: str, neuron_endpoint: str) -> str:
    """A neuron that reports a loopback bind URL is reachable at its configured host."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
        port = parts.port
    except ValueError:
        return url
    if not parts.scheme or host is None or host not in _LOOPBACK:
        return url
    try:
        target = urlsplit(neuron_endpoint).hostname
    except ValueError:
        return url
    if not target:
        return url
    netloc = f"[{target}]" if ":" in target else target
    if port is not None:
        netloc += f":{port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment)).rstrip("/")


def least_busy(nodes: list[NodeState], model_id: str) -> NodeState | None:
    return min(nodes, key=lambda n: (n.busy(model_id), n.name), default=None)


def serving(node: NodeState, model_id: str) -> bool:
    m = node.models.get(model_id)
    return m is not None and m.status == "loaded" and not m.evicting


class Router:
    def __init__(
        self,
        fleet: Fleet,
        catalogue: Catalogue,
        lifecycle: Lifecycle,
        client: NeuronClient,
        gateway: GatewaySettings,
    ) -> None:
        self.fleet = fleet
        self.catalogue = catalogue
        self.lifecycle = lifecycle
        self.client = client
        self.settings = gateway

    async def resolve(self, requested: str) -> Route:
        model_id = self.catalogue.resolve_alias(requested)
        healthy = self.fleet.healthy()
        if not healthy:
            raise errors.no_healthy_nodes()
        best = least_busy([n for n in healthy if serving(n, model_id)], model_id)
        if best is not None:
            return Route(best, model_id, False)
        lc = self.lifecycle
        flight = lc.flight(model_id)
        if flight is not None:
            return Route(await asyncio.shield(flight), model_id, True)
        loading = [n for n in healthy if n.is_loading(model_id)]
        if loading:
            node = await lc.single_flight(model_id, lambda: lc.join(loading[0], model_id))
            return Route(node, model_id, True)
        for n in healthy:
            if n.status_of(model_id) == "recovering":
                raise errors.recovering(model_id, n.name)
        profile = self.catalogue.get(model_id)
        if profile is not None:
            node = await lc.single_flight(model_id, lambda: lc.place(profile))
            return Route(node, model_id, True)
        unloaded = [n for n in healthy if n.status_of(model_id) == "unloaded"]
        if unloaded:
            node = await lc.single_flight(model_id, lambda: lc.load_known(model_id, unloaded))
            return Route(node, model_id, True)
        failed = [n for n in healthy if n.status_of(model_id) == "failed"]
        if failed and all(n.healthy for n in self.fleet if model_id in n.models):
            raise errors.marked_failed(model_id, failed[0].name)  # a retry cannot succeed
        if any(model_id in n.models or n.is_loading(model_id) for n in self.fleet):
            raise errors.no_healthy_neuron(model_id)
        raise errors.model_not_found(model_id)

    def tokenizer_node(self, model_id: str) -> NodeState:
        """Where to count tokens without loading anything."""
        healthy = self.fleet.healthy()
        if not healthy:
            raise errors.no_healthy_nodes()
        best = least_busy([n for n in healthy if serving(n, model_id)], model_id)
        if best is not None:
            return best
        for n in healthy:
            if model_id in n.models or n.is_loading(model_id):
                return n
        profile = self.catalogue.get(model_id)
        if profile is not None:
            return self.lifecycle.candidates(profile)[0].node
        if any(model_id in n.models or n.is_loading(model_id) for n in self.fleet):
            raise errors.no_healthy_neuron(model_id)
        raise errors.model_not_found(model_id)

    def replica(self, model_id: str, exclude: NodeState) -> NodeState | None:
        """Another healthy node serving the model, for failover."""
        others = [n for n in self.fleet.healthy() if n is not exclude and serving(n, model_id)]
        return least_busy(others, model_id)

    async def endpoint(self, node: NodeState, model_id: str) -> str:
        cached = node.endpoint_cache.get(model_id)
        if cached is not None:
            return cached
        try:
            reply = await self.client.call(
                node, "GET", model_path(model_id, "/endpoint"), self.settings.probe_timeout_secs
            )
        except NeuronCallError as e:
            log.warning("endpoint of %s on %s failed: %s", model_id, node.name, e)
            if e.kind == "unreachable":
                raise NodeUnreachable(node.name) from None
            raise errors.endpoint_failed(model_id, node.name) from None
        url = reply.get("url") if isinstance(reply, dict) else None
        if not isinstance(url, str) or not url:
            log.warning("endpoint of %s on %s: no url in reply", model_id, node.name)
            raise errors.endpoint_failed(model_id, node.name)
        url = rewrite_loopback(url, node.endpoint)
        if serving(node, model_id):
            node.endpoint_cache[model_id] = url
        return url
