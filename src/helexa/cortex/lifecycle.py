"""Loads and unloads on neurons: placement, eviction, single-flight cold starts."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from helexa.config.catalogue import Catalogue, ModelProfile
from helexa.config.cortex import CortexConfig
from helexa.cortex import errors
from helexa.cortex.fleet import Fleet, ModelState, NodeState
from helexa.cortex.metrics import CortexMetrics
from helexa.cortex.neuron_client import NeuronCallError, NeuronClient
from helexa.cortex.placement import Candidate, evaluate, is_feasible_on, rank, required_mb
from helexa.cortex.poller import Poller
from helexa.wire.advice import get_model_advice
from helexa.wire.errors import ApiError
from helexa.wire.neuron import LoadReply, ModelSpec

log = logging.getLogger("helexa.cortex.lifecycle")
UNLOAD_TIMEOUT_SECS = 60.0


def _reason(e: NeuronCallError, timeout: float, model_id: str) -> str:
    if e.kind == "unreachable":
        return "neuron unreachable"
    if e.kind == "timeout":
        return f"timed out after {timeout:g}s"
    reason = f"neuron returned HTTP {e.status} ({e.code or 'no code'})"
    if e.code == "model_source_not_found":
        # Our own words, not the neuron's: an offline host needs the files put there.
        reason += f"; the model's files are not on that host: {get_model_advice(model_id)}"
    return reason


class Lifecycle:
    def __init__(
        self,
        fleet: Fleet,
        catalogue: Catalogue,
        config: CortexConfig,
        client: NeuronClient,
        poller: Poller,
        metrics: CortexMetrics,
    ) -> None:
        self.fleet = fleet
        self.catalogue = catalogue
        self.config = config
        self.client = client
        self.poller = poller
        self.metrics = metrics
        self._flights: dict[str, asyncio.Task[NodeState]] = {}

    # -- single flight -------------------------------------------------------------------

    def flight(self, model_id: str) -> asyncio.Task[NodeState] | None:
        return self._flights.get(model_id)

    async def single_flight(
        self, model_id: str, make: Callable[[], Coroutine[Any, Any, NodeState]]
    ) -> NodeState:
        """One cold start per model id; every caller awaits the same outcome. A caller that
        goes away does not cancel the load (shield); a failure is not cached."""
        task = self._flights.get(model_id)
        if task is None:
            task = asyncio.create_task(make(), name=f"cold-start:{model_id}")
            self._flights[model_id] = task
            task.add_done_callback(lambda t: self._done(model_id, t))
        return await asyncio.shield(task)

    def _done(self, model_id: str, task: asyncio.Task[NodeState]) -> None:
        if self._flights.get(model_id) is task:
            del self._flights[model_id]
        if not task.cancelled():
            task.exception()  # retrieved: waiters got it; don't warn if none remain

    # -- the three ways to a cold start ---------------------------------------------------

    async def join(self, node: NodeState, model_id: str) -> NodeState:
        """A model already `loading` on a node: the neuron's single-flight turns this call
        into a wait for that load (see docs/reference.md#routing)."""
        async with node.placement_lock:
            try:
                await self._send_load(node, model_id, ModelSpec(model_id=model_id))
            except NeuronCallError as e:
                raise self._load_error(node, model_id, e) from None
        return node

    def candidates(self, profile: ModelProfile) -> list[Candidate]:
        """Usable nodes for a catalogue model, best first; raises model_not_servable or a 503.
        No side effects, so count_tokens can use it too."""
        model_id = profile.id
        nodes = list(self.fleet)
        feasible = [
            n
            for n in nodes
            if n.discovery is not None and is_feasible_on(profile, n.name, n.discovery.devices)
        ]
        if not feasible:
            if all(n.discovery is not None for n in nodes):
                raise errors.model_not_servable(model_id)
            raise errors.no_healthy_neuron(model_id)
        usable = [
            n
            for n in feasible
            if n.healthy
            and n.discovery is not None
            and n.discovery.cuda_unavailable_reason is None
            and n.status_of(model_id) != "failed"
        ]
        if not usable:
            failed = [n for n in feasible if n.healthy and n.status_of(model_id) == "failed"]
            if failed:
                raise errors.marked_failed(model_id, failed[0].name)
            raise errors.no_healthy_neuron(model_id)
        return rank([self._evaluate(n, profile) for n in usable])

    async def place(self, profile: ModelProfile) -> NodeState:
        """Catalogue cold-load: feasibility, ranking, eviction, load."""
        model_id = profile.id
        node = self.candidates(profile)[0].node
        async with node.placement_lock:
            cand = self._evaluate(node, profile)  # state may have moved while we waited
            required = required_mb(profile, self.fleet)
            if cand.fit == "none" and cand.memory_known and required is not None:
                raise errors.no_room(model_id)
            await self._load_with_room(node, profile, cand, profile.load_spec(cand.devices))
        return node

    async def load_known(self, model_id: str, nodes: list[NodeState]) -> NodeState:
        """A model a neuron knows as `unloaded` but the catalogue doesn't: load it where the
        most memory is free; the neuron reuses the spec it kept (see docs/reference.md#routing)."""

        def free(n: NodeState) -> int:
            return sum((n.free_by_device() or {}).values())

        node = sorted(nodes, key=lambda n: (-free(n), n.name))[0]
        return await self.load_here(node, model_id)

    async def load_here(self, node: NodeState, model_id: str) -> NodeState:
        """Load on a given node, evicting as placement would (admin loads, known models)."""
        profile = self.catalogue.get(model_id)
        async with node.placement_lock:
            if profile is None:
                cand = self._evaluate(node, ModelProfile(id=model_id))
                cand.victims = []  # required memory is unknown: evict only on a 507
                await self._load_with_room(
                    node, ModelProfile(id=model_id), cand, ModelSpec(model_id=model_id)
                )
            else:
                cand = self._evaluate(node, profile)
                await self._load_with_room(node, profile, cand, profile.load_spec(cand.devices))
        return node

    def _evaluate(self, node: NodeState, profile: ModelProfile) -> Candidate:
        ev = self.config.eviction
        return evaluate(
            node,
            profile,
            required_mb(profile, self.fleet),
            self.catalogue,
            ev.strategy,
            ev.max_evictions_per_load,
        )

    # -- eviction + load ------------------------------------------------------------------

    async def _load_with_room(
        self, node: NodeState, profile: ModelProfile, cand: Candidate, spec: ModelSpec
    ) -> None:
        model_id = profile.id
        budget = self.config.eviction.max_evictions_per_load
        evicted = 0
        for victim in cand.victims:
            await self.evict(node, victim, incoming=model_id)
            evicted += 1
        spare = list(cand.spare_victims)
        while True:
            try:
                await self._send_load(node, model_id, spec)
                return
            except NeuronCallError as e:
                if e.status != 507:
                    raise self._load_error(node, model_id, e) from None
                if spare and evicted < budget:
                    await self.evict(node, spare.pop(0), incoming=model_id)
                    evicted += 1
                    continue
                others = [
                    mid
                    for mid, m in node.models.items()
                    if m.status == "loaded" and mid != model_id
                ]
                if others:
                    raise errors.no_room(model_id) from None
                err = e.payload.get("error", {}) if isinstance(e.payload, dict) else {}
                raise errors.cold_load_failed(
                    model_id,
                    node.name,
                    f"insufficient memory ({err.get('required_mb', '?')} MB required, "
                    f"{err.get('free_mb', '?')} MB free)",
                    e.status,
                    e.code,
                ) from None

    def _load_error(self, node: NodeState, model_id: str, e: NeuronCallError) -> ApiError:
        reason = _reason(e, self.config.gateway.cold_load_timeout_secs, model_id)
        return errors.cold_load_failed(model_id, node.name, reason, e.status, e.code)

    async def _send_load(self, node: NodeState, model_id: str, spec: ModelSpec) -> LoadReply:
        """POST /models/load and record the result; raises NeuronCallError."""
        timeout = self.config.gateway.cold_load_timeout_secs
        started = time.monotonic()
        try:
            raw = await self.client.call(
                node, "POST", "/models/load", timeout, spec.model_dump(exclude_unset=True)
            )
            reply = LoadReply.model_validate(raw or {})
        except (NeuronCallError, ValueError) as e:
            call_err = e if isinstance(e, NeuronCallError) else NeuronCallError("bad_json", 200)
            outcome = "timeout" if call_err.kind == "timeout" else "failure"
            self.metrics.loads(node.name, model_id, outcome).inc()
            log.warning("load of %s on %s failed: %s", model_id, node.name, e)
            raise call_err from None
        elapsed = time.monotonic() - started
        self.metrics.loads(node.name, model_id, "success").inc()
        if not reply.already_loaded:
            self.metrics.load_duration(node.name, model_id).observe(elapsed)
        log.info("loaded %s on %s in %.1fs", model_id, node.name, elapsed)
        state = node.models.get(model_id)
        if state is None:
            state = node.models[model_id] = ModelState(status="loaded")
        state.status = "loaded"
        state.evicting = False
        state.last_accessed = time.time()
        if reply.vram_used_mb is not None:
            state.vram_used_mb = reply.vram_used_mb
            self.fleet.observe_vram(model_id, reply.vram_used_mb)
        if reply.devices:
            state.devices = list(reply.devices)
        await self.poller.refresh(node)
        return reply

    async def evict(self, node: NodeState, victim: str, *, incoming: str) -> None:
        """Unload one victim to make room."""
        try:
            await self.unload(node, victim)
        except NeuronCallError as e:
            what = (
                "neuron unreachable"
                if e.kind in ("unreachable", "timeout")
                else (f"neuron returned HTTP {e.status} ({e.code or 'no code'})")
            )
            raise errors.cold_load_failed(
                incoming, node.name, f"evicting '{victim}' failed: {what}", e.status, e.code
            ) from None
        self.metrics.evictions(node.name, victim).inc()
        log.info("evicted %s from %s to make room for %s", victim, node.name, incoming)

    async def unload(self, node: NodeState, model_id: str) -> Any:
        """Unload and count a lifecycle cycle; the model is unroutable from before the call.
        Raises NeuronCallError (and the model is routable again)."""
        m = node.models.get(model_id)
        if m is not None:
            m.evicting = True
            node.endpoint_cache.pop(model_id, None)
        try:
            reply = await self.client.call(
                node, "POST", "/models/unload", UNLOAD_TIMEOUT_SECS, {"model_id": model_id}
            )
        except NeuronCallError:
            if m is not None:
                m.evicting = False
            raise
        node.set_status(model_id, "unloaded")
        state = node.models[model_id]
        state.vram_used_mb = None
        state.evicting = False
        state.keep_alive = None  # a request's keep_alive lasts as long as the load it ran on
        node.lifecycle_cycles += 1
        self.metrics.lifecycle_cycles(node.name).set(node.lifecycle_cycles)
        every = self.config.eviction.defrag_after_cycles
        if every and node.lifecycle_cycles % every == 0:
            log.warning(
                "node %s has had %d load/unload cycles; a neuron restart may defragment "
                "device memory",
                node.name,
                node.lifecycle_cycles,
            )
        return reply
