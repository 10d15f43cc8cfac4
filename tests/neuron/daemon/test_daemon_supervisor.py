"""WorkerHandle against the fake worker: frames, cancellation, crashes, faults, hangs, stop."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from daemon_rig import WORKER_CMD, model_dir, set_fake, worker_events

from helexa.neuron.engine.errors import LoadError
from helexa.neuron.engine.frames import Delta, Done, Generate, Pong, Progress
from helexa.neuron.engine.loader import LoadSpec
from helexa.neuron.memory import rss_mb
from helexa.neuron.supervisor import Supervisor, WorkerHandle, visible_devices
from helexa.neuron.worker_errors import RequestFailed, WorkerCrashed, WorkerStopped


def handle_for(path: Path, faults: list[WorkerCrashed] | None = None, **kw: Any) -> WorkerHandle:
    sup = Supervisor(WORKER_CMD, stop_grace=kw.pop("stop_grace", 1.0), **kw)
    sink = faults if faults is not None else []
    return sup.handle("m", spec(path), [0], "cpu", on_fault=lambda h, e: sink.append(e))


def spec(path: Path) -> LoadSpec:
    return LoadSpec(path=str(path), served_id="m")


def gen_req(prompt_ids: list[int], max_tokens: int, **kw: Any) -> Generate:
    return Generate("", prompt_ids, max_tokens, **kw)


async def collect(h: WorkerHandle, **frame: Any) -> list[Delta | Done]:
    out: list[Delta | Done] = []
    async with h.generate(gen_req([1, 2], 100, **frame)) as gen:
        async for ev in gen:
            out.append(ev)
    return out


async def test_load_generate_embed_ping_stop(tmp_path: Path) -> None:
    d = model_dir(tmp_path, "m", {"reply": {"pieces": ["a", "b", "c"]}})
    h = handle_for(d)
    info = await h.start()
    assert info.harness == "torch" and info.vram_used_mb == 123
    assert h.alive and h.pid is not None
    assert (h.rss_mb() or 0) > 0
    evs = await collect(h)
    assert [type(e) for e in evs] == [Delta, Delta, Delta, Done]
    assert "".join(e.text for e in evs if isinstance(e, Delta)) == "abc"
    done = evs[-1]
    assert isinstance(done, Done) and done.completion_tokens == 3
    emb = await h.embed([[1, 2], [3]])
    assert emb.prompt_tokens == 3 and len(emb.vectors) == 2
    assert isinstance(await h.ping(), Pong)
    pid = h.pid
    await h.stop()
    assert h.proc is not None and h.proc.returncode is not None
    assert rss_mb(pid) is None  # the process is gone when stop returns
    assert worker_events(d)[-1].startswith("shutdown")


async def test_concurrent_requests_are_demultiplexed(tmp_path: Path) -> None:
    d = model_dir(tmp_path, "m", {"reply": {"pieces": ["x"] * 5, "delay": 0.01}})
    h = handle_for(d)
    await h.start()
    results = await asyncio.gather(*(collect(h) for _ in range(4)))
    for evs in results:
        assert [type(e) for e in evs] == [Delta] * 5 + [Done]
        assert len({e.id for e in evs}) == 1
    assert len({evs[0].id for evs in results}) == 4
    assert h.in_flight == 0
    await h.stop()


async def test_leaving_early_sends_cancel(tmp_path: Path) -> None:
    d = model_dir(tmp_path, "m", {"reply": {"pieces": ["x"] * 200, "delay": 0.01}})
    h = handle_for(d)
    await h.start()
    async with h.generate(gen_req([1], 1000)) as gen:
        async for _ in gen:
            break
    deadline = time.monotonic() + 3
    while not any(e.startswith("cancelled") for e in worker_events(d)):
        assert time.monotonic() < deadline, worker_events(d)
        await asyncio.sleep(0.02)
    assert any(e.startswith("cancel r") for e in worker_events(d))
    await h.stop()


async def test_crash_mid_stream(tmp_path: Path) -> None:
    d = model_dir(tmp_path, "m", {"reply": {"pieces": ["a", "b", "c"], "crash_after": 2}})
    faults: list[WorkerCrashed] = []
    h = handle_for(d, faults)
    await h.start()
    got: list[str] = []
    with pytest.raises(WorkerCrashed) as ei:
        async with h.generate(gen_req([1], 10)) as gen:
            async for ev in gen:
                assert isinstance(ev, Delta)
                got.append(ev.text)
    assert got == ["a", "b"]  # frames sent before the crash are delivered first
    assert ei.value.reason == "crash" and "code 9" in ei.value.detail
    await h.wait_ended()
    assert len(faults) == 1 and faults[0].reason == "crash"
    with pytest.raises(WorkerStopped):
        await h.ping()


async def test_fault_frame(tmp_path: Path) -> None:
    d = model_dir(tmp_path, "m", {"reply": {"pieces": ["a", "b"], "fault_after": 1}})
    faults: list[WorkerCrashed] = []
    h = handle_for(d, faults)
    await h.start()
    with pytest.raises(WorkerCrashed) as ei:
        await collect(h)
    assert ei.value.reason == "non_finite"
    await h.wait_ended()
    assert [f.reason for f in faults] == ["non_finite"]


async def test_hang_is_detected_by_the_stall_watch(tmp_path: Path) -> None:
    d = model_dir(tmp_path, "m", {"reply": {"pieces": ["a", "b"], "hang_after": 1}})
    faults: list[WorkerCrashed] = []
    h = handle_for(d, faults, stall_secs=0.3)
    await h.start()
    started = time.monotonic()
    with pytest.raises(WorkerCrashed) as ei:
        await collect(h)
    assert ei.value.reason == "hang"
    assert time.monotonic() - started < 3
    await h.wait_ended()
    assert h.proc is not None and h.proc.returncode is not None  # killed
    assert [f.reason for f in faults] == ["hang"]


async def test_idle_worker_is_not_a_hang(tmp_path: Path) -> None:
    d = model_dir(tmp_path, "m")
    faults: list[WorkerCrashed] = []
    h = handle_for(d, faults, stall_secs=0.1)
    await h.start()
    await asyncio.sleep(0.4)
    assert h.alive and not faults
    await h.stop()


async def test_request_error_frame(tmp_path: Path) -> None:
    d = model_dir(tmp_path, "m", {"reply": {"error": {"code": "bad", "message": "no"}}})
    h = handle_for(d)
    await h.start()
    with pytest.raises(RequestFailed) as ei:
        await collect(h)
    assert ei.value.code == "bad"
    assert h.alive  # the worker itself is fine
    await h.stop()


async def test_load_failed_and_crash_before_ready(tmp_path: Path) -> None:
    d = model_dir(tmp_path, "m", {"load": "load_failed"})
    h = handle_for(d)
    with pytest.raises(LoadError) as ei:
        await h.start()
    assert ei.value.status == 500 and "broken" in ei.value.message
    assert h.proc is not None and h.proc.returncode is not None
    d2 = model_dir(tmp_path, "m2", {"load": "crash"})
    h2 = handle_for(d2)
    with pytest.raises(WorkerCrashed) as ei2:
        await h2.start()
    assert "code 3" in ei2.value.detail


async def test_a_failed_start_closes_its_socket_at_once(tmp_path: Path) -> None:
    """Left to the GC, the transport and the socket object would each close the fd; the second
    close then kills whatever reused that fd number (it took down accepted client connections)."""
    d = model_dir(tmp_path, "m", {"load": "load_failed"})
    before = len(os.listdir("/proc/self/fd"))
    h = handle_for(d)
    with pytest.raises(LoadError):
        await h.start()
    await asyncio.sleep(0)  # the transport's close callback runs on the next loop turn
    assert len(os.listdir("/proc/self/fd")) == before
    del h


async def test_progress_frames_reach_the_callback(tmp_path: Path) -> None:
    d = model_dir(tmp_path, "m", {"progress": True})
    h = handle_for(d)
    seen: list[Progress] = []
    await h.start(seen.append)
    assert [f.done_bytes for f in seen] == [0, 1, 2]
    await h.stop()


async def test_stop_escalates_to_sigkill(tmp_path: Path) -> None:
    d = model_dir(tmp_path, "m", {"ignore_shutdown": True, "ignore_sigterm": True})
    faults: list[WorkerCrashed] = []
    h = handle_for(d, faults, stop_grace=0.3)
    await h.start()
    set_fake(d, {**json.loads((d / "fake.json").read_text()), "reply": {"delay": 1}})
    task = asyncio.create_task(collect(h))  # in flight when stopped
    await asyncio.sleep(0.05)
    started = time.monotonic()
    await h.stop()
    assert 0.3 <= time.monotonic() - started < 3
    assert h.proc is not None and h.proc.returncode == -9
    with pytest.raises(WorkerStopped):
        await task
    assert not faults  # a stop is not a fault


async def test_worker_env_and_devices(tmp_path: Path) -> None:
    assert visible_devices([1, 0], None) == "1,0"
    assert visible_devices([1], "4,5,6") == "5"
    sup = Supervisor(WORKER_CMD, environ={"CUDA_VISIBLE_DEVICES": "2,3", "X": "1"})
    assert sup.worker_env([1], "cuda")["CUDA_VISIBLE_DEVICES"] == "3"
    assert sup.worker_env([0], "cpu")["CUDA_VISIBLE_DEVICES"] == ""
    assert sup.worker_env([0], "cpu")["X"] == "1"
    sup.cuda_env = lambda devs, kind: {"CUDA_VISIBLE_DEVICES": "GPU-x"}
    assert sup.worker_env([0], "cuda")["CUDA_VISIBLE_DEVICES"] == "GPU-x"
    d = model_dir(tmp_path, "m")
    h = Supervisor(WORKER_CMD, environ={**os.environ, "CUDA_VISIBLE_DEVICES": "7"}).handle(
        "m", spec(d), [0], "cuda"
    )
    await h.start()
    await h.stop()
    assert "cvd=7" in worker_events(d)[0]


def test_worker_cmd_env_override(monkeypatch: pytest.MonkeyPatch) -> None:
    from helexa.neuron.supervisor import default_worker_cmd

    monkeypatch.delenv("HELEXA_NEURON_WORKER_CMD", raising=False)
    assert default_worker_cmd()[1:] == ["-m", "helexa.neuron.engine.worker"]
    monkeypatch.setenv("HELEXA_NEURON_WORKER_CMD", "/usr/bin/python3 '/x y/fake.py'")
    assert default_worker_cmd() == ["/usr/bin/python3", "/x y/fake.py"]
