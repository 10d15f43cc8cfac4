"""A worker process: `python -m helexa.neuron.engine.worker --fd N`.

Reads the `load` frame, loads the model, answers `ready` (or `load_failed` and exits 1), then
serves frames until `shutdown` or until the daemon closes the socket (exit 0). A reader thread
takes frames off the socket (answering `ping` itself, so a long generation never delays a health
probe) and queues the rest; the main thread steps every open generation, one token each (one
batched forward where the engine can), and looks at the queue between steps, which is where
`cancel` takes effect. A generation the engine can't admit yet (its batch or KV budget is full)
waits, in order, until another ends. A fault (non-finite logits, CUDA error) sends a `fault`
frame and exits 1 at once. Logs go to stderr.
"""

from __future__ import annotations

import argparse
import logging
import os
import queue
import signal
import sys
import threading
import time

from helexa import logs
from helexa.neuron.engine import harnesses
from helexa.neuron.engine.base import Engine
from helexa.neuron.engine.errors import Fault, LoadError, RequestError, load_failed
from helexa.neuron.engine.frames import (
    Cancel,
    Embed,
    Embedding,
    Error,
    Event,
    FaultReport,
    Generate,
    Load,
    LoadFailed,
    Op,
    Ping,
    Pong,
    Ready,
    Shutdown,
)
from helexa.neuron.engine.generation import GenerationState
from helexa.neuron.engine.loader import LoadSpec
from helexa.neuron.engine.protocol import BadOp, FrameSocket, ProtocolError

log = logging.getLogger("helexa.neuron.worker")


class _Gone(Exception):
    """The daemon closed the socket."""


def _die(fs: FrameSocket, fault: Fault) -> None:
    """Send a fault and leave now: the model or device can't be trusted any more."""
    log.error("fault (%s): %s", fault.kind, fault.detail)
    try:
        fs.send(FaultReport(fault.kind, fault.detail))
    except OSError:
        pass
    logging.shutdown()
    os._exit(1)


def _error(rid: str, e: RequestError) -> Error:
    return Error(rid, e.code, e.message, e.param)


class Server:
    """Serves one loaded engine over the frame socket."""

    def __init__(self, fs: FrameSocket, engine: Engine) -> None:
        self.fs = fs
        self.engine = engine
        self.inbox: queue.SimpleQueue[Op | None] = queue.SimpleQueue()
        self.active: dict[str, GenerationState] = {}
        self.waiting: dict[str, GenerationState] = {}  # opened, not admitted yet (FIFO)

    def send(self, frame: Event) -> None:
        try:
            self.fs.send(frame)
        except OSError as e:
            raise _Gone() from e

    def _reader(self) -> None:
        try:
            while True:
                try:
                    op = self.fs.recv_op()
                except BadOp as e:
                    log.warning("%s", e)
                    if e.error is not None:
                        self.fs.send(e.error)
                    continue
                except LoadError as e:
                    log.warning("ignoring a second load frame: %s", e)
                    continue
                if op is None:
                    break
                if isinstance(op, Ping):
                    self.fs.send(Pong(op.id, self.engine.memory_mb()))
                    continue
                self.inbox.put(op)
        except (ProtocolError, OSError, ValueError) as e:
            log.warning("frame socket failed: %s", e)
        self.inbox.put(None)

    def run(self) -> int:
        threading.Thread(target=self._reader, name="frames", daemon=True).start()
        try:
            while True:
                self.admit()
                batch: list[Op | None] = []
                if not self.active:
                    batch.append(self.inbox.get())
                while True:
                    try:
                        batch.append(self.inbox.get_nowait())
                    except queue.Empty:
                        break
                for op in batch:
                    if op is None:
                        log.info("daemon closed the socket; exiting")
                        return 0
                    if isinstance(op, Shutdown):
                        log.info("shutdown")
                        return 0
                    self.handle(op)
                self.admit()
                if self.active:
                    self.step()
        except _Gone:
            log.info("daemon went away; exiting")
            return 0

    def handle(self, op: Op) -> None:
        if isinstance(op, Cancel):
            gen = self.active.pop(op.id, None) or self.waiting.pop(op.id, None)
            if gen is not None:
                for f in self.engine.cancel(gen):
                    self.send(f)
        elif isinstance(op, Generate):
            if op.id in self.active or op.id in self.waiting:
                err = RequestError("invalid_value", f"request id {op.id!r} is in use")
                self.send(_error(op.id, err))
                return
            try:
                self.waiting[op.id] = self.engine.start(op)
            except RequestError as e:
                self.send(_error(op.id, e))
        elif isinstance(op, Embed):
            self.embed(op)
        else:
            log.warning("ignoring a %s frame after load", type(op).__name__)

    def admit(self) -> None:
        """Start waiting generations in order while the engine has room for them."""
        while self.waiting:
            rid, state = next(iter(self.waiting.items()))
            if not self.engine.admits(state, list(self.active.values())):
                return
            self.active[rid] = self.waiting.pop(rid)

    def embed(self, op: Embed) -> None:
        try:
            vectors, n = self.engine.embed(op.inputs)
        except Exception as e:
            self.send(_error(op.id, self._request_error(e)))
            return
        self.send(Embedding(op.id, vectors, n))

    def step(self) -> None:
        for r in self.engine.step(list(self.active.values())):
            if r.error is not None:
                self.active.pop(r.state.id, None)
                self.send(_error(r.state.id, self._request_error(r.error)))
                continue
            for f in r.events:
                self.send(f)
            if r.state.finished:
                self.active.pop(r.state.id, None)

    def _request_error(self, exc: Exception) -> RequestError:
        """What a failed request is answered with; exits the process for faults."""
        verdict = self.engine.classify(exc)
        if isinstance(verdict, Fault):
            _die(self.fs, verdict)
        assert isinstance(verdict, RequestError)
        return verdict


def _load(spec: LoadSpec, fs: FrameSocket) -> Engine:
    """The spec's harness, loaded; wrapped in the test faults when the spec carries them."""
    plan = spec.test_faults
    if plan is not None and plan.load_delay_secs:
        time.sleep(plan.load_delay_secs)
    engine = harnesses.load(spec, fs.send)
    if plan is None:
        return engine
    from helexa.neuron.engine.faults import FaultyEngine

    return FaultyEngine(engine, plan)


def serve(fs: FrameSocket) -> int:
    """The whole life of a worker on an open frame socket; returns the exit code."""
    try:
        first = fs.recv_op()
    except LoadError as e:
        log.error("load failed: %s", e.message)
        fs.send(LoadFailed(e.status, e.code, e.message, e.extras))
        return 1
    except (BadOp, ProtocolError, OSError, ValueError) as e:
        log.error("no load frame: %s", e)
        return 2
    if first is None:
        return 0
    if not isinstance(first, Load):
        fs.send(LoadFailed(400, "invalid_value", "the first frame must be 'load'"))
        return 1
    spec = first.spec
    try:
        log.info("loading %s from %s (%s)", spec.served_id, spec.path, spec.device)
        engine = _load(spec, fs)
    except LoadError as e:
        log.error("load failed: %s", e.message)
        fs.send(LoadFailed(e.status, e.code, e.message, e.extras))
        return 1
    except Exception as e:
        log.exception("load failed")
        err = load_failed(spec.served_id, e)
        fs.send(LoadFailed(err.status, err.code, err.message))
        return 1
    info = engine.info()
    log.info(
        "ready: %s (%s %s, %s MB, %.1fs)",
        spec.served_id,
        info.harness,
        info.dtype or info.quant,
        info.vram_used_mb,
        info.load_secs,
    )
    fs.send(Ready(info))
    return Server(fs, engine).run()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="helexa.neuron.engine.worker")
    ap.add_argument("--fd", type=int, required=True, help="inherited socket fd")
    ap.add_argument("--log-level", default=os.environ.get("HELEXA_WORKER_LOG_LEVEL", "info"))
    ap.add_argument("--log-format", default="text", choices=("text", "json"))
    args = ap.parse_args(argv)
    logs.setup(args.log_level, args.log_format)
    # The daemon owns our lifecycle: a terminal's Ctrl-C reaches it, and it stops us in order.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    fs = FrameSocket.from_fd(args.fd)
    try:
        rc = serve(fs)
    except OSError as e:
        log.info("frame socket closed: %s", e)
        rc = 0
    logging.shutdown()
    return rc


if __name__ == "__main__":
    code = main()
    sys.stderr.flush()
    # Skip interpreter teardown (seconds with torch loaded): unload waits for this exit.
    os._exit(code)
