"""The version-aware sweep against loopback servers: a fake neuron and a fake OpenAI engine for
the cell logic, and one real `neuron serve` with a tiny model for chat and cold load end to end."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from bench_rig import FakeOpenAI, bench_config

from helexa.bench.runner import Runner
from helexa.bench.store import Store
from rig.fake_neuron import FakeNeuron, model_info

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))  # the e2e rig
TOKEN = "node-secret"


@pytest.fixture
async def neuron() -> AsyncIterator[FakeNeuron]:
    fake = FakeNeuron(token=TOKEN)
    fake.version = {"package_version": "0.3.0", "git_sha": "aaaaaaa", "build_timestamp": "t1"}
    fake.stream_usage = (20, 4)
    async with fake:
        yield fake


@pytest.fixture
async def engine() -> AsyncIterator[FakeOpenAI]:
    fake = await FakeOpenAI(models=["llama-3b"]).start()
    yield fake
    await fake.stop()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "bench.sqlite")
    yield s
    s.close()


def rows(store: Store) -> list[dict[str, Any]]:
    conn = sqlite3.connect(store.path)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM runs ORDER BY id")]
    finally:
        conn.close()


def targets(neuron: FakeNeuron, engine: FakeOpenAI) -> list[dict[str, Any]]:
    return [
        {"name": "n1", "endpoint": neuron.url, "token": TOKEN},
        {"name": "llama", "endpoint": engine.url, "kind": "openai", "version": "b4567"},
    ]


async def test_second_sweep_on_the_same_build_runs_nothing_and_a_new_build_runs_again(
    tmp_path: Path, neuron: FakeNeuron, engine: FakeOpenAI, store: Store
) -> None:
    cfg = bench_config(tmp_path, targets(neuron, engine), samples=2, concurrency=(2,))
    runner = Runner(cfg, store, bench_sha="bench01")

    first = await runner.sweep()
    # 2 targets × 1 model × (chat:16, concurrency:2) × 2 samples
    assert (first.ran, first.failed, first.unreachable) == (8, 0, [])
    got = rows(store)
    assert len(got) == 8 and all(r["ok"] == 1 for r in got)
    n1 = [r for r in got if r["host"] == "n1"]
    assert {r["git_sha"] for r in n1} == {"aaaaaaa"}
    assert {(r["hostname"], r["gpu"], r["harness"], r["bench_sha"]) for r in n1} == {
        ("mock-node", "CPU", "torch", "bench01")
    }
    assert json.loads(n1[0]["build_info"])["build_timestamp"] == "t1"
    chat = next(r for r in n1 if r["scenario_id"] == "chat:16")
    assert (chat["prompt_size_approx"], chat["max_tokens"], chat["prompt_tokens_actual"]) == (
        16,
        8,
        20,
    )
    assert chat["completion_tokens"] == 4 and chat["ttft_s"] is not None
    conc = next(r for r in got if r["host"] == "llama" and r["scenario_id"] == "concurrency:2")
    assert json.loads(conc["extra"])["streams"] == 2
    assert {r["git_sha"] for r in got if r["host"] == "llama"} == {"b4567"}

    chats_before = neuron.count("/v1/chat/completions"), len(engine.bodies)
    neuron.reset_observations()
    second = await runner.sweep()
    assert (second.ran, second.failed) == (0, 0)
    assert (neuron.count("/v1/chat/completions"), len(engine.bodies)) == (0, chats_before[1])
    assert {r.path for r in neuron.requests} <= {"/version", "/models", "/discovery"}

    neuron.version = {"package_version": "0.3.1", "git_sha": "bbbbbbb"}
    third = await runner.sweep()
    assert (third.ran, third.failed) == (4, 0)  # only the neuron's cells, on the new build
    assert len(rows(store)) == 12
    assert store.cell_counts("n1", "bbbbbbb", "test-model", "chat:16") == (2, 0)


async def test_only_loaded_models_are_benchmarked(
    tmp_path: Path, neuron: FakeNeuron, store: Store
) -> None:
    neuron.models = [model_info("test-model"), model_info("asleep", status="unloaded")]
    cfg = bench_config(tmp_path, [{"name": "n1", "endpoint": neuron.url, "token": TOKEN}])
    await Runner(cfg, store).sweep()
    assert {r["model_id"] for r in rows(store)} == {"test-model"}


async def test_failed_runs_are_stored_and_complete_the_cell(
    tmp_path: Path, neuron: FakeNeuron, engine: FakeOpenAI, store: Store
) -> None:
    engine.status = 500
    neuron.stream_usage = None  # a stream without usage is a failed run too
    cfg = bench_config(tmp_path, targets(neuron, engine), samples=3)
    runner = Runner(cfg, store)
    res = await runner.sweep()
    assert (res.ran, res.failed) == (6, 6) and not res.ok
    got = rows(store)
    assert all(r["ok"] == 0 for r in got)
    assert {r["error"] for r in got if r["host"] == "llama"} == {"HTTP 500: boom: engine exploded"}
    assert {r["error"] for r in got if r["host"] == "n1"} == {"stream carried no usage chunk"}
    # samples_per_version failures complete the cell: no retry storm on a broken model
    assert (await runner.sweep()).ran == 0


async def test_mixed_ok_and_failed_fill_until_enough_ok(
    tmp_path: Path, neuron: FakeNeuron, store: Store
) -> None:
    cfg = bench_config(
        tmp_path, [{"name": "n1", "endpoint": neuron.url, "token": TOKEN}], samples=2
    )
    neuron.fault, neuron.fault_count = "close_before_headers", 1
    res = await Runner(cfg, store).sweep()
    assert (res.ran, res.failed) == (3, 1)
    assert store.cell_counts("n1", "aaaaaaa", "test-model", "chat:16") == (2, 1)


async def test_unreachable_target_is_skipped_and_the_rest_still_run(
    tmp_path: Path, engine: FakeOpenAI, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = bench_config(
        tmp_path,
        [
            {"name": "gone", "endpoint": "http://127.0.0.1:1", "token": TOKEN},
            {"name": "llama", "endpoint": engine.url, "kind": "openai"},
        ],
        samples=1,
    )
    with caplog.at_level("INFO", logger="helexa.bench"):
        res = await Runner(cfg, store).sweep()
    assert res.unreachable == ["gone"] and (res.ran, res.failed) == (1, 0)
    assert any("target gone skipped" in r.getMessage() for r in caplog.records)
    assert any("llama llama-3b chat:16" in r.getMessage() for r in caplog.records)  # progress
    assert [r["host"] for r in rows(store)] == ["llama"]


async def test_cold_load_cell_on_a_neuron_target(
    tmp_path: Path, neuron: FakeNeuron, store: Store
) -> None:
    neuron.load_delay = 0.1
    cfg = bench_config(
        tmp_path,
        [{"name": "n1", "endpoint": neuron.url, "token": TOKEN}],
        samples=1,
        prompt_sizes=(),
        cold_load=True,
    )
    res = await Runner(cfg, store).sweep()
    assert (res.ran, res.failed) == (1, 0)
    (row,) = rows(store)
    assert row["scenario_id"] == "cold_load" and json.loads(row["extra"])["load_s"] >= 0.1


@pytest.mark.torch
@pytest.mark.slow
async def test_real_neuron_chat_and_cold_load(tmp_path: Path) -> None:
    """One real `neuron serve` with the tiny Qwen3: chat:N and cold_load end to end."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from e2e_rig import TOKEN as E2E_TOKEN
    from e2e_rig import Neuron, build_tiny

    tiny = build_tiny(tmp_path / "qa")
    node = Neuron(
        "n1", tmp_path, {"cpu_memory_mb": 8000, "default_models": [{"model_id": str(tiny)}]}
    )
    node.env["HELEXA_BUILD_SHA"] = "e2ebench0000001"
    try:
        node.start()
        node.wait_ready(within=120)
        (model,) = [m for m, info in node.models().items() if info["status"] == "loaded"]
        cfg = bench_config(
            tmp_path,
            [{"name": "real", "endpoint": node.url, "token": E2E_TOKEN}],
            samples=1,
            prompt_sizes=(64,),
            cold_load=True,
            max_tokens=8,
            timeout=120,
        )
        store = Store(tmp_path / "bench.sqlite")
        runner = Runner(cfg, store)
        res = await runner.sweep()
        got = {r["scenario_id"]: r for r in rows(store)}
        assert (res.ran, res.failed) == (2, 0), got
        chat, cold = got["chat:64"], got["cold_load"]
        assert chat["git_sha"] == "e2ebenc" and chat["model_id"] == model
        assert chat["hostname"] and chat["gpu"] == "CPU"
        # sized with the neuron's /tokenize, so the real count is close to 64
        assert abs(chat["prompt_tokens_actual"] - 64) <= 8
        assert 1 <= chat["completion_tokens"] <= 8 and chat["ttft_s"] > 0
        assert cold["ok"] == 1 and json.loads(cold["extra"])["load_s"] > 0
        assert cold["ttft_s"] > json.loads(cold["extra"])["load_s"]
        assert node.status(model) == "loaded"
        assert (await runner.sweep()).ran == 0
        store.close()
    except BaseException:
        print(node.log_tail())
        raise
    finally:
        node.stop()


async def test_loop_sweeps_until_stopped(tmp_path: Path, engine: FakeOpenAI, store: Store) -> None:
    cfg = bench_config(tmp_path, [{"name": "llama", "endpoint": engine.url, "kind": "openai"}])
    cfg.bench.sweep_interval_secs = 0.05
    runner = Runner(cfg, store)
    stop = asyncio.Event()
    task = asyncio.create_task(runner.loop(stop))
    await asyncio.sleep(0.1)  # the first sweep fills the cell
    engine.models.append("second")  # the next sweep notices the new model
    for _ in range(250):  # ≤ 5 s
        if len(rows(store)) >= 4:
            break
        await asyncio.sleep(0.02)
    stop.set()
    await asyncio.wait_for(task, 5)
    assert {r["model_id"] for r in rows(store)} == {"llama-3b", "second"}
