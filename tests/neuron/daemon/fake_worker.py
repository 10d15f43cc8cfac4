"""A fake engine worker: speaks helexa.neuron.engine.protocol over --fd without torch.

Behaviour comes from `fake.json` in the model directory named by the load spec's `path`
(re-read on every request, so a test can change it between requests):

    load        "ready" | "load_failed" | "oom" | "crash" | "hang", or a list indexed by how
                many times a worker was started for that directory (the last entry repeats)
    load_delay  seconds before answering load
    load_error  {"status", "code", "message"} sent with load_failed
    info        fields merged into the ready info
    progress    true: send progress frames while loading
    progress_every  seconds: during load_delay, a progress frame (more bytes each time) this often
    ignore_shutdown / ignore_sigterm   true: make stopping it take SIGTERM / SIGKILL
    reply       {"pieces": [str], "delay": s, "first_delay": s, "tokens": n per piece,
                 "finish_reason",
                 "stop_reason", "crash_after": k, "hang_after": k, "fault_after": k,
                 "error": {"code", "message"}, "exit_code": n}

Every frame it receives is appended to `events.log` in that directory (`<op> <id>`), so tests
can see that a cancel reached the worker; the last generate frame is kept in
`last_generate.json`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "src"))

from helexa.neuron.engine.frames import (
    Cancel,
    Delta,
    Done,
    Embed,
    Embedding,
    Error,
    FaultReport,
    Generate,
    LoadFailed,
    Ping,
    Pong,
    Progress,
    Ready,
    ReadyInfo,
    Shutdown,
)
from helexa.neuron.engine.protocol import FrameSocket

_OPS = {Generate: "generate", Cancel: "cancel", Embed: "embed", Ping: "ping", Shutdown: "shutdown"}


class Fake:
    def __init__(self, sock: FrameSocket) -> None:
        self.sock = sock
        self.dir = Path(".")
        self.spec: dict[str, Any] = {}
        self.cancelled: set[str] = set()
        self.lock = threading.Lock()

    def cfg(self) -> dict[str, Any]:
        try:
            return dict(json.loads((self.dir / "fake.json").read_text()))
        except (OSError, ValueError):
            return {}

    def log(self, line: str) -> None:
        with self.lock, (self.dir / "events.log").open("a") as f:
            f.write(line + "\n")

    def load(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.dir = Path(str(spec.get("path") or "."))
        if self.dir.suffix == ".gguf":  # llamacpp: the script sits next to the GGUF file
            self.dir = self.dir.parent
        (self.dir / "spec.json").write_text(json.dumps(spec))  # the load spec, for tests
        starts_file = self.dir / ".starts"
        n = int(starts_file.read_text()) if starts_file.exists() else 0
        starts_file.write_text(str(n + 1))
        cfg = self.cfg()
        if cfg.get("ignore_sigterm"):
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        plan = cfg.get("load", "ready")
        action = plan[min(n, len(plan) - 1)] if isinstance(plan, list) else plan
        self.log(f"load {action} pid={os.getpid()} cvd={os.environ.get('CUDA_VISIBLE_DEVICES')}")
        if cfg.get("progress"):
            for i in range(3):
                self.sock.send(Progress("load", i, 2))
        delay, every = float(cfg.get("load_delay", 0)), cfg.get("progress_every")
        if every:
            end, done = time.monotonic() + delay, 0
            while time.monotonic() < end:
                done += 1
                self.sock.send(Progress("load", done, None))
                time.sleep(float(every))
        else:
            time.sleep(delay)
        if action == "hang":
            time.sleep(3600)
        if action == "crash":
            os._exit(3)
        if action in ("load_failed", "oom"):
            err = cfg.get("load_error") or (
                {"status": 507, "code": "insufficient_memory", "message": "out of memory"}
                if action == "oom"
                else {"status": 500, "code": "load_failed", "message": "RuntimeError: broken"}
            )
            self.sock.send(LoadFailed(**err))
            os._exit(1)
        info = ReadyInfo(
            harness="torch",
            vram_used_mb=123,
            devices=spec.get("devices") or [0],
            quant=spec.get("quant") or "fp32",
            dtype="float32",
            max_position_embeddings=4096,
            capabilities=["text"],
            load_secs=0.01,
        )
        for key, value in (cfg.get("info") or {}).items():
            setattr(info, key, value)
        self.sock.send(Ready(info))

    def generate(self, frame: Generate) -> None:
        rid = frame.id
        reply = dict(self.cfg().get("reply") or {})
        pieces = list(reply.get("pieces", ["Hello", " world", "!"]))
        delay = float(reply.get("delay", 0))
        per = int(reply.get("tokens", 1))
        max_tokens = frame.max_tokens or 1 << 30
        with self.lock:
            (self.dir / "last_generate.json").write_text(json.dumps(dataclasses.asdict(frame)))
        time.sleep(float(reply.get("first_delay", 0)))
        if reply.get("error"):
            self.sock.send(Error(rid, **reply["error"]))
            return
        sent = 0
        finish = str(reply.get("finish_reason", "stop"))
        for i, text in enumerate(pieces):
            if i == reply.get("crash_after"):
                os._exit(int(reply.get("exit_code", 9)))
            if i == reply.get("fault_after"):
                self.sock.send(FaultReport("non_finite", "nan in logits"))
                os._exit(1)
            if i == reply.get("hang_after"):
                time.sleep(3600)
            if rid in self.cancelled:
                self.log(f"cancelled {rid} after {i}")
                return
            if sent + per > max_tokens:
                finish = "length"
                break
            self.sock.send(Delta(rid, text, per))
            sent += per
            if delay:
                time.sleep(delay)
        if rid in self.cancelled:
            self.log(f"cancelled {rid} after {len(pieces)}")
            return
        self.sock.send(Done(rid, finish, reply.get("stop_reason"), sent))

    def serve(self) -> None:
        first = self.sock.recv()  # raw: the fake loads whatever spec it is given
        if first is None or first.get("op") != "load":
            os._exit(2)
        self.load(first["spec"])
        while True:
            op = self.sock.recv_op()
            if op is None:
                os._exit(0)
            self.log(f"{_OPS[type(op)]} {getattr(op, 'id', '')}")
            if isinstance(op, Generate):
                threading.Thread(target=self.generate, args=(op,), daemon=True).start()
            elif isinstance(op, Cancel):
                self.cancelled.add(op.id)
            elif isinstance(op, Embed):
                vecs = [[float(len(ids)), float(sum(ids) % 7), 1.0] for ids in op.inputs]
                toks = sum(len(ids) for ids in op.inputs)
                self.sock.send(Embedding(op.id, vecs, toks))
            elif isinstance(op, Ping):
                self.sock.send(Pong(op.id, 123))
            elif isinstance(op, Shutdown):
                if self.cfg().get("ignore_shutdown"):
                    continue
                os._exit(0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fd", type=int, required=True)
    args = ap.parse_args()
    Fake(FrameSocket.from_fd(args.fd)).serve()


if __name__ == "__main__":
    main()
