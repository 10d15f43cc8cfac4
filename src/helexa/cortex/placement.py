"""Where a catalogue model should be loaded, and what must go to make room.

Pure functions over fleet state: no I/O, so every ranking rule is testable in isolation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from helexa.config.catalogue import Catalogue, ModelProfile
from helexa.cortex.fleet import Fleet, NodeState
from helexa.wire.neuron import Device

Fit = Literal["free-fit", "evict-fit", "none"]
_FIT_ORDER = {"free-fit": 0, "evict-fit": 1, "none": 2}
DEFAULT_PRIORITY = 100


def qualifying(profile: ModelProfile, devices: list[Device]) -> list[Device]:
    floor = profile.min_device_vram_mb or 0
    return [d for d in devices if d.vram_total_mb >= floor]


def is_feasible_on(profile: ModelProfile, node_name: str, devices: list[Device]) -> bool:
    if profile.pinned_on and node_name not in profile.pinned_on:
        return False
    if len(devices) < profile.min_devices:
        return False
    return len(qualifying(profile, devices)) >= profile.min_devices


def required_mb(profile: ModelProfile, fleet: Fleet) -> int | None:
    """Catalogue estimate first, else the largest measured footprint seen anywhere."""
    if profile.vram_mb is not None:
        return profile.vram_mb
    return fleet.max_vram_seen.get(profile.id)


def priority_of(catalogue: Catalogue, model_id: str) -> int:
    p = catalogue.get(model_id)
    return p.residency_priority if p is not None else DEFAULT_PRIORITY


def displaceable(
    node: NodeState, incoming: ModelProfile, catalogue: Catalogue, strategy: str
) -> list[str]:
    """Loaded, idle, not pinned here, not of higher priority: in eviction order."""
    mine = incoming.residency_priority
    victims = []
    for mid, m in node.models.items():
        if mid == incoming.id or m.status != "loaded" or m.evicting:
            continue
        prof = catalogue.get(mid)
        if prof is not None and node.name in prof.pinned_on:
            continue
        if priority_of(catalogue, mid) > mine or node.busy(mid) != 0:
            continue
        victims.append(mid)

    def lru(mid: str) -> tuple[float, str]:
        last = node.models[mid].last_accessed
        return (float("-inf") if last is None else last, mid)

    if strategy == "priority":
        return sorted(victims, key=lambda mid: (priority_of(catalogue, mid), *lru(mid)))
    return sorted(victims, key=lru)


@dataclass(slots=True)
class Candidate:
    node: NodeState
    pinned: bool
    fit: Fit
    free_total: int
    victims: list[str]  # evictions planned before the load (evict-fit)
    spare_victims: list[str]  # further displaceable models, for a 507 retry
    devices: list[int]
    memory_known: bool
    qualifying_free: dict[int, int] = field(default_factory=dict)

    def sort_key(self) -> tuple[int, int, int, str]:
        return (0 if self.pinned else 1, _FIT_ORDER[self.fit], -self.free_total, self.node.name)


def _pick_devices(profile: ModelProfile, free: dict[int, int], quals: list[Device]) -> list[int]:
    """The min_devices qualifying devices with most free memory; ties to the lower index."""
    ranked = sorted(quals, key=lambda d: (-free.get(d.index, 0), d.index))
    return sorted(d.index for d in ranked[: profile.min_devices])


def _fits(free: dict[int, int], quals: list[Device], n: int, per_device: float) -> bool:
    return sum(1 for d in quals if free.get(d.index, 0) >= per_device) >= n


def evaluate(
    node: NodeState,
    profile: ModelProfile,
    required: int | None,
    catalogue: Catalogue,
    strategy: str,
    max_evictions: int,
) -> Candidate:
    devices = node.discovery.devices if node.discovery is not None else []
    quals = qualifying(profile, devices)
    measured = node.free_by_device()
    free = {d.index: (measured or {}).get(d.index, 0) for d in quals}
    order = displaceable(node, profile, catalogue, strategy)
    pinned = node.name in profile.pinned_on
    free_total = sum(free.values())
    memory_known = measured is not None

    def cand(fit: Fit, victims: list[str], after: dict[int, int]) -> Candidate:
        picked = _pick_devices(profile, after, quals) if quals else list(range(profile.min_devices))
        spare = [v for v in order if v not in victims]
        return Candidate(node, pinned, fit, free_total, victims, spare, picked, memory_known, free)

    if required is None:
        return cand("free-fit", [], free)
    per_device = required / profile.min_devices
    if _fits(free, quals, profile.min_devices, per_device):
        return cand("free-fit", [], free)
    after = dict(free)
    planned: list[str] = []
    for victim in order[:max_evictions]:
        m = node.models[victim]
        if m.vram_used_mb and m.devices:
            share = m.vram_used_mb // len(m.devices)
            for idx in m.devices:
                if idx in after:
                    after[idx] += share
        planned.append(victim)
        if _fits(after, quals, profile.min_devices, per_device):
            return cand("evict-fit", planned, after)
    return cand("none", [], free)


def rank(candidates: list[Candidate]) -> list[Candidate]:
    return sorted(candidates, key=Candidate.sort_key)
