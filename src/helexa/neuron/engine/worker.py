"""A worker process: `python -m helexa.neuron.engine.worker --fd N`.

Reads the `load` frame, loads the model, answers `ready` (or `load_failed` and exits 1), then
serves frames until `shutdown` or until the daemon closes the socket (exit 0). A reader thread
takes frames off the socket (answering `ping` itself, so a long generation never delays a health
probe) and queues the rest; the main thread steps every open generation round-robin, one token
each, and looks at the queue between steps, which is where `cancel` takes effect. A fault
(non-finite logits, CUDA error) sends a `fault` frame and exits 1 at once. Logs go to stderr.
"""

from __future__ import annotations

import argparse
import logging
import os
import queue
import signal
import sys
import threading
from typing import TYPE_CHECKING, Any

from helexa import logs
from helexa.neuron.engine.loader import LoadError, LoadSpec, load_failed
from helexa.neuron.engine.protocol import FrameSocket, ProtocolError

if TYPE_CHECKING:
    from helexa.neuron.engine.torch_engine import Generation, TorchEngine

log = logging.getLogger("helexa.neuron.worker")


class _Gone(Exception):
    """The daemon closed the socket."""


def _die(fs: FrameSocket, frame: dict[str, Any]) -> None:
    """Send a fault and leave now: the model or device can't be trusted any more."""
    log.error("fault (%s): %s", frame.get("kind"), frame.get("detail"))
    try:
        fs.send(frame)
    except OSError:
        pass
    logging.shutdown()
    os._exit(1)


class Server:
    """Serves one loaded engine over the frame socket."""

    def __init__(self, fs: FrameSocket, engine: TorchEngine) -> None:
        self.fs = fs
        self.engine = engine
        self.inbox: queue.SimpleQueue[dict[str, Any] | None] = queue.SimpleQueue()
        self.active: dict[Any, Generation] = {}

    def send(self, frame: dict[str, Any]) -> None:
        try:
            self.fs.send(frame)
        except OSError as e:
            raise _Gone() from e

    def _reader(self) -> None:
        try:
            while True:
                frame = self.fs.recv()
                if frame is None:
                    break
                if frame.get("op") == "ping":
                    self.fs.send(
                        {
                            "ev": "pong",
                            "id": frame.get("id"),
                            "vram_used_mb": self.engine.vram_used_mb(),
                        }
                    )
                    continue
                self.inbox.put(frame)
        except (ProtocolError, OSError, ValueError) as e:
            log.warning("frame socket failed: %s", e)
        self.inbox.put(None)

    def run(self) -> int:
        threading.Thread(target=self._reader, name="frames", daemon=True).start()
        try:
            while True:
                batch: list[dict[str, Any] | None] = []
                if not self.active:
                    batch.append(self.inbox.get())
                while True:
                    try:
                        batch.append(self.inbox.get_nowait())
                    except queue.Empty:
                        break
                for frame in batch:
                    if frame is None:
                        log.info("daemon closed the socket; exiting")
                        return 0
                    if frame.get("op") == "shutdown":
                        log.info("shutdown")
                        return 0
                    self.handle(frame)
                for gen in list(self.active.values()):
                    self.step(gen)
        except _Gone:
            log.info("daemon went away; exiting")
            return 0

    def handle(self, frame: dict[str, Any]) -> None:
        from helexa.neuron.engine.torch_engine import RequestError

        op = frame.get("op")
        rid = frame.get("id")
        if op == "cancel":
            gen = self.active.pop(rid, None)
            if gen is not None:
                for f in gen.cancel():
                    self.send(f)
            return
        if rid is None:
            log.warning("dropping a %r frame without an id", op)
            return
        if op == "generate":
            if rid in self.active:
                self.send(RequestError("invalid_value", f"request id {rid!r} is in use").frame(rid))
                return
            try:
                self.active[rid] = self.engine.start(frame)
            except RequestError as e:
                self.send(e.frame(rid))
        elif op == "embed":
            self.embed(rid, frame)
        else:
            log.warning("unknown op %r", op)
            self.send(RequestError("unknown_op", f"unknown op {op!r}").frame(rid))

    def embed(self, rid: Any, frame: dict[str, Any]) -> None:
        from helexa.neuron.engine.torch_engine import RequestError

        try:
            vectors, n = self.engine.embed(frame.get("inputs"))
        except RequestError as e:
            self.send(e.frame(rid))
            return
        except Exception as e:
            self.send(self._failure(rid, e))
            return
        self.send({"ev": "embedding", "id": rid, "vectors": vectors, "prompt_tokens": n})

    def step(self, gen: Generation) -> None:
        try:
            frames = gen.step()
        except Exception as e:
            self.active.pop(gen.id, None)
            gen.cancel()  # releases the cache; its frame is not sent
            self.send(self._failure(gen.id, e))
            return
        for f in frames:
            self.send(f)
        if gen.finished:
            self.active.pop(gen.id, None)

    def _failure(self, rid: Any, exc: Exception) -> dict[str, Any]:
        """The frame for a request that raised; exits the process for faults."""
        from helexa.neuron.engine.torch_engine import Fault, is_cuda_error, is_oom

        if isinstance(exc, Fault):
            _die(self.fs, exc.frame())
        if self.engine.device.type == "cuda" and is_cuda_error(exc):
            _die(self.fs, Fault("cuda_error", f"{type(exc).__name__}: {exc}").frame())
        if is_oom(exc):
            log.warning("out of memory on request %s: %s", rid, exc)
            if self.engine.device.type == "cuda":
                import torch

                torch.cuda.empty_cache()
            return {
                "ev": "error",
                "id": rid,
                "code": "insufficient_memory",
                "message": f"out of memory while serving the request: {exc}".strip(),
            }
        log.exception("request %s failed", rid)
        return {
            "ev": "error",
            "id": rid,
            "code": "internal_error",
            "message": f"{type(exc).__name__}: {exc}",
        }


def serve(fs: FrameSocket) -> int:
    """The whole life of a worker on an open frame socket; returns the exit code."""
    try:
        first = fs.recv()
    except (ProtocolError, OSError, ValueError) as e:
        log.error("no load frame: %s", e)
        return 2
    if first is None:
        return 0
    if first.get("op") != "load":
        fs.send(LoadError(400, "invalid_value", "the first frame must be 'load'").frame())
        return 1
    served = str((first.get("spec") or {}).get("served_id") or "?")
    try:
        spec = LoadSpec.from_frame(first.get("spec") or {})
        log.info("loading %s from %s (%s)", spec.served_id, spec.path, spec.device)
        from helexa.neuron.engine.torch_engine import TorchEngine

        engine = TorchEngine.load(spec, progress=fs.send)
    except LoadError as e:
        log.error("load failed: %s", e.message)
        fs.send(e.frame())
        return 1
    except Exception as e:
        log.exception("load failed")
        fs.send(load_failed(served, e).frame())
        return 1
    info = engine.info()
    log.info(
        "ready: %s (%s on %s, %s MB, %.1fs)",
        spec.served_id,
        info["dtype"],
        engine.device,
        info["vram_used_mb"],
        info["load_secs"],
    )
    fs.send({"ev": "ready", "info": info})
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
