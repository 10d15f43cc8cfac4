"""Model lifecycle over HTTP: load, single-flight, errors, unload, recovery,
activation; workers are fake_worker.py processes."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from daemon_rig import (
    NeuronFactory,
    chat_body,
    model_dir,
    set_fake,
    starts,
    until,
    worker_events,
)
from daemon_rig import start_neuron as start_neuron  # the fixture

from helexa.neuron.memory import rss_mb


async def test_load_then_models_shows_it(start_neuron: NeuronFactory) -> None:
    rig = await start_neuron()
    d = rig.model("tiny")
    r = await rig.load(d)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "loaded" and body["model"] == "local/tiny"
    assert body["already_loaded"] is False and body["devices"] == [0]
    assert body["load_secs"] >= 0 and body["vram_used_mb"] > 0  # RSS of the worker on CPU
    info = await rig.info("local/tiny")
    assert info["status"] == "loaded"
    assert info["source"] == str(d)
    assert info["harness"] == "torch" and info["quant"] == "fp32"  # CPU default
    assert info["capabilities"] == ["text"]
    assert info["limit"] == {"context": 4096, "input": 2048, "output": 2048}
    assert info["tool_call"] is True and info["reasoning"] is True
    assert info["restarts"] == 0 and info["loaded_at"] > 0
    assert (info["max_in_flight"], info["max_queue_depth"], info["max_wait_secs"]) == (8, 16, 120)
    assert "progress" not in info and "error" not in info
    v1 = (await rig.client.get("/v1/models")).json()
    assert v1["object"] == "list"
    assert v1["data"] == [
        {"id": "local/tiny", "object": "model", "created": info["loaded_at"], "owned_by": "helexa"}
    ]
    health = (await rig.client.get("/health")).json()
    assert health["models"] == [
        {"id": "local/tiny", "status": "loaded", "in_flight": 0, "queue_depth": 0}
    ]
    assert health["devices"][0]["vram_used_mb"] > 0  # the worker's RSS counts on the CPU


async def test_single_flight_one_worker_same_reply(start_neuron: NeuronFactory) -> None:
    rig = await start_neuron()
    d = rig.model("tiny", {"load_delay": 0.3})
    r1, r2, r3 = await asyncio.gather(
        rig.load(d), rig.load(d, served_model_id=None), rig.load("local/tiny")
    )
    assert [r.status_code for r in (r1, r2)] == [200, 200]
    assert r1.json() == r2.json()
    assert starts(d) == 1
    # a call naming the served id while it loads joins too (or finds it loaded)
    assert r3.status_code == 200 and r3.json()["model"] == "local/tiny"
    again = await rig.load(d)
    assert again.json()["already_loaded"] is True
    assert "load_secs" not in again.json()
    assert starts(d) == 1


async def test_loads_run_one_at_a_time_in_order(start_neuron: NeuronFactory) -> None:
    rig = await start_neuron()
    dirs = [rig.model(f"m{i}", {"load_delay": 0.15}) for i in range(3)]
    t0 = time.monotonic()
    tasks = []
    for d in dirs:
        tasks.append(asyncio.create_task(rig.load(d)))
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.05)
    statuses = {m["id"]: m["status"] for m in (await rig.client.get("/models")).json()}
    assert statuses == {"local/m0": "loading", "local/m1": "loading", "local/m2": "loading"}
    rs = await asyncio.gather(*tasks)
    assert all(r.status_code == 200 for r in rs)
    assert time.monotonic() - t0 >= 0.45  # serial, not parallel
    pids = [int(worker_events(d)[0].split("pid=")[1].split()[0]) for d in dirs]
    assert len(set(pids)) == 3


async def test_progress_is_reported_while_loading(start_neuron: NeuronFactory) -> None:
    rig = await start_neuron()
    d = rig.model("slow", {"load_delay": 0.3, "progress": True})
    task = asyncio.create_task(rig.load(d))
    await rig.wait_status("local/slow", "loading")
    await asyncio.sleep(0.15)
    info = await rig.info("local/slow")
    assert info["progress"]["phase"] == "load"
    assert info["vram_used_mb"] is None
    assert (await task).status_code == 200


async def test_load_survives_client_disconnect(start_neuron: NeuronFactory) -> None:
    rig = await start_neuron()
    d = rig.model("m", {"load_delay": 0.3})
    with pytest.raises(Exception):  # noqa: B017 - the client gives up, whatever the error
        await rig.client.post("/models/load", json={"model_id": str(d)}, timeout=0.1)
    await rig.wait_status("local/m", "loaded", within=5)
    assert starts(d) == 1


async def test_served_model_id_and_unloaded_reuses_spec(start_neuron: NeuronFactory) -> None:
    rig = await start_neuron()
    d = rig.model("m")
    r = await rig.load(d, served_model_id="team/chat", max_in_flight=3, quant="fp16")
    assert r.json()["model"] == "team/chat"
    assert (await rig.unload("team/chat")).status_code == 200
    info = await rig.info("team/chat")
    assert info["status"] == "unloaded" and info["vram_used_mb"] is None
    r = await rig.client.post("/models/load", json={"model_id": "team/chat"})
    assert r.status_code == 200, r.text
    info = await rig.info("team/chat")
    assert info["status"] == "loaded" and info["quant"] == "fp16"
    assert info["max_in_flight"] == 3 and info["source"] == str(d)


@pytest.mark.parametrize(
    ("spec", "status", "code", "message"),
    [
        (
            {"model_id": "nope"},
            400,
            "invalid_model_id",
            "model id 'nope' is missing the '/' between org and name",
        ),
        ({"model_id": ""}, 400, "invalid_model_id", "empty model id"),
        ({"model_id": "zz:a/b"}, 400, "unknown_source", None),
        (
            {"harness": "nope"},
            400,
            "unsupported_harness",
            "harness 'nope' is not available on this neuron (available: torch)",
        ),
        ({"quant": "Q4_K_M"}, 400, "unsupported_quant", None),
        (
            {"quant": "q4k"},
            400,
            "unsupported_quant",
            "quant 'q4k' is not supported by harness 'torch' yet; use 'bf16'",
        ),
        ({"devices": [3]}, 400, "invalid_devices", "device index 3 does not exist on this host"),
        ({"tensor_parallel": 2}, 400, "unsupported_parameter", None),
        ({"max_in_flight": 0}, 400, "invalid_value", None),
        ({}, 400, "missing_model_field", None),
    ],
)
async def test_load_errors(
    start_neuron: NeuronFactory,
    spec: dict[str, Any],
    status: int,
    code: str,
    message: str | None,
) -> None:
    rig = await start_neuron()
    d = rig.model("m")
    body = {"model_id": str(d), **spec}
    if spec == {}:
        body = {}
    r = await rig.client.post("/models/load", json=body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code
    assert err["type"] == "invalid_request_error"
    if message is not None:
        assert err["message"] == message
    assert "retry-after" not in r.headers
    assert starts(d) == 0
    assert (await rig.client.get("/models")).json() == []  # no trace left


async def test_candle_is_reported_as_torch(start_neuron: NeuronFactory) -> None:
    rig = await start_neuron()
    r = await rig.load(rig.model("m"), harness="candle", quant="BF16")
    assert r.status_code == 200
    info = await rig.info("local/m")
    assert info["harness"] == "torch" and info["quant"] == "bf16"


async def test_missing_path_is_404(start_neuron: NeuronFactory, tmp_path: Path) -> None:
    rig = await start_neuron()
    r = await rig.load(tmp_path / "absent")
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "model_source_not_found"
    assert (await rig.client.get("/models")).json() == []


async def test_load_failed_marks_failed_and_retry(start_neuron: NeuronFactory) -> None:
    rig = await start_neuron()
    d = rig.model("m", {"load": ["load_failed", "ready"]})
    r = await rig.load(d)
    assert r.status_code == 500
    err = r.json()["error"]
    assert err["code"] == "load_failed" and err["type"] == "api_error"
    assert err["message"] == "loading 'local/m' failed: RuntimeError: broken"
    info = await rig.info("local/m")
    assert info["status"] == "failed" and info["error"] == err["message"]
    # inference on a failed model: never served
    r = await rig.client.post("/v1/chat/completions", json=chat_body("local/m"))
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    # an explicit load tries again
    r = await rig.load(d)
    assert r.status_code == 200
    info = await rig.info("local/m")
    assert info["status"] == "loaded" and "error" not in info


async def test_worker_crash_while_loading_is_load_failed(start_neuron: NeuronFactory) -> None:
    rig = await start_neuron()
    r = await rig.load(rig.model("m", {"load": "crash"}))
    assert r.status_code == 500
    assert r.json()["error"]["message"].startswith("loading 'local/m' failed: WorkerCrashed:")


async def test_oom_while_loading_is_507_and_leaves_no_record(start_neuron: NeuronFactory) -> None:
    rig = await start_neuron()
    r = await rig.load(rig.model("m", {"load": "oom"}))
    assert r.status_code == 507
    err = r.json()["error"]
    assert err["code"] == "insufficient_memory" and err["type"] == "api_error"
    assert {"required_mb", "free_mb"} <= set(err)
    assert (await rig.client.get("/models")).json() == []


async def test_507_precheck_and_default_device(start_neuron: NeuronFactory) -> None:
    gpus = [(24000, 4000, "8.9"), (24000, 20000, "8.9"), (16000, 9000, "7.5")]
    rig = await start_neuron(gpus=gpus, estimate_mb=lambda path, quant: 12000)
    d = rig.model("m")
    r = await rig.load(d)  # most free: device 1
    assert r.status_code == 200, r.text
    assert r.json()["devices"] == [1]
    info = await rig.info("local/m")
    assert info["quant"] == "bf16" and info["vram_used_mb"] == 123  # reported by the worker
    assert "cvd=GPU-1" in worker_events(d)[0]
    r = await rig.load(rig.model("big"), devices=[0])
    assert r.status_code == 507
    err = r.json()["error"]
    assert err["message"] == (
        "model 'local/big' needs about 12000 MB but only 4000 MB is free on device(s) 0"
    )
    assert (err["required_mb"], err["free_mb"]) == (12000, 4000)
    r = await rig.load(rig.model("old"), devices=[2], served_model_id="x/old")
    assert r.status_code == 507  # 9000 < 12000
    rig.neuron.registry.estimate_mb = lambda path, quant: 100
    r = await rig.load(rig.model("old"), devices=[2], served_model_id="x/old")
    assert r.status_code == 200
    assert (await rig.info("x/old"))["quant"] == "fp16"  # compute capability 7.5


async def test_unload(start_neuron: NeuronFactory) -> None:
    rig = await start_neuron()
    d = rig.model("m")
    await rig.load(d)
    pid = rig.registry.records["local/m"].handle.pid
    r = await rig.unload("local/m")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "unloaded" and body["model"] == "local/m"
    assert body["freed_mb"] is not None and body["freed_mb"] > 0
    assert rss_mb(pid) is None  # the worker is gone when the reply comes
    assert await rig.status("local/m") == "unloaded"
    r = await rig.client.post("/v1/chat/completions", json=chat_body("local/m"))
    assert r.status_code == 404
    assert r.json()["error"]["message"] == "model 'local/m' is not loaded on this neuron"
    r = await rig.unload("local/m")
    assert r.status_code == 200 and r.json()["freed_mb"] is None
    r = await rig.client.get("/models/local/m/endpoint")
    assert r.status_code == 200  # still known


async def test_unload_errors(start_neuron: NeuronFactory) -> None:
    rig = await start_neuron()
    r = await rig.unload("a/b")
    assert r.status_code == 404
    assert r.json()["error"] == {
        "message": "model 'a/b' is not known to this neuron",
        "type": "invalid_request_error",
        "code": "model_not_found",
        "param": None,
    }
    d = rig.model("m", {"load_delay": 0.4})
    task = asyncio.create_task(rig.load(d))
    await rig.wait_status("local/m", "loading")
    r = await rig.unload("local/m")
    assert r.status_code == 409 and r.headers["retry-after"] == "5"
    err = r.json()["error"]
    assert err["code"] == "model_loading"
    assert err["message"] == "model 'local/m' is still loading; retry when the load completes"
    # inference on a loading model → 503 model_not_ready, Retry-After 2
    r = await rig.client.post("/v1/chat/completions", json=chat_body("local/m"))
    assert r.status_code == 503 and r.headers["retry-after"] == "2"
    assert r.json()["error"]["code"] == "model_not_ready"
    assert r.json()["error"]["message"] == (
        "model 'local/m' is loading on this neuron; retry shortly"
    )
    await task
    r = await rig.client.post("/models/unload", json={})
    assert r.status_code == 400


async def test_graceful_unload_lets_in_flight_finish(start_neuron: NeuronFactory) -> None:
    rig = await start_neuron()
    d = rig.model("m", {"reply": {"pieces": ["a"] * 10, "delay": 0.03}})
    await rig.load(d)
    req = asyncio.create_task(rig.client.post("/v1/chat/completions", json=chat_body("local/m")))
    await until(lambda: rig.registry.records["local/m"].admission.in_flight > 0)
    unload = asyncio.create_task(rig.unload("local/m"))
    await asyncio.sleep(0.05)
    r = await rig.client.post("/v1/chat/completions", json=chat_body("local/m"))
    assert r.status_code == 503 and r.headers["retry-after"] == "2"
    assert r.json()["error"]["message"] == (
        "model 'local/m' is unloading on this neuron; retry shortly"
    )
    done = await req
    assert done.status_code == 200
    assert done.json()["choices"][0]["message"]["content"] == "a" * 10
    assert (await unload).status_code == 200
    assert await rig.status("local/m") == "unloaded"


async def test_graceful_unload_gives_up_after_the_grace(start_neuron: NeuronFactory) -> None:
    rig = await start_neuron(unload_grace=0.2)
    d = rig.model("m", {"reply": {"pieces": ["a"] * 100, "delay": 0.05}})
    await rig.load(d)
    req = asyncio.create_task(rig.client.post("/v1/chat/completions", json=chat_body("local/m")))
    await until(lambda: rig.registry.records["local/m"].admission.in_flight > 0)
    t0 = time.monotonic()
    assert (await rig.unload("local/m")).status_code == 200
    assert time.monotonic() - t0 < 2
    r = await req
    assert r.status_code == 503 and r.json()["error"]["code"] == "model_unloaded"


async def test_crash_recovers_with_restarts(start_neuron: NeuronFactory) -> None:
    rig = await start_neuron(restart_backoff=(1.0, 0.01, 0.01))
    d = rig.model("m", {"reply": {"pieces": ["a", "b"], "crash_after": 1}})
    await rig.load(d)
    r = await rig.client.post("/v1/chat/completions", json=chat_body("local/m"))
    assert r.status_code == 503 and r.headers["retry-after"] == "2"
    err = r.json()["error"]
    assert err["code"] == "worker_crashed" and err["type"] == "api_error"
    assert err["message"] == (
        "model worker for 'local/m' crashed during the request; it is being restarted"
    )
    assert await rig.status("local/m") == "recovering"
    r = await rig.client.post("/v1/chat/completions", json=chat_body("local/m"))
    assert r.status_code == 503 and r.json()["error"]["code"] == "model_not_ready"
    assert (await rig.client.get("/health")).json()["status"] == "degraded"
    set_fake(d, {"reply": {"pieces": ["ok"]}})
    await rig.wait_status("local/m", "loaded")
    info = await rig.info("local/m")
    assert info["restarts"] == 1
    assert rig.metric("neuron_worker_restarts_total", model="local/m", reason="crash") == 1
    r = await rig.client.post("/v1/chat/completions", json=chat_body("local/m"))
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "ok"
    assert (await rig.client.get("/health")).json()["status"] == "ok"
    # an explicit load resets restarts? no: it is already loaded, so nothing changes
    assert (await rig.load(d)).json()["already_loaded"] is True


async def test_three_failed_restarts_make_it_failed(start_neuron: NeuronFactory) -> None:
    rig = await start_neuron()
    d = rig.model(
        "m",
        {
            "load": ["ready", "load_failed", "load_failed", "load_failed", "ready"],
            "reply": {"pieces": ["a"], "crash_after": 0},
        },
    )
    await rig.load(d)
    r = await rig.client.post("/v1/chat/completions", json=chat_body("local/m"))
    assert r.json()["error"]["code"] == "worker_crashed"
    await rig.wait_status("local/m", "failed")
    assert starts(d) == 4
    info = await rig.info("local/m")
    assert info["error"] == "loading 'local/m' failed: RuntimeError: broken"
    r = await rig.client.post("/v1/chat/completions", json=chat_body("local/m"))
    assert r.status_code == 404  # never served
    await asyncio.sleep(0.1)
    assert starts(d) == 4  # no more attempts
    r = await rig.load(d)  # an explicit load resets it
    assert r.status_code == 200
    assert (await rig.info("local/m"))["restarts"] == 0


async def test_fault_frame_recovers(start_neuron: NeuronFactory) -> None:
    rig = await start_neuron()
    d = rig.model("m", {"reply": {"pieces": ["a", "b"], "fault_after": 1}})
    await rig.load(d)
    r = await rig.client.post("/v1/chat/completions", json=chat_body("local/m"))
    assert r.json()["error"]["code"] == "worker_crashed"
    set_fake(d, {})
    await rig.wait_status("local/m", "loaded")
    assert rig.metric("neuron_worker_restarts_total", model="local/m", reason="non_finite") == 1
    r = await rig.client.post("/v1/chat/completions", json=chat_body("local/m"))
    assert r.status_code == 200


async def test_hang_recovers(start_neuron: NeuronFactory) -> None:
    rig = await start_neuron(stall_secs=0.3)
    d = rig.model("m", {"reply": {"pieces": ["a", "b"], "hang_after": 1}})
    await rig.load(d)
    r = await rig.client.post(
        "/v1/chat/completions", json=chat_body("local/m", stream=True), timeout=5
    )
    assert r.status_code == 200
    assert b"worker_crashed" in r.content and r.content.endswith(b"data: [DONE]\n\n")
    set_fake(d, {})
    await rig.wait_status("local/m", "loaded")
    assert rig.metric("neuron_worker_restarts_total", model="local/m", reason="crash") == 1


async def test_sibling_unaffected_by_a_crash(start_neuron: NeuronFactory) -> None:
    rig = await start_neuron(restart_backoff=(2.0, 2.0, 2.0))
    bad = rig.model("bad", {"reply": {"crash_after": 0}})
    good = rig.model("good")
    await rig.load(bad)
    await rig.load(good)
    r = await rig.client.post("/v1/chat/completions", json=chat_body("local/bad"))
    assert r.json()["error"]["code"] == "worker_crashed"
    r = await rig.client.post("/v1/chat/completions", json=chat_body("local/good"))
    assert r.status_code == 200
    assert await rig.status("local/good") == "loaded"


async def test_unload_stops_a_recovery(start_neuron: NeuronFactory) -> None:
    rig = await start_neuron(restart_backoff=(2.0, 2.0, 2.0))
    d = rig.model("m", {"reply": {"crash_after": 0}})
    await rig.load(d)
    await rig.client.post("/v1/chat/completions", json=chat_body("local/m"))
    assert await rig.status("local/m") == "recovering"
    r = await rig.unload("local/m")
    assert r.status_code == 200
    await asyncio.sleep(0.5)
    assert await rig.status("local/m") == "unloaded"
    assert starts(d) == 1


async def test_load_joins_a_recovery(start_neuron: NeuronFactory) -> None:
    rig = await start_neuron(restart_backoff=(1.0, 0.01, 0.01))
    d = rig.model("m", {"reply": {"crash_after": 0}})
    await rig.load(d)
    await rig.client.post("/v1/chat/completions", json=chat_body("local/m"))
    set_fake(d, {})
    r = await rig.load(d)
    assert r.status_code == 200 and r.json()["already_loaded"] is False
    assert starts(d) == 2
    assert (await rig.info("local/m"))["restarts"] == 1


async def test_queued_requests_wait_through_a_recovery(start_neuron: NeuronFactory) -> None:
    rig = await start_neuron(restart_backoff=(1.0, 0.01, 0.01))
    d = rig.model("m", {"reply": {"pieces": ["a"] * 5, "delay": 0.02, "crash_after": 3}})
    await rig.load(d, max_in_flight=1)  # the second request queues
    first = asyncio.create_task(rig.client.post("/v1/chat/completions", json=chat_body("local/m")))
    await until(lambda: rig.registry.records["local/m"].admission.in_flight > 0)
    queued = asyncio.create_task(rig.client.post("/v1/chat/completions", json=chat_body("local/m")))
    await until(lambda: rig.registry.records["local/m"].admission.queue_depth > 0)
    set_fake(d, {"reply": {"pieces": ["fine"]}})
    r1, r2 = await asyncio.gather(first, queued)
    assert r1.json()["error"]["code"] == "worker_crashed"
    assert r2.status_code == 200, r2.text
    assert r2.json()["choices"][0]["message"]["content"] == "fine"


async def test_activation(start_neuron: NeuronFactory, tmp_path: Path) -> None:
    good = model_dir(tmp_path / "act", "good", {"load_delay": 0.2})
    bad = model_dir(tmp_path / "act", "bad", {"load": "load_failed"})
    rig = await start_neuron(
        default_models=[{"model_id": str(good)}, {"model_id": str(bad)}],
    )
    task = rig.registry.activate(rig.neuron.cfg.default_models)
    act = (await rig.client.get("/health")).json()["activation"]
    assert act["state"] == "pre_warming"
    assert ([act["in_progress"]] if act["in_progress"] else []) + act["pending"] == [
        "local/good",
        "local/bad",
    ]
    statuses = {m["id"]: m["status"] for m in (await rig.client.get("/models")).json()}
    assert statuses == {"local/good": "loading", "local/bad": "loading"}
    await asyncio.sleep(0.1)
    act = (await rig.client.get("/health")).json()["activation"]
    assert act["in_progress"] == "local/good" and act["pending"] == ["local/bad"]
    # /models/load of a pending model joins its activation load
    r = await rig.load(bad)
    assert r.status_code == 500 and r.json()["error"]["code"] == "load_failed"
    await task
    act = (await rig.client.get("/health")).json()["activation"]
    assert act == {
        "state": "ready",
        "pending": [],
        "in_progress": None,
        "completed": ["local/good"],
        "failed": [
            {"model_id": "local/bad", "error": "loading 'local/bad' failed: RuntimeError: broken"}
        ],
    }
    assert starts(good) == 1 and starts(bad) == 1
    assert await rig.status("local/bad") == "failed"
    # later loads never turn the state back to pre_warming
    await rig.load(rig.model("later"))
    assert (await rig.client.get("/health")).json()["activation"]["state"] == "ready"


async def test_no_default_models_is_ready(start_neuron: NeuronFactory) -> None:
    rig = await start_neuron()
    await rig.registry.activate([])
    act = (await rig.client.get("/health")).json()["activation"]
    assert act == {
        "state": "ready",
        "pending": [],
        "in_progress": None,
        "completed": [],
        "failed": [],
    }
