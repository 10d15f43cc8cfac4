"""Starting a model's worker: which devices, the load spec it gets, and its load failures as
the load errors (a 507 with what is known of need and room, or `load_failed`)."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from helexa.neuron.engine.errors import LoadError
from helexa.neuron.engine.frames import Progress, ReadyInfo
from helexa.neuron.engine.loader import FaultPlan, LoadSpec
from helexa.neuron.errors import insufficient_memory, load_failed
from helexa.neuron.gguf_files import shard_paths
from helexa.neuron.records import DeviceView, ModelRecord
from helexa.neuron.supervisor import Supervisor, WorkerHandle
from helexa.neuron.worker_errors import WorkerCrashed
from helexa.wire.errors import ApiError

DevicesFn = Callable[[], Awaitable[list[DeviceView]]]
EstimateFn = Callable[[Path, str], "int | None"]
FaultFn = Callable[[WorkerHandle, WorkerCrashed], None]


def choose_devices(
    asked: list[int] | None, devices: list[DeviceView], count: int = 1
) -> list[DeviceView]:
    """The devices asked for, else the CPU, else the `count` GPUs with the most free memory
    (in index order)."""
    by_index = {d.index: d for d in devices}
    if asked:
        return [by_index[i] for i in asked if i in by_index]
    if not devices:
        return []
    if devices[0].kind == "cpu":
        return [devices[0]]
    best = sorted(devices, key=lambda d: (-(d.free_mb or 0), d.index))[: max(1, count)]
    return sorted(best, key=lambda d: d.index)


def free_mb(devices: list[DeviceView]) -> int | None:
    frees = [d.free_mb for d in devices]
    if not frees or any(f is None for f in frees):
        return None
    return sum(f for f in frees if f is not None)


def cpu_threads(configured: int | None, workers: int) -> int:
    """A worker's compute threads: `worker_threads`, else this process's cores shared out among
    the `workers` (the new one included): more threads than free cores only wait on each other."""
    if configured:
        return configured
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - no affinity API (macOS)
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, workers))


def load_spec(
    rec: ModelRecord, max_prompt_tokens: int, max_output_tokens: int, threads: int | None = None
) -> LoadSpec:
    """The worker's load spec (helexa.neuron.engine.protocol)."""
    return LoadSpec(
        path=str(rec.path),
        served_id=rec.id,
        harness=rec.harness,
        quant=rec.quant,
        device=rec.kind,
        devices=list(rec.devices),
        max_prompt_tokens=max_prompt_tokens,
        max_output_tokens=max_output_tokens,
        prefix_cache_mb=rec.spec.prefix_cache_mb,
        max_batch=rec.spec.max_batch or 8,
        kv_budget_mb=rec.spec.kv_budget_mb,
        compile=rec.spec.compile or "auto",
        n_threads=threads,
        **_gguf_fields(rec),
        # honoured only with HELEXA_TEST_FAULTS=1 in the worker's environment
        test_faults=FaultPlan.parse(rec.test_faults) if rec.test_faults else None,
    )


def _gguf_fields(rec: ModelRecord) -> dict[str, Any]:
    """llamacpp: every shard, the context, and the layer split (gguf_placement.py)."""
    p = rec.placement
    if p is None or rec.path is None:
        return {}
    return {
        "gguf_files": [str(f) for f in shard_paths(rec.path)],
        "n_ctx": p.n_ctx,
        "n_gpu_layers": p.n_gpu_layers,
        "tensor_split": p.tensor_split,
        "kv_cache_type": rec.spec.kv_cache_type or "f16",
    }


async def start_worker(
    supervisor: Supervisor,
    rec: ModelRecord,
    spec: LoadSpec,
    on_fault: FaultFn,
    oom: Callable[[], Awaitable[ApiError]],
) -> tuple[WorkerHandle, ReadyInfo]:
    """Spawn and load; worker failures become load errors."""

    def on_progress(frame: Progress) -> None:
        rec.progress = {
            "phase": frame.phase,
            "done_bytes": frame.done_bytes,
            "total_bytes": frame.total_bytes,
        }

    try:
        handle = supervisor.handle(rec.id, spec, rec.devices, rec.kind, on_fault=on_fault)
        info = await handle.start(on_progress)
    except LoadError as e:
        if e.status == 507 or e.code == "insufficient_memory":
            if {"required_mb", "free_mb"} <= set(e.extras):
                raise ApiError(507, "insufficient_memory", e.message, extras=e.extras) from None
            raise await oom() from None
        if e.status == 500 or e.code == "load_failed":
            raise load_failed(rec.id, e.message) from None
        raise ApiError(e.status, e.code, e.message) from None
    except WorkerCrashed as e:
        raise load_failed(rec.id, f"WorkerCrashed: {e.detail}") from None
    except OSError as e:
        raise load_failed(rec.id, f"{type(e).__name__}: {e}") from None
    return handle, info


async def oom_error(rec: ModelRecord, devices: DevicesFn, estimate: EstimateFn | None) -> ApiError:
    """An out-of-memory while loading is a 507 with what we know of need and room."""
    on = [d for d in await devices() if d.index in rec.devices]
    free = free_mb(on) or 0
    required = None
    if estimate is not None and rec.path is not None:
        with contextlib.suppress(Exception):
            required = await asyncio.to_thread(estimate, rec.path, rec.quant or "")
    return insufficient_memory(rec.id, required or free + 1, free, rec.devices)
