"""What the daemon puts in a torch worker's load spec besides the model: the compile mode (from
the load request or a default model, the old booleans included) and its share of the cores."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from daemon_rig import NeuronFactory, start_neuron

from helexa.neuron.supervisor import Supervisor
from helexa.neuron.worker_start import cpu_threads

__all__ = ["start_neuron"]


def sent(d: Path) -> dict[str, Any]:
    return dict(json.loads((d / "spec.json").read_text()))


async def test_compile_mode_reaches_the_worker(start_neuron: NeuronFactory) -> None:
    rig = await start_neuron()
    for name, asked, mode in [("a", None, "auto"), ("b", True, "on"), ("c", "off", "off")]:
        d = rig.model(name)
        extra = {} if asked is None else {"compile": asked}
        r = await rig.load(d, **extra)
        assert r.status_code == 200, r.text
        assert sent(d)["compile"] == mode
    r = await rig.load(rig.model("d"), compile="fast")
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "invalid_value"


async def test_batching_knobs_reach_the_worker(start_neuron: NeuronFactory) -> None:
    rig = await start_neuron()
    plain, tuned = rig.model("a"), rig.model("b")
    assert (await rig.load(plain)).status_code == 200
    assert (await rig.load(tuned, max_batch=2, kv_budget_mb=64)).status_code == 200
    assert (sent(plain)["max_batch"], sent(plain)["kv_budget_mb"]) == (8, None)
    assert (sent(tuned)["max_batch"], sent(tuned)["kv_budget_mb"]) == (2, 64)
    r = await rig.load(rig.model("c"), max_batch=0)
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_batch"


async def test_threads_are_the_cores_shared_by_the_workers(start_neuron: NeuronFactory) -> None:
    cores = len(os.sched_getaffinity(0))
    rig = await start_neuron()
    first, second = rig.model("a"), rig.model("b")
    assert (await rig.load(first)).status_code == 200
    assert (await rig.load(second)).status_code == 200
    assert sent(first)["n_threads"] == cores
    assert sent(second)["n_threads"] == max(1, cores // 2)
    pinned = await start_neuron(worker_threads=3)
    d = pinned.model("c")
    assert (await pinned.load(d)).status_code == 200
    assert sent(d)["n_threads"] == 3


def test_cpu_threads() -> None:
    cores = len(os.sched_getaffinity(0))
    assert cpu_threads(None, 1) == cores
    assert cpu_threads(None, cores * 4) == 1
    assert cpu_threads(5, 9) == 5


@pytest.mark.parametrize(
    ("environ", "policy", "spin"),
    [
        ({}, None, "1000"),
        ({"OMP_WAIT_POLICY": "ACTIVE"}, "ACTIVE", None),
        ({"GOMP_SPINCOUNT": "7"}, None, "7"),
    ],
)
def test_workers_spin_briefly_unless_told_otherwise(
    environ: dict[str, str], policy: str | None, spin: str | None
) -> None:
    env = Supervisor(["true"], environ=environ).worker_env([0], "cpu")
    assert env.get("OMP_WAIT_POLICY") == policy
    assert env.get("GOMP_SPINCOUNT") == spin
