"""The models a neuron knows: load, unload, recovery and activation.

Every state change of a model goes through the `Registry`, on the event loop. Loads are
single-flight per served id (a second caller joins the operation under way) and run one at a
time, in order, behind one FIFO lock; a load runs in its own task, so a client that goes away
never cancels it. A worker fault turns into a recovery task that is also the model's current
operation, so `/models/load` joins a recovery the same way it joins a load.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from helexa.neuron.activation import Activation, Job
from helexa.neuron.background import Background
from helexa.neuron.engine.frames import ReadyInfo
from helexa.neuron.errors import (
    insufficient_memory,
    load_failed,
    not_known,
    not_loaded,
    not_ready,
    still_loading,
)
from helexa.neuron.gguf_meta import gguf_file_quant
from helexa.neuron.gguf_placement import plan_gguf
from helexa.neuron.load_request import (
    AdmissionDefaults,
    admission_limits,
    new_admission,
    parse_spec,
)
from helexa.neuron.load_watch import watched
from helexa.neuron.metrics import NeuronMetrics
from helexa.neuron.records import (
    FAILED,
    LOADED,
    LOADING,
    RECOVERING,
    UNLOADED,
    DeviceView,
    ModelRecord,
)
from helexa.neuron.sources import ResolvedSpec, resolve_spec
from helexa.neuron.supervisor import Supervisor, WorkerHandle
from helexa.neuron.views import loaded_reply, token_limit
from helexa.neuron.worker_errors import WorkerCrashed
from helexa.neuron.worker_start import (
    DevicesFn,
    EstimateFn,
    choose_devices,
    cpu_threads,
    free_mb,
    load_spec,
    oom_error,
    start_worker,
)
from helexa.wire.errors import ApiError
from helexa.wire.harness import default_quant
from helexa.wire.modelid import parse_model_id
from helexa.wire.neuron import ModelSpec

log = logging.getLogger("helexa.neuron.models")
T = TypeVar("T")

HARNESSES = ("torch",)
RESTART_BACKOFF = (1.0, 5.0, 15.0)
UNLOAD_GRACE = 30.0


ResolveFn = Callable[[ResolvedSpec, Callable[[int | None, int | None], None]], Path]
TokenizerFn = Callable[[Path], Any]


def _now() -> int:
    return int(time.time())


# -- the registry ---------------------------------------------------------------------------------


class Registry:
    def __init__(
        self,
        supervisor: Supervisor,
        *,
        resolve_source: ResolveFn,
        tokenizer_for: TokenizerFn,
        devices: DevicesFn,
        estimate_mb: EstimateFn | None = None,
        metrics: NeuronMetrics | None = None,
        sources: Mapping[str, str] | None = None,
        default_source: str = "huggingface",
        harnesses: Sequence[str] = HARNESSES,
        max_prompt_tokens: int = 16384,
        max_output_tokens: int = 8192,
        admission_defaults: AdmissionDefaults = (1, 16, 120.0),
        restart_backoff: Sequence[float] = RESTART_BACKOFF,
        unload_grace: float = UNLOAD_GRACE,
        load_deadline: tuple[float, float] = (600.0, 120.0),
        worker_threads: int | None = None,
    ) -> None:
        self.supervisor = supervisor
        self.resolve_source = resolve_source
        self.tokenizer_for = tokenizer_for
        self.devices = devices
        self.estimate_mb = estimate_mb
        self.metrics = metrics or NeuronMetrics()
        self.sources = dict(sources or {})
        self.default_source = default_source
        self.harnesses = tuple(harnesses)
        self.max_prompt_tokens = max_prompt_tokens
        self.max_output_tokens = max_output_tokens
        self.admission_defaults = admission_defaults
        self.restart_backoff = tuple(restart_backoff)
        self.unload_grace = unload_grace
        self.load_timeout, self.load_stall = load_deadline  # see load_watch
        self.worker_threads = worker_threads  # None: worker_start.cpu_threads decides
        self.records: dict[str, ModelRecord] = {}
        self.device_count = 1
        self.activation = Activation()
        self._load_lock = asyncio.Lock()  # FIFO: at most one load (or restart) at a time
        self.background = Background()
        self._closing = False

    # -- views ------------------------------------------------------------------------------------

    def limit(self, rec: ModelRecord) -> dict[str, int]:
        return token_limit(
            rec.info.max_position_embeddings, self.max_prompt_tokens, self.max_output_tokens
        )

    def workers_rss_mb(self) -> int:
        """Summed RSS of CPU workers: the `vram_used_mb` of the cpu device."""
        total = 0
        for rec in self.records.values():
            if rec.kind == "cpu" and rec.handle is not None:
                total += rec.handle.rss_mb() or 0
        return total

    # -- inference lookups ------------------------------------------------------------------------

    def serving(self, model: str) -> ModelRecord:
        """The record behind an inference request, or its 404 / 503."""
        rec = self.records.get(model)
        if rec is None or rec.status in (UNLOADED, FAILED):
            raise not_loaded(model)
        if rec.draining:
            raise not_ready(model, "unloading")
        if rec.status != LOADED:
            raise not_ready(model, rec.status)
        return rec

    def touch(self, rec: ModelRecord) -> None:
        rec.last_used_at = _now()

    # -- load -------------------------------------------------------------------------------------

    def _served_id(self, spec: ModelSpec) -> str:
        """The served id a spec names: only the id grammar is checked here."""
        mid = parse_model_id(spec.model_id, self.sources, self.default_source)
        return mid.served_id(spec.served_model_id)

    def _resolve(self, spec: ModelSpec) -> ResolvedSpec:
        """Every load-spec check that needs no I/O, in a fixed order."""
        return resolve_spec(
            spec,
            sources=self.sources,
            default_source=self.default_source,
            harnesses=self.harnesses,
            device_count=self.device_count,
        )

    async def refresh_devices(self) -> list[DeviceView]:
        devices = await self.devices()
        self.device_count = max(1, len(devices))
        return devices

    async def load(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """`POST /models/load`: the reply body, or an ApiError."""
        spec = parse_spec(body)
        faults = body.get("test_faults")
        rec = self.records.get(spec.served_model_id or spec.model_id)
        reuse = rec is not None and set(body) <= {"model_id"} and spec.model_id == rec.id
        if rec is None:
            rec = self.records.get(self._served_id(spec))
        if rec is not None:
            if rec.unload_op is not None:
                await self._join(rec.unload_op, rec.id)
            if rec.op is not None:
                if not reuse and spec != rec.spec:
                    log.warning("load of %s joins the operation under way; spec ignored", rec.id)
                return await self._join(rec.op, rec.id)
            if rec.status == LOADED:
                return loaded_reply(rec, already=True)
            if reuse:
                spec = rec.spec
        return await self._join(self.start_load(spec, test_faults=faults), spec.model_id)

    def start_load(
        self,
        spec: ModelSpec,
        on_start: Callable[[], None] | None = None,
        test_faults: Any = None,
    ) -> asyncio.Task[dict[str, Any]]:
        """Validate, register the model as loading and queue its load (or join the one under
        way). The returned task runs whether or not anyone waits for it."""
        rs = self._resolve(spec)
        served = rs.served_id
        rec = self.records.get(served)
        if rec is not None and rec.op is not None:
            return rec.op
        if rec is not None and rec.status == LOADED:
            return asyncio.ensure_future(_value(loaded_reply(rec, already=True)))
        snap = None if rec is None else rec.snapshot()
        if rec is None:
            admission = new_admission(served, spec, self.admission_defaults, self.metrics)
            rec = ModelRecord(served, rs.source_str, spec, admission)
        rec.move(LOADING)
        rec.spec, rec.source, rec.progress = spec, rs.source_str, None
        if test_faults is not None:
            rec.test_faults = test_faults
        self.records[served] = rec
        rec.op = self.background.spawn(self._load_op(rec, rs, snap, on_start), f"load:{served}")
        return rec.op

    async def _join(self, op: asyncio.Future[dict[str, Any]], model: str) -> dict[str, Any]:
        """Wait for an operation someone else may also wait for; our cancellation leaves it be."""
        await asyncio.wait({op})
        if op.cancelled():
            raise not_ready(model, "unloaded")
        return op.result()

    async def _load_op(
        self,
        rec: ModelRecord,
        rs: ResolvedSpec,
        snap: dict[str, Any] | None,
        on_start: Callable[[], None] | None,
    ) -> dict[str, Any]:
        try:
            async with self._load_lock:
                if on_start is not None:
                    on_start()
                started = time.monotonic()
                try:
                    await self._watched(rec, self._do_load(rec, rs))
                except ApiError as e:
                    if e.code == "load_failed":
                        self._fail(rec, e.message)
                    else:
                        self._restore(rec, snap)
                    raise
                except asyncio.CancelledError:
                    self._restore(rec, snap)
                    raise
                except Exception as e:  # anything unplanned is a load failure with its text
                    log.exception("loading %s failed", rec.id)
                    err = load_failed(rec.id, f"{type(e).__name__}: {e}")
                    self._fail(rec, err.message)
                    raise err from None
                secs = time.monotonic() - started
            self.metrics.load_duration(rec.id).observe(secs)
            rec.restarts = 0
            log.info("loaded %s in %.1fs on %s %s", rec.id, secs, rec.kind, rec.devices)
            reply = loaded_reply(rec, already=False)
            reply["load_secs"] = round(secs, 3)
            return reply
        finally:
            rec.op = None

    async def _do_load(self, rec: ModelRecord, rs: ResolvedSpec) -> None:
        rec.progress = {"phase": "download", "done_bytes": None, "total_bytes": None}

        def on_download(done: int | None, total: int | None) -> None:
            rec.progress = {"phase": "download", "done_bytes": done, "total_bytes": total}

        path = await asyncio.to_thread(self.resolve_source, rs, on_download)
        gguf = rs.harness == "llamacpp"
        span = (rs.spec.tensor_parallel or 1) if gguf else 1
        chosen = choose_devices(rs.devices, await self.refresh_devices(), span)
        kind = chosen[0].kind if chosen else "cpu"
        indexes = [d.index for d in chosen] or [0]
        quant = rs.quant or default_quant(kind, chosen[0].compute_capability if chosen else None)
        rec.placement = None  # a record reloaded with another harness keeps no stale split
        if gguf:  # the layer split, or the 507 (gguf_placement.py); the file names its quant
            rec.placement = await asyncio.to_thread(plan_gguf, rec.id, path, rs.spec, chosen)
            quant = gguf_file_quant(path) or rs.quant or "gguf"
        elif self.estimate_mb is not None:
            required = await asyncio.to_thread(self.estimate_mb, path, quant)
            free = free_mb(chosen)
            if required is not None and free is not None and required > free:
                raise insufficient_memory(rec.id, required, free, indexes)
        rec.progress = {"phase": "load", "done_bytes": None, "total_bytes": None}
        tokenizer = await asyncio.to_thread(self.tokenizer_for, path)
        rec.harness, rec.quant, rec.devices, rec.kind, rec.path = (
            rs.harness,
            quant,
            indexes,
            kind,
            path,
        )
        rec.tokenizer = tokenizer
        handle, info = await self._start_worker(rec)
        rec.handle, rec.info = handle, info
        rec.move(LOADED)
        rec.error, rec.progress = None, None
        rec.loaded_at = _now()
        rec.draining = False
        rec.admission.configure(*admission_limits(rec.spec, self.admission_defaults))
        rec.admission.resume()

    async def _start_worker(self, rec: ModelRecord) -> tuple[WorkerHandle, ReadyInfo]:
        workers = 1 + sum(1 for r in self.records.values() if r is not rec and r.handle)
        threads = cpu_threads(self.worker_threads, workers)
        spec = load_spec(rec, self.max_prompt_tokens, self.max_output_tokens, threads)
        return await start_worker(
            self.supervisor,
            rec,
            spec,
            self._on_fault,
            lambda: oom_error(rec, self.devices, self.estimate_mb),
        )

    def _watched(self, rec: ModelRecord, work: Awaitable[T]) -> Awaitable[T]:
        return watched(rec, work, self.load_timeout, self.load_stall)

    def _restore(self, rec: ModelRecord, snap: dict[str, Any] | None) -> None:
        """A load that failed for a reason other than load_failed leaves no trace."""
        if snap is not None:
            rec.restore(snap)
        elif self.records.get(rec.id) is rec:
            del self.records[rec.id]

    def _fail(self, rec: ModelRecord, error: str) -> None:
        rec.move(FAILED)
        rec.error, rec.progress = error, None
        rec.handle = None
        rec.admission.fail_waiters(not_ready(rec.id, FAILED))

    # -- recovery -------------------------------------------------------------------------

    def _on_fault(self, handle: WorkerHandle, err: WorkerCrashed) -> None:
        rec = self.records.get(handle.model_id)
        if rec is None or rec.handle is not handle or self._closing:
            return
        if rec.draining:  # being unloaded anyway: nothing to recover
            rec.handle = None
            return
        log.warning("model %s is recovering after a worker %s", rec.id, err.reason)
        reason = err.reason if err.reason in ("non_finite", "cuda_error") else "crash"
        self.metrics.restarts(rec.id, reason).inc()  # a hang counts as a crash
        rec.move(RECOVERING)
        rec.handle = None
        rec.admission.pause()
        rec.op = self.background.spawn(self._recover(rec, err), f"recover:{rec.id}")

    async def _recover(self, rec: ModelRecord, err: WorkerCrashed) -> dict[str, Any]:
        last = f"worker {err.reason}: {err.detail}"
        attempt = 0
        try:
            for attempt, delay in enumerate(self.restart_backoff, 1):
                await asyncio.sleep(delay)
                async with self._load_lock:
                    if rec.status != RECOVERING:
                        raise not_ready(rec.id, rec.status)
                    try:
                        started = time.monotonic()
                        handle, info = await self._watched(rec, self._start_worker(rec))
                    except ApiError as e:
                        last = e.message
                        log.warning("restart %d of %s failed: %s", attempt, rec.id, e.message[:512])
                        continue
                    rec.handle, rec.info = handle, info
                    rec.move(LOADED)
                    rec.error = None
                    rec.loaded_at = _now()
                    rec.restarts += 1
                    rec.admission.resume()
                    secs = time.monotonic() - started
                    log.info("model %s restarted (restart %d) in %.1fs", rec.id, rec.restarts, secs)
                    reply = loaded_reply(rec, already=False)
                    reply["load_secs"] = round(secs, 3)
                    return reply
            log.error("model %s failed after %d restarts: %s", rec.id, attempt, last[:512])
            self._fail(rec, last)
            raise load_failed(rec.id, last)
        finally:
            rec.op = None

    # -- unload ----------------------------------------------------------------------------

    async def unload(self, model: str, force: bool = False) -> dict[str, Any]:
        rec = self.records.get(model)
        if rec is None:
            raise not_known(model)
        if rec.status == LOADING and force and rec.op is not None:
            return await self._cancel_load(rec)
        if rec.status == LOADING:
            raise still_loading(model)
        if rec.unload_op is None:
            rec.unload_op = self.background.spawn(self._unload_op(rec, force), f"unload:{model}")
        elif force:
            await self._stop_worker(rec)  # speeds up a graceful unload under way
        return await self._join(rec.unload_op, model)

    async def _cancel_load(self, rec: ModelRecord) -> dict[str, Any]:
        """A forced unload of a loading model: cancel the load (a worker being started is
        killed; a download thread finishes on its own) and leave the model unloaded."""
        assert rec.op is not None
        rec.op.cancel()
        await asyncio.wait({rec.op})
        self.records.setdefault(rec.id, rec)
        rec.move(UNLOADED)
        rec.error, rec.progress, rec.handle = None, None, None
        log.info("load of %s cancelled by a forced unload", rec.id)
        return {"status": "unloaded", "model": rec.id, "freed_mb": None}

    async def _unload_op(self, rec: ModelRecord, force: bool) -> dict[str, Any]:
        try:
            freed: int | None = None
            if rec.status in (RECOVERING, FAILED):
                if rec.op is not None:
                    rec.op.cancel()
                    await asyncio.wait({rec.op})
            elif rec.status == LOADED:
                rec.draining = True
                rec.admission.fail_waiters(not_ready(rec.id, "unloading"))
                if not force:
                    await rec.admission.wait_idle(self.unload_grace)
                freed = rec.memory_mb()
                await self._stop_worker(rec)
            rec.admission.fail_waiters(not_ready(rec.id, UNLOADED))
            rec.move(UNLOADED)
            rec.handle, rec.draining, rec.progress = None, False, None
            rec.error = None
            log.info("unloaded %s (freed %s MB)", rec.id, freed)
            return {"status": "unloaded", "model": rec.id, "freed_mb": freed}
        finally:
            rec.unload_op = None

    async def _stop_worker(self, rec: ModelRecord) -> None:
        handle = rec.handle
        if handle is not None:
            await handle.stop()

    # -- activation -----------------------------------------------------------------------

    def activate(self, entries: Sequence[Mapping[str, Any] | ModelSpec]) -> asyncio.Task[None]:
        """Register every default model as loading and pre-warm them one after another."""
        act = self.activation
        jobs: list[Job] = []
        for entry in entries:
            body = entry.model_dump(exclude_none=True) if isinstance(entry, ModelSpec) else entry
            ident = str(body.get("served_model_id") or body.get("model_id") or "")
            try:
                spec = parse_spec(body)
                ident = self._served_id(spec)
                act.pending.append(ident)
                on_start = functools.partial(act.started, ident)
                jobs.append((ident, self.start_load(spec, on_start=on_start)))
            except ApiError as e:
                act.refused(ident, e.message)
        if jobs:
            act.state = "pre_warming"
        return self.background.spawn(act.run(jobs, self._join), "activation")

    # -- shutdown ---------------------------------------------------------------------------------

    async def close(self) -> None:
        """Stop every worker (SIGTERM drain step 3); recoveries and loads are abandoned."""
        self._closing = True
        await self.background.cancel_all()
        stops = [r.handle.stop() for r in self.records.values() if r.handle is not None]
        if stops:
            await asyncio.gather(*stops, return_exceptions=True)
        for rec in self.records.values():
            if rec.handle is not None:
                rec.move(UNLOADED)
                rec.handle = None


async def _value(reply: dict[str, Any]) -> dict[str, Any]:
    return reply
