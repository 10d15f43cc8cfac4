"""A fake engine worker: speaks helexa.neuron.engine.protocol over --fd without torch.

Behaviour comes from `fake.json` in the model directory named by the load spec's `path`
(re-read on every request, so a test can change it between requests):

    load        "ready" | "load_failed" | "oom" | "crash" | "hang", or a list indexed by how
                many times a worker was started for that directory (the last entry repeats)
    load_delay  seconds before answering load
    load_error  {"status", "code", "message"} sent with load_failed
    info        fields merged into the ready info
    progress    true: send progress frames while loading
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
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "src"))

from helexa.neuron.engine.protocol import FrameSocket


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
                self.sock.send(
                    {"ev": "progress", "phase": "load", "done_bytes": i, "total_bytes": 2}
                )
        time.sleep(float(cfg.get("load_delay", 0)))
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
            self.sock.send({"ev": "load_failed", **err})
            os._exit(1)
        info = {
            "vram_used_mb": 123,
            "devices": spec.get("devices") or [0],
            "harness": "torch",
            "quant": spec.get("quant") or "fp32",
            "dtype": "float32",
            "max_position_embeddings": 4096,
            "capabilities": ["text"],
            "load_secs": 0.01,
        }
        info.update(cfg.get("info") or {})
        self.sock.send({"ev": "ready", "info": info})

    def generate(self, frame: dict[str, Any]) -> None:
        rid = frame["id"]
        reply = dict(self.cfg().get("reply") or {})
        pieces = list(reply.get("pieces", ["Hello", " world", "!"]))
        delay = float(reply.get("delay", 0))
        per = int(reply.get("tokens", 1))
        max_tokens = int(frame.get("max_tokens") or 1 << 30)
        with self.lock:
            (self.dir / "last_generate.json").write_text(json.dumps(frame))
        time.sleep(float(reply.get("first_delay", 0)))
        if reply.get("error"):
            self.sock.send({"ev": "error", "id": rid, **reply["error"]})
            return
        sent = 0
        finish = str(reply.get("finish_reason", "stop"))
        for i, text in enumerate(pieces):
            if i == reply.get("crash_after"):
                os._exit(int(reply.get("exit_code", 9)))
            if i == reply.get("fault_after"):
                self.sock.send({"ev": "fault", "kind": "non_finite", "detail": "nan in logits"})
                os._exit(1)
            if i == reply.get("hang_after"):
                time.sleep(3600)
            if rid in self.cancelled:
                self.log(f"cancelled {rid} after {i}")
                return
            if sent + per > max_tokens:
                finish = "length"
                break
            self.sock.send({"ev": "delta", "id": rid, "text": text, "tokens": per})
            sent += per
            if delay:
                time.sleep(delay)
        if rid in self.cancelled:
            self.log(f"cancelled {rid} after {len(pieces)}")
            return
        self.sock.send(
            {
                "ev": "done",
                "id": rid,
                "finish_reason": finish,
                "stop_reason": reply.get("stop_reason"),
                "completion_tokens": sent,
            }
        )

    def serve(self) -> None:
        first = self.sock.recv()
        if first is None or first.get("op") != "load":
            os._exit(2)
        self.load(first["spec"])
        while True:
            frame = self.sock.recv()
            if frame is None:
                os._exit(0)
            op = frame.get("op")
            self.log(f"{op} {frame.get('id', '')}")
            if op == "generate":
                threading.Thread(target=self.generate, args=(frame,), daemon=True).start()
            elif op == "cancel":
                self.cancelled.add(frame["id"])
            elif op == "embed":
                vecs = [[float(len(ids)), float(sum(ids) % 7), 1.0] for ids in frame["inputs"]]
                toks = sum(len(ids) for ids in frame["inputs"])
                self.sock.send(
                    {"ev": "embedding", "id": frame["id"], "vectors": vecs, "prompt_tokens": toks}
                )
            elif op == "ping":
                self.sock.send({"ev": "pong", "id": frame["id"], "vram_used_mb": 123})
            elif op == "shutdown":
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
