"""Worker processes: one per loaded model, spoken to in frames over a socketpair.

A `WorkerHandle` starts the process, sends the `load` frame and waits for `ready`, then
demultiplexes the worker's frames by request id into one queue per request. Whatever way the
worker goes away (EOF, exit, a `fault` frame, or silence while requests wait), every request in
flight fails with `WorkerCrashed` and the owner's `on_fault` callback runs once, so recovery has
one entry point. The daemon never imports torch: the worker is a separate interpreter.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import shlex
import signal
import socket
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from helexa.exits import exit_text
from helexa.neuron.engine.errors import LoadError
from helexa.neuron.engine.frames import (
    Cancel,
    Delta,
    Done,
    Embed,
    Embedding,
    Error,
    FaultReport,
    Generate,
    Load,
    LoadFailed,
    Op,
    Ping,
    Pong,
    Progress,
    Ready,
    ReadyInfo,
    Shutdown,
)
from helexa.neuron.engine.loader import LoadSpec
from helexa.neuron.engine.protocol import ProtocolError, encode, read_event
from helexa.neuron.memory import rss_mb
from helexa.neuron.worker_errors import RequestFailed, WorkerCrashed, WorkerError, WorkerStopped

log = logging.getLogger("helexa.neuron.supervisor")

WORKER_CMD_ENV = "HELEXA_NEURON_WORKER_CMD"  # tests point this at a fake worker
DEFAULT_STOP_GRACE = 10.0
DEFAULT_STALL_SECS = 300.0


def _request_failed(frame: Error) -> RequestFailed:
    return RequestFailed(frame.code, frame.message, frame.param)


def default_worker_cmd() -> list[str]:
    """The real engine, unless $HELEXA_NEURON_WORKER_CMD names another program (tests)."""
    override = os.environ.get(WORKER_CMD_ENV, "").strip()
    if override:
        return shlex.split(override)
    return [sys.executable, "-m", "helexa.neuron.engine.worker"]


def visible_devices(devices: Sequence[int], parent: str | None) -> str:
    """CUDA_VISIBLE_DEVICES for a worker: our indexes are those torch sees in this process,
    so map them through our own CUDA_VISIBLE_DEVICES when it is set."""
    if parent is None or not parent.strip():
        return ",".join(str(d) for d in devices)
    ours = [p.strip() for p in parent.split(",") if p.strip()]
    return ",".join(ours[d] if 0 <= d < len(ours) else str(d) for d in devices)


OnFault = Callable[["WorkerHandle", WorkerCrashed], None]
OnProgress = Callable[[Progress], None]
_Reply = Delta | Done | Error | Embedding | Pong
CudaEnv = Callable[[list[int], str], dict[str, str]]
"""`cuda_env(devices, kind)`: the CUDA_VISIBLE_DEVICES (etc.) a worker for those devices needs."""


class WorkerHandle:
    """One worker process and the requests in flight on it."""

    def __init__(
        self,
        model_id: str,
        spec: LoadSpec,
        *,
        cmd: Sequence[str],
        env: Mapping[str, str],
        on_fault: OnFault | None = None,
        stop_grace: float = DEFAULT_STOP_GRACE,
        stall_secs: float | None = DEFAULT_STALL_SECS,
    ) -> None:
        self.model_id = model_id
        self.spec = spec
        self.cmd = list(cmd)
        self.env = dict(env)
        self.on_fault = on_fault
        self.stop_grace = stop_grace
        self.stall_secs = stall_secs
        self.proc: asyncio.subprocess.Process | None = None
        self.info = ReadyInfo()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._pending: dict[str, asyncio.Queue[_Reply | WorkerError]] = {}
        self._ids = itertools.count(1)
        self._monitor: asyncio.Task[None] | None = None
        self._read_task: asyncio.Task[None] | None = None
        self._fault: tuple[str, str] | None = None
        self._stopping = False
        self._ended = asyncio.Event()
        self.last_frame_at = time.monotonic()

    # -- lifecycle ------------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def alive(self) -> bool:
        return self.proc is not None and not self._ended.is_set() and not self._stopping

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    def rss_mb(self) -> int | None:
        return rss_mb(self.proc.pid) if self.proc is not None else None

    async def start(self, on_progress: OnProgress | None = None) -> ReadyInfo:
        """Spawn, send `load`, wait for `ready`. Raises LoadError or WorkerCrashed; either way
        the process is gone when it raises."""
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            fd = child.fileno()
            self.proc = await asyncio.create_subprocess_exec(
                *self.cmd,
                "--fd",
                str(fd),
                pass_fds=(fd,),
                env=self.env,
                stdin=asyncio.subprocess.DEVNULL,
                start_new_session=True,
            )
        except BaseException:
            parent.close()
            raise
        finally:
            child.close()
        log.info("worker for %s started (pid %d)", self.model_id, self.proc.pid)
        try:
            self._reader, self._writer = await asyncio.open_unix_connection(
                sock=parent, limit=1 << 20
            )
            self._writer.write(encode(Load(self.spec)))
            await self._writer.drain()
            self.info = await self._await_ready(on_progress)
        except BaseException:
            # Close the transport explicitly: left to the GC, uvloop's transport and the socket
            # object would each close the fd, and the second close can hit a reused fd number
            # (an accepted client connection), which then dies with EBADF.
            self._close_socket()
            await self._kill()
            self._ended.set()
            raise
        self.last_frame_at = time.monotonic()
        self._read_task = asyncio.create_task(
            self._read_loop(), name=f"worker-read:{self.model_id}"
        )
        self._monitor = asyncio.create_task(self._watch(), name=f"worker-watch:{self.model_id}")
        return self.info

    async def _await_ready(self, on_progress: OnProgress | None) -> ReadyInfo:
        assert self._reader is not None and self.proc is not None
        while True:
            try:
                frame = await read_event(self._reader)
            except (ProtocolError, OSError, ValueError) as e:
                frame, problem = None, f"{type(e).__name__}: {e}"
            else:
                problem = ""
            if frame is None:
                rc = await self._wait_exit(5.0)
                detail = f"the worker {exit_text(rc)} before it was ready"
                if self._fault is not None:
                    detail = f"{self._fault[0]}: {self._fault[1]}"
                raise WorkerCrashed(self._fault[0] if self._fault else "crash", problem or detail)
            if isinstance(frame, Ready):
                return frame.info
            if isinstance(frame, Progress):
                if on_progress is not None:
                    on_progress(frame)
            elif isinstance(frame, LoadFailed):
                raise LoadError(frame.status, frame.code, frame.message, frame.extras)
            elif isinstance(frame, FaultReport):
                self._fault = (frame.kind, frame.detail)
            else:
                log.debug("worker for %s sent %r before ready", self.model_id, frame)

    async def _read_loop(self) -> None:
        assert self._reader is not None
        reader = self._reader
        pending = self._pending
        try:
            while True:
                frame = await read_event(reader)
                if frame is None:
                    return
                self.last_frame_at = time.monotonic()
                if isinstance(frame, _Reply):
                    q = pending.get(frame.id)
                    if q is not None:
                        q.put_nowait(frame)
                elif isinstance(frame, FaultReport):
                    self._fault = (frame.kind, frame.detail)
                    log.error(
                        "worker for %s reported a fault: %s %s",
                        self.model_id,
                        self._fault[0],
                        self._fault[1][:512],
                    )
                    return
                elif not isinstance(frame, Progress):
                    log.debug("worker for %s sent unexpected %r", self.model_id, frame)
        except OSError as e:  # ECONNRESET when the worker dies: _watch reports it
            log.debug("worker for %s: socket closed: %s", self.model_id, e)
        except (ProtocolError, ValueError) as e:
            log.error("worker for %s: broken frame stream: %s", self.model_id, str(e)[:512])

    async def _watch(self) -> None:
        """Wait for the worker to go away (or stall), then fail what was in flight."""
        assert self.proc is not None and self._read_task is not None
        exit_task = asyncio.create_task(self.proc.wait())
        waits: set[asyncio.Future[Any]] = {self._read_task, exit_task}
        stall: asyncio.Task[None] | None = None
        if self.stall_secs:
            stall = asyncio.create_task(self._stall_watch(self.stall_secs))
            waits.add(stall)
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            reason, detail = "crash", ""
            if stall is not None and stall.done():
                reason, detail = "hang", f"no frame from the worker for {self.stall_secs:g}s"
            elif exit_task.done() and not self._read_task.done():
                # Frames it sent before dying are still in the socket: read them first.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(self._read_task), 1.0)
            if self._fault is not None:
                reason, detail = self._fault
            await self._kill()
            if not detail:
                rc = self.proc.returncode
                detail = f"the worker {exit_text(rc)}"
        finally:
            for t in (exit_task, stall, self._read_task):
                if t is not None and not t.done():
                    t.cancel()
            self._close_socket()
        stopping = self._stopping
        err: WorkerError = (
            WorkerStopped("the worker was stopped") if stopping else WorkerCrashed(reason, detail)
        )
        for q in self._pending.values():
            q.put_nowait(err)
        self._ended.set()
        if not stopping:
            log.error("worker for %s went away (%s): %s", self.model_id, reason, detail[:512])
            if self.on_fault is not None and isinstance(err, WorkerCrashed):
                self.on_fault(self, err)

    async def _stall_watch(self, secs: float) -> None:
        tick = min(secs / 4, 5.0)
        while True:
            await asyncio.sleep(tick)
            if self._pending and time.monotonic() - self.last_frame_at > secs:
                return

    async def stop(self) -> None:
        """Unload: `shutdown` frame, SIGTERM, SIGKILL after `stop_grace`; returns once the
        process has exited (so its memory is free). Requests in flight get WorkerStopped."""
        if self.proc is None:
            return
        self._stopping = True
        if self.proc.returncode is None:
            with contextlib.suppress(Exception):
                self._send(Shutdown())
            if await self._wait_exit(min(1.0, self.stop_grace)) is None:
                self._signal(signal.SIGTERM)
                if await self._wait_exit(self.stop_grace) is None:
                    log.warning("worker for %s ignored SIGTERM; killing it", self.model_id)
                    await self._kill()
        if self._monitor is not None:
            await asyncio.wait({self._monitor})
        else:
            self._close_socket()
            self._ended.set()
        log.info("worker for %s stopped", self.model_id)

    async def wait_ended(self) -> None:
        await self._ended.wait()

    def _signal(self, sig: int) -> None:
        assert self.proc is not None
        if self.proc.returncode is not None:
            return
        try:
            os.killpg(self.proc.pid, sig)  # its own session: children go too
        except (ProcessLookupError, PermissionError):
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)

    async def _kill(self) -> None:
        if self.proc is None:
            return
        if self.proc.returncode is None:
            self._signal(signal.SIGKILL)
        await self.proc.wait()

    async def _wait_exit(self, timeout: float) -> int | None:
        assert self.proc is not None
        try:
            return await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            return None

    def _close_socket(self) -> None:
        if self._writer is not None:
            self._writer.close()

    # -- requests -------------------------------------------------------------------------------

    def _send(self, frame: Op) -> None:
        if self._writer is None or self._writer.is_closing():
            raise WorkerCrashed("crash", "the worker's socket is closed")
        self._writer.write(encode(frame))

    def _open(self) -> tuple[str, asyncio.Queue[_Reply | WorkerError]]:
        if not self.alive:
            raise WorkerStopped("the worker is not running")
        rid = f"r{next(self._ids)}"
        q: asyncio.Queue[_Reply | WorkerError] = asyncio.Queue()
        if not self._pending:
            self.last_frame_at = time.monotonic()
        self._pending[rid] = q
        return rid, q

    def generate(self, request: Generate) -> Stream:
        """A streamed generation: `async with handle.generate(req) as s: async for ev in s`.

        The request's `id` is replaced by one of this handle's. Leaving the block early
        (client gone) sends `cancel` to the worker."""
        return Stream(self, request)

    async def _call(self, make: Callable[[str], Op], expect: type[_Reply]) -> _Reply:
        rid, q = self._open()
        try:
            self._send(make(rid))
            item = await q.get()
        finally:
            self._pending.pop(rid, None)
        if isinstance(item, BaseException):
            raise item
        if isinstance(item, Error):
            raise _request_failed(item)
        if not isinstance(item, expect):
            raise RequestFailed("protocol_error", f"expected {expect.__name__}, got {item!r}")
        return item

    async def embed(self, inputs: list[list[int]]) -> Embedding:
        reply = await self._call(lambda rid: Embed(rid, inputs), Embedding)
        assert isinstance(reply, Embedding)
        return reply

    async def ping(self) -> Pong:
        reply = await self._call(Ping, Pong)
        assert isinstance(reply, Pong)
        return reply


class Stream:
    """The daemon's side of one generate request (the worker's is a GenerationState): an async
    iterator of Delta frames ending with one Done."""

    __slots__ = ("_handle", "_id", "_q", "_request", "finished")

    def __init__(self, handle: WorkerHandle, request: Generate) -> None:
        self._handle = handle
        self._request = request
        self._id = ""
        self._q: asyncio.Queue[_Reply | WorkerError] | None = None
        self.finished = False

    async def __aenter__(self) -> Stream:
        self._id, self._q = self._handle._open()
        self._request.id = self._id
        try:
            self._handle._send(self._request)
        except BaseException:
            self._handle._pending.pop(self._id, None)
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        h = self._handle
        h._pending.pop(self._id, None)
        if not self.finished and h.alive:
            with contextlib.suppress(Exception):
                h._send(Cancel(self._id))

    def __aiter__(self) -> Stream:
        return self

    async def __anext__(self) -> Delta | Done:
        if self.finished:
            raise StopAsyncIteration
        assert self._q is not None
        item = await self._q.get()
        if isinstance(item, Delta):
            return item
        self.finished = True
        if isinstance(item, Done):
            return item
        if isinstance(item, Error):
            raise _request_failed(item)
        if isinstance(item, WorkerError):
            raise item
        raise RequestFailed("protocol_error", f"unexpected {item!r} in a generation")


class Supervisor:
    """Makes WorkerHandles with this neuron's worker command and process settings."""

    def __init__(
        self,
        worker_cmd: Sequence[str] | None = None,
        *,
        stop_grace: float = DEFAULT_STOP_GRACE,
        stall_secs: float | None = DEFAULT_STALL_SECS,
        environ: Mapping[str, str] | None = None,
        cuda_env: CudaEnv | None = None,
    ) -> None:
        self.worker_cmd = list(worker_cmd) if worker_cmd else default_worker_cmd()
        self.cuda_env = cuda_env
        self.stop_grace = stop_grace
        self.stall_secs = stall_secs
        self.environ = dict(os.environ if environ is None else environ)

    def worker_env(self, devices: Sequence[int], kind: str) -> dict[str, str]:
        env = dict(self.environ)
        # Idle OpenMP threads spin only briefly: with libgomp's default spin a worker starved the
        # daemon and any other process on a shared CPU (decode fell ~5x beside one competitor),
        # and sleeping at once (OMP_WAIT_POLICY=PASSIVE) cost llama.cpp half its decode and a
        # compiled torch step 45 % (numbers in docs/reference.md, `worker_threads`).
        if "OMP_WAIT_POLICY" not in env and "GOMP_SPINCOUNT" not in env:
            env["GOMP_SPINCOUNT"] = "1000"
        if self.cuda_env is not None:
            env.update(self.cuda_env(list(devices), kind))
        elif kind == "cpu":
            env["CUDA_VISIBLE_DEVICES"] = ""
        else:
            env["CUDA_VISIBLE_DEVICES"] = visible_devices(
                devices, self.environ.get("CUDA_VISIBLE_DEVICES")
            )
        return env

    def handle(
        self,
        model_id: str,
        spec: LoadSpec,
        devices: Sequence[int],
        kind: str,
        on_fault: OnFault | None = None,
    ) -> WorkerHandle:
        return WorkerHandle(
            model_id,
            spec,
            cmd=self.worker_cmd,
            env=self.worker_env(devices, kind),
            on_fault=on_fault,
            stop_grace=self.stop_grace,
            stall_secs=self.stall_secs,
        )
