"""Drive a real worker process over a socketpair, blocking, for tier-1 engine tests."""

from __future__ import annotations

import itertools
import os
import socket
import struct
import subprocess
import sys
from collections import defaultdict, deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson

from helexa.neuron.engine.protocol import FrameSocket

TERMINAL = ("done", "error")


@dataclass
class Result:
    """What one generate request produced."""

    deltas: list[dict[str, Any]] = field(default_factory=list)
    end: dict[str, Any] = field(default_factory=dict)

    @property
    def text(self) -> str:
        return "".join(d["text"] for d in self.deltas)

    @property
    def texts(self) -> list[str]:
        return [d["text"] for d in self.deltas]

    @property
    def ids(self) -> list[int]:
        return list(self.end.get("token_ids", []))


class WorkerClient:
    """One worker process and our end of its socket. Frames for other request ids are kept
    aside, so several requests can be in flight."""

    _ids = itertools.count()

    def __init__(self, proc: subprocess.Popen[bytes], sock: socket.socket) -> None:
        self.proc = proc
        self.sock = sock
        self.fs = FrameSocket(sock)
        self.pending: dict[Any, deque[dict[str, Any]]] = defaultdict(deque)
        self.other: deque[dict[str, Any]] = deque()
        self.progress: list[dict[str, Any]] = []
        self.ready: dict[str, Any] | None = None
        self.load_failed: dict[str, Any] | None = None

    @classmethod
    def spawn(
        cls, spec: dict[str, Any], *, env: dict[str, str] | None = None, timeout: float = 120
    ) -> WorkerClient:
        """Start a worker and send `load` (don't wait; see `wait_load`)."""
        ours, theirs = socket.socketpair()
        full_env = {**os.environ, "HELEXA_TEST_FAULTS": "1", "OMP_NUM_THREADS": "1"}
        full_env.update(env or {})
        proc = subprocess.Popen(
            [sys.executable, "-m", "helexa.neuron.engine.worker", "--fd", str(theirs.fileno())],
            pass_fds=[theirs.fileno()],
            env=full_env,
        )
        theirs.close()
        ours.settimeout(timeout)
        w = cls(proc, ours)
        w.send({"op": "load", "spec": {"device": "cpu", "quant": "fp32", **spec}})
        return w

    @classmethod
    def start(cls, spec: dict[str, Any], **kw: Any) -> WorkerClient:
        w = cls.spawn(spec, **kw)
        w.wait_load()
        if w.ready is None:
            w.close()
            raise RuntimeError(f"worker failed to load: {w.load_failed}")
        return w

    def wait_load(self) -> dict[str, Any]:
        """Read until `ready` or `load_failed`; return that frame."""
        while True:
            f = self.recv()
            if f is None:
                raise RuntimeError("worker closed the socket while loading")
            if f["ev"] == "progress":
                self.progress.append(f)
                continue
            if f["ev"] == "ready":
                self.ready = f["info"]
            elif f["ev"] == "load_failed":
                self.load_failed = f
            else:
                raise RuntimeError(f"unexpected frame while loading: {f}")
            return f

    def send(self, frame: dict[str, Any]) -> None:
        """Send a raw frame object: these tests also probe the worker with malformed ones."""
        payload = orjson.dumps(frame)
        self.sock.sendall(struct.pack(">I", len(payload)) + payload)

    def recv(self) -> dict[str, Any] | None:
        return self.fs.recv()

    def next_for(self, rid: Any) -> dict[str, Any]:
        """The next frame about request `rid` (others are queued for their readers)."""
        if self.pending[rid]:
            return self.pending[rid].popleft()
        while True:
            f = self.recv()
            if f is None:
                raise EOFError("worker closed the socket")
            if f.get("ev") == "fault":
                self.other.append(f)
                raise EOFError(f"worker fault: {f}")
            fid = f.get("id")
            if fid == rid:
                return f
            if fid is None:
                self.other.append(f)
            else:
                self.pending[fid].append(f)

    def submit(
        self,
        prompt_ids: list[int],
        *,
        max_tokens: int = 16,
        sampling: dict[str, Any] | None = None,
        stop: list[str] | None = None,
        hold: list[str] | None = None,
        rid: Any = None,
        **extra: Any,
    ) -> Any:
        rid = rid if rid is not None else f"r{next(self._ids)}"
        frame: dict[str, Any] = {
            "op": "generate",
            "id": rid,
            "prompt_ids": prompt_ids,
            "max_tokens": max_tokens,
            "sampling": sampling or {"temperature": 0},
            "stop": stop or [],
            "hold": hold or [],
            "return_token_ids": True,
            **extra,
        }
        self.send(frame)
        return rid

    def collect(self, rid: Any) -> Result:
        res = Result()
        while True:
            f = self.next_for(rid)
            if f["ev"] == "delta":
                res.deltas.append(f)
            elif f["ev"] in TERMINAL:
                res.end = f
                return res

    def generate(self, prompt_ids: list[int], **kw: Any) -> Result:
        return self.collect(self.submit(prompt_ids, **kw))

    def call(self, frame: dict[str, Any]) -> dict[str, Any]:
        """Send a frame with an id and return the first reply about it."""
        self.send(frame)
        return self.next_for(frame["id"])

    def wait_exit(self, timeout: float = 30) -> int:
        return self.proc.wait(timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send({"op": "shutdown"})
            except OSError:
                pass
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.sock.close()

    def __enter__(self) -> WorkerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextmanager
def workers(specs: dict[str, dict[str, Any]]) -> Iterator[dict[str, WorkerClient]]:
    """Workers for these specs, started at once (most of a start is importing torch), loaded
    (a failed load shows in `load_failed`), and closed at the end."""
    ws = {k: WorkerClient.spawn(s) for k, s in specs.items()}
    try:
        for w in ws.values():
            w.wait_load()
        yield ws
    finally:
        for w in ws.values():
            w.close()


def markers_whole(pieces: list[str], markers: list[str]) -> bool:
    """Every occurrence of every marker in the joined text lies inside a single piece."""
    text = "".join(pieces)
    bounds = [0]
    for p in pieces:
        bounds.append(bounds[-1] + len(p))
    spans = list(itertools.pairwise(bounds))
    for m in markers:
        i = text.find(m)
        while i >= 0:
            if not any(a <= i and i + len(m) <= b for a, b in spans):
                return False
            i = text.find(m, i + 1)
    return True
