"""Pure placement functions: feasibility, required memory, displaceable models,
victim order, fit classes, ranking and device choice. No I/O: fleet state is built by hand."""

from __future__ import annotations

import time
from typing import Any

import pytest

from helexa.config.catalogue import Catalogue, ModelProfile
from helexa.config.cortex import NeuronRemote
from helexa.cortex.fleet import Fleet, ModelState, NodeState
from helexa.cortex.placement import (
    displaceable,
    evaluate,
    is_feasible_on,
    priority_of,
    rank,
    required_mb,
)
from helexa.wire.neuron import Device, DeviceHealth, Discovery


def dev(index: int, total: int) -> Device:
    return Device(index=index, kind="cuda", name=f"DEV-{index}", vram_total_mb=total)


def node(
    name: str,
    totals: list[int],
    free: list[int] | None = None,
    models: dict[str, ModelState] | None = None,
) -> NodeState:
    """A node with discovered devices of `totals` MB; `free` None → no /health yet."""
    n = NodeState(name=name, endpoint=f"http://{name}:13131", token=None, healthy=True)
    n.discovery = Discovery(devices=[dev(i, t) for i, t in enumerate(totals)])
    if free is not None:
        n.devices_health = [
            DeviceHealth(index=i, vram_total_mb=totals[i], vram_free_mb=f)
            for i, f in enumerate(free)
        ]
    n.models = models or {}
    return n


def loaded(vram: int | None = 8000, last: float | None = None, devices: list[int] | None = None):
    return ModelState(
        status="loaded", vram_used_mb=vram, last_accessed=last, devices=devices or [0]
    )


def catalogue(*models: dict[str, Any], aliases: dict[str, str] | None = None) -> Catalogue:
    return Catalogue.model_validate({"models": list(models), "aliases": aliases or {}})


def big_profile(**kw: Any) -> ModelProfile:
    base: dict[str, Any] = {
        "id": "Qwen/Qwen3.6-27B",
        "harness": "candle",
        "vram_mb": 45_000,
        "min_devices": 2,
        "min_device_vram_mb": 24_000,
    }
    base.update(kw)
    return ModelProfile.model_validate(base)


# ---- feasibility (catalogue unit cases) -----------------------------------------


def test_feasible_with_two_devices_meeting_the_floor() -> None:
    assert is_feasible_on(big_profile(), "beast", [dev(0, 32_000), dev(1, 32_000)])


def test_infeasible_with_only_one_device() -> None:
    assert not is_feasible_on(big_profile(), "benjy", [dev(0, 64_000)])


def test_infeasible_when_one_device_is_under_the_floor() -> None:
    assert not is_feasible_on(big_profile(), "mixed", [dev(0, 32_000), dev(1, 12_000)])


def test_pinned_on_excludes_other_nodes() -> None:
    p = big_profile(pinned_on=["beast"])
    devices = [dev(0, 32_000), dev(1, 32_000)]
    assert is_feasible_on(p, "beast", devices)
    assert not is_feasible_on(p, "benjy", devices)


def test_without_a_floor_only_min_devices_matters() -> None:
    p = big_profile(min_device_vram_mb=None)
    assert is_feasible_on(p, "anywhere", [dev(0, 1_000), dev(1, 1_000)])
    assert not is_feasible_on(p, "anywhere", [dev(0, 1_000_000)])


def test_floor_counts_only_qualifying_devices() -> None:
    # Three devices, two above the floor: enough for min_devices = 2.
    assert is_feasible_on(big_profile(), "n", [dev(0, 12_000), dev(1, 24_000), dev(2, 48_000)])
    assert not is_feasible_on(big_profile(min_devices=3), "n", [dev(0, 12_000), dev(1, 24_000)])


def test_cpu_only_neuron_is_one_device() -> None:
    p = ModelProfile(id="a/b")
    assert is_feasible_on(p, "cpu-box", [Device(index=0, kind="cpu", vram_total_mb=32_000)])


# ---- required memory -------------------------------------------------------------------------


def test_required_memory_prefers_catalogue_then_largest_measured() -> None:
    fleet = Fleet([NeuronRemote(name="a", endpoint="http://a:1")])
    fleet.observe_vram("a/b", 5000)
    fleet.observe_vram("a/b", 9000)
    fleet.observe_vram("a/b", 7000)
    assert required_mb(ModelProfile(id="a/b", vram_mb=3000), fleet) == 3000
    assert required_mb(ModelProfile(id="a/b"), fleet) == 9000
    assert required_mb(ModelProfile(id="x/unknown"), fleet) is None


# ---- displaceable models and victim order ---------------------------------------------------


def test_displaceable_rules() -> None:
    now = time.time()
    cat = catalogue(
        {"id": "in/coming", "residency_priority": 50},
        {"id": "low/prio", "residency_priority": 10},
        {"id": "equal/prio", "residency_priority": 50},
        {"id": "high/prio", "residency_priority": 100},
        {"id": "pinned/here", "residency_priority": 0, "pinned_on": ["n"]},
        {"id": "pinned/elsewhere", "residency_priority": 0, "pinned_on": ["other"]},
        {"id": "busy/one", "residency_priority": 0},
        {"id": "still/loading", "residency_priority": 0},
    )
    n = node(
        "n",
        [80_000],
        [0],
        {
            "in/coming": loaded(last=now),  # the incoming model itself
            "low/prio": loaded(last=now),
            "equal/prio": loaded(last=now - 10),
            "high/prio": loaded(last=0),
            "pinned/here": loaded(last=0),
            "pinned/elsewhere": loaded(last=now - 5),
            "busy/one": loaded(last=0),
            "still/loading": ModelState(status="loading"),
            "not/in/catalogue": loaded(last=0),  # priority 100 > 50
        },
    )
    n.local_in_flight["busy/one"] = 1
    victims = displaceable(n, cat.get("in/coming"), cat, "lru")  # type: ignore[arg-type]
    assert victims == ["equal/prio", "pinned/elsewhere", "low/prio"]


def test_equal_priority_displaces_both_ways_and_uncatalogued_is_100() -> None:
    cat = catalogue({"id": "a/a"}, {"id": "b/b"})
    n = node("n", [80_000], [0], {"a/a": loaded(), "b/b": loaded(), "x/x": loaded()})
    assert priority_of(cat, "x/x") == 100
    assert set(displaceable(n, cat.get("a/a"), cat, "lru")) == {"b/b", "x/x"}  # type: ignore[arg-type]
    assert set(displaceable(n, cat.get("b/b"), cat, "lru")) == {"a/a", "x/x"}  # type: ignore[arg-type]


def test_polled_queue_depth_makes_a_model_busy() -> None:
    cat = catalogue({"id": "in/coming"})
    m = loaded()
    m.queue_depth = 1
    n = node("n", [80_000], [0], {"queued/one": m, "idle/one": loaded()})
    assert displaceable(n, cat.get("in/coming"), cat, "lru") == ["idle/one"]  # type: ignore[arg-type]


def test_lru_order_never_accessed_first_then_oldest() -> None:
    now = time.time()
    cat = catalogue({"id": "in/coming"})
    n = node(
        "n",
        [80_000],
        [0],
        {
            "b/recent": loaded(last=now),
            "c/old": loaded(last=now - 7200),
            "d/never": loaded(last=None),
            "a/middle": loaded(last=now - 60),
        },
    )
    order = displaceable(n, cat.get("in/coming"), cat, "lru")  # type: ignore[arg-type]
    assert order == ["d/never", "c/old", "a/middle", "b/recent"]


def test_priority_strategy_orders_by_priority_then_lru() -> None:
    now = time.time()
    cat = catalogue(
        {"id": "in/coming", "residency_priority": 100},
        {"id": "p50/old", "residency_priority": 50},
        {"id": "p50/new", "residency_priority": 50},
        {"id": "p10/new", "residency_priority": 10},
        {"id": "p100/oldest", "residency_priority": 100},
    )
    n = node(
        "n",
        [80_000],
        [0],
        {
            "p50/old": loaded(last=now - 100),
            "p50/new": loaded(last=now),
            "p10/new": loaded(last=now),
            "p100/oldest": loaded(last=now - 10_000),
        },
    )
    incoming = cat.get("in/coming")
    assert incoming is not None
    assert displaceable(n, incoming, cat, "priority") == [
        "p10/new",
        "p50/old",
        "p50/new",
        "p100/oldest",
    ]
    assert displaceable(n, incoming, cat, "lru")[0] == "p100/oldest"


# ---- fit classes -----------------------------------------------------------------------------


def test_free_fit_when_room_is_free() -> None:
    cat = catalogue({"id": "in/coming", "vram_mb": 10_000})
    p = cat.get("in/coming")
    assert p is not None
    c = evaluate(node("n", [32_000], [20_000]), p, 10_000, cat, "lru", 3)
    assert (c.fit, c.victims, c.free_total, c.devices) == ("free-fit", [], 20_000, [0])


def test_evict_fit_plans_only_the_victims_needed() -> None:
    now = time.time()
    cat = catalogue({"id": "in/coming"})
    p = cat.get("in/coming")
    assert p is not None
    n = node(
        "n",
        [32_000],
        [2_000],
        {
            "old/one": loaded(8_000, last=now - 7200),
            "mid/one": loaded(8_000, last=now - 60),
            "new/one": loaded(8_000, last=now),
        },
    )
    c = evaluate(n, p, 10_000, cat, "lru", 3)
    assert c.fit == "evict-fit"
    assert c.victims == ["old/one"]  # 2000 + 8000 freed = 10000 ≥ 10000
    assert c.spare_victims == ["mid/one", "new/one"]
    c = evaluate(n, p, 17_000, cat, "lru", 3)
    assert c.victims == ["old/one", "mid/one"]


def test_freed_memory_is_the_victims_measured_use_split_over_its_devices() -> None:
    cat = catalogue({"id": "in/coming", "min_devices": 2})
    p = cat.get("in/coming")
    assert p is not None
    # A 16 GB victim over two devices frees 8 GB on each; need 8 GB per device.
    n = node("n", [24_000, 24_000], [1_000, 1_000], {"tp/victim": loaded(16_000, devices=[0, 1])})
    c = evaluate(n, p, 18_000, cat, "lru", 3)
    assert c.fit == "evict-fit" and c.victims == ["tp/victim"]
    assert evaluate(n, p, 20_000, cat, "lru", 3).fit == "none"
    # A victim with no measured use frees nothing.
    n2 = node("n2", [24_000], [1_000], {"unmeasured/v": loaded(None)})
    assert evaluate(n2, catalogue({"id": "x/y"}).get("x/y"), 5_000, cat, "lru", 3).fit == "none"  # type: ignore[arg-type]


def test_at_most_max_evictions_are_planned() -> None:
    cat = catalogue({"id": "in/coming"})
    p = cat.get("in/coming")
    assert p is not None
    models = {f"m/{i}": loaded(1_000, last=float(i)) for i in range(5)}
    n = node("n", [32_000], [0], models)
    assert evaluate(n, p, 3_000, cat, "lru", 3).victims == ["m/0", "m/1", "m/2"]
    assert evaluate(n, p, 4_000, cat, "lru", 3).fit == "none"
    assert evaluate(n, p, 4_000, cat, "lru", 4).fit == "evict-fit"


def test_unknown_required_memory_is_free_fit_everywhere() -> None:
    cat = catalogue({"id": "in/coming"})
    p = cat.get("in/coming")
    assert p is not None
    c = evaluate(node("n", [32_000], [0], {"x/x": loaded()}), p, None, cat, "lru", 3)
    assert c.fit == "free-fit" and c.victims == []


def test_unknown_node_memory_counts_as_zero_free() -> None:
    cat = catalogue({"id": "in/coming"})
    p = cat.get("in/coming")
    assert p is not None
    c = evaluate(node("n", [32_000], None), p, 1_000, cat, "lru", 3)
    assert c.fit == "none" and c.free_total == 0 and not c.memory_known


def test_per_device_need_is_required_over_min_devices() -> None:
    p = big_profile(vram_mb=40_000)  # 20 GB per device, floor 24 GB
    cat = catalogue(p.model_dump())
    ok = node("ok", [32_000, 32_000], [20_000, 21_000])
    assert evaluate(ok, p, 40_000, cat, "lru", 3).fit == "free-fit"
    short = node("short", [32_000, 32_000], [20_000, 19_999])
    assert evaluate(short, p, 40_000, cat, "lru", 3).fit == "none"


# ---- device choice for the spec -------------------------------------------------------------


def test_devices_most_free_qualifying_listed_in_index_order() -> None:
    p = big_profile(vram_mb=10_000)
    cat = catalogue(p.model_dump())
    # Device 1 is below the floor even though it has the most free memory.
    n = node("n", [32_000, 16_000, 32_000, 32_000], [9_000, 15_000, 20_000, 9_500])
    c = evaluate(n, p, 10_000, cat, "lru", 3)
    assert c.devices == [2, 3]
    spec = p.load_spec(c.devices)
    assert spec.devices == [2, 3] and spec.tensor_parallel == 2


def test_device_ties_go_to_the_lower_index() -> None:
    p = ModelProfile(id="a/b", vram_mb=1_000)
    cat = catalogue(p.model_dump())
    c = evaluate(
        node("n", [32_000, 32_000, 32_000], [5_000, 7_000, 7_000]), p, 1_000, cat, "lru", 3
    )
    assert c.devices == [1]


def test_devices_chosen_after_planned_evictions() -> None:
    p = ModelProfile(id="in/coming", vram_mb=10_000)
    cat = catalogue(p.model_dump())
    n = node("n", [32_000, 32_000], [4_000, 6_000], {"victim/on0": loaded(8_000, devices=[0])})
    c = evaluate(n, p, 10_000, cat, "lru", 3)
    assert c.fit == "evict-fit" and c.devices == [0]


def test_devices_without_discovery_are_the_first_min_devices() -> None:
    p = big_profile()
    n = NodeState(name="n", endpoint="http://n:1", token=None, healthy=True)
    c = evaluate(n, p, None, catalogue(p.model_dump()), "lru", 3)
    assert c.devices == [0, 1]


# ---- ranking: pinned > free-fit > evict-fit > most free > name ------------------------------


def ranked_names(p: ModelProfile, cat: Catalogue, *nodes: NodeState, need: int) -> list[str]:
    return [c.node.name for c in rank([evaluate(n, p, need, cat, "lru", 3) for n in nodes])]


def test_pinned_beats_more_free_memory() -> None:
    p = ModelProfile(id="in/coming", pinned_on=["small"])
    cat = catalogue(p.model_dump())
    order = ranked_names(
        p, cat, node("big", [80_000], [70_000]), node("small", [32_000], [0]), need=1_000
    )
    assert order == ["small", "big"]


def test_free_fit_beats_evict_fit_beats_none() -> None:
    p = ModelProfile(id="in/coming")
    cat = catalogue(p.model_dump())
    evict = node("a-evict", [80_000], [1_000], {"v/v": loaded(60_000)})
    free = node("b-free", [32_000], [10_000])
    none = node("c-none", [80_000], [9_000])
    assert ranked_names(p, cat, none, evict, free, need=10_000) == ["b-free", "a-evict", "c-none"]


def test_most_free_then_name() -> None:
    p = ModelProfile(id="in/coming")
    cat = catalogue(p.model_dump())
    order = ranked_names(
        p,
        cat,
        node("c", [32_000], [20_000]),
        node("b", [32_000], [30_000]),
        node("a", [32_000], [20_000]),
        need=1_000,
    )
    assert order == ["b", "a", "c"]


def test_free_total_counts_only_qualifying_devices() -> None:
    p = ModelProfile(id="in/coming", min_device_vram_mb=24_000)
    cat = catalogue(p.model_dump())
    # x has a huge non-qualifying device; y's qualifying device has more free memory.
    x = node("x", [16_000, 32_000], [16_000, 10_000])
    y = node("y", [32_000], [12_000])
    assert ranked_names(p, cat, x, y, need=1_000) == ["y", "x"]


@pytest.mark.parametrize(
    ("profile", "want"),
    [
        (
            {"id": "Helexa/Qwen3.6-27B-Uncensored", "source": "helexa"},
            "helexa:Helexa/Qwen3.6-27B-Uncensored",
        ),
        ({"id": "Qwen/Qwen3-8B"}, "Qwen/Qwen3-8B"),
        ({"id": "Qwen/Qwen3-8B", "source": ""}, "Qwen/Qwen3-8B"),
        ({"id": "local/q", "path": "/srv/models/q"}, "/srv/models/q"),
    ],
)
def test_load_spec_model_id(profile: dict[str, Any], want: str) -> None:
    p = ModelProfile.model_validate(profile)
    spec = p.load_spec([0])
    assert spec.model_id == want
    assert spec.served_model_id == p.id
    assert spec.harness == "torch"
    assert spec.tensor_parallel is None
    assert spec.max_in_flight is None


def test_load_spec_copies_admission_knobs_and_candle_is_torch() -> None:
    p = ModelProfile.model_validate(
        {
            "id": "a/b",
            "harness": "candle",
            "quant": "bf16",
            "max_in_flight": 4,
            "max_queue_depth": 8,
            "max_wait_secs": 2.5,
        }
    )
    spec = p.load_spec([1])
    assert spec.harness == "torch" and spec.quant == "bf16"
    assert (spec.max_in_flight, spec.max_queue_depth, spec.max_wait_secs) == (4, 8, 2.5)
