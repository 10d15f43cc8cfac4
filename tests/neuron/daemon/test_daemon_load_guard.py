"""A worker that hangs while loading can't wedge the load queue: the load deadline
(`load_timeout_secs` + `load_stall_secs`, extended by progress) and a forced unload of a loading
model. Real daemon on loopback, fake_worker.py processes."""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path

from daemon_rig import NeuronFactory, until, worker_events
from daemon_rig import start_neuron as start_neuron  # the fixture


def worker_pid(d: Path) -> int | None:
    for line in worker_events(d):
        m = re.search(r"pid=(\d+)", line)
        if m:
            return int(m.group(1))
    return None


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_hung_load_fails_and_frees_the_queue(start_neuron: NeuronFactory) -> None:
    rig = await start_neuron(load_timeout_secs=0.3, load_stall_secs=0.3)
    hung = rig.model("hung", {"load": "hang"})
    good = rig.model("good")
    first = asyncio.create_task(rig.load(hung))
    await until(lambda: worker_pid(hung) is not None)
    second = asyncio.create_task(rig.load(good))
    # Before the deadline existed both waited forever: the hung load held the FIFO load lock.
    r1, r2 = await asyncio.wait_for(asyncio.gather(first, second), 30)
    assert r1.status_code == 500, r1.text
    err = r1.json()["error"]
    assert err["code"] == "load_failed" and "made no progress" in err["message"]
    assert r2.status_code == 200, r2.text
    assert await rig.status("local/hung") == "failed"
    assert await rig.status("local/good") == "loaded"
    pid = worker_pid(hung)
    assert pid is not None
    await until(lambda: not alive(pid))


async def test_progress_extends_the_deadline(start_neuron: NeuronFactory) -> None:
    """A load that keeps reporting progress outlives load_timeout_secs."""
    rig = await start_neuron(load_timeout_secs=0.2, load_stall_secs=0.5)
    slow = rig.model("slow", {"load_delay": 1.5, "progress_every": 0.05})
    r = await rig.load(slow)
    assert r.status_code == 200, r.text
    assert await rig.status("local/slow") == "loaded"


async def test_silent_load_past_the_deadline_fails(start_neuron: NeuronFactory) -> None:
    """The same load without progress frames is cut off."""
    rig = await start_neuron(load_timeout_secs=0.2, load_stall_secs=0.5)
    slow = rig.model("slow", {"load_delay": 5})
    r = await asyncio.wait_for(rig.load(slow), 30)
    assert r.status_code == 500 and r.json()["error"]["code"] == "load_failed", r.text


async def test_forced_unload_cancels_a_loading_model(start_neuron: NeuronFactory) -> None:
    rig = await start_neuron()  # default deadline: minutes
    hung = rig.model("hung", {"load": "hang"})
    load = asyncio.create_task(rig.load(hung))
    await until(lambda: worker_pid(hung) is not None)
    pid = worker_pid(hung)
    assert pid is not None
    r = await rig.unload("local/hung")  # not forced: still the 409
    assert r.status_code == 409
    r = await asyncio.wait_for(rig.unload("local/hung", force=True), 30)
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "unloaded"
    lr = await asyncio.wait_for(load, 30)
    assert lr.status_code == 503, lr.text
    assert await rig.status("local/hung") == "unloaded"
    await until(lambda: not alive(pid))
    # the queue is free: the next load goes through, and the cancelled model loads again
    r = await asyncio.wait_for(rig.load(rig.model("good")), 30)
    assert r.status_code == 200, r.text
    (hung / "fake.json").write_text("{}")
    r = await asyncio.wait_for(rig.load(hung), 30)
    assert r.status_code == 200, r.text
