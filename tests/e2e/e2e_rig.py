"""The end-to-end rig: real `neuron serve` and `cortex serve` processes on ephemeral loopback
ports, configured by TOML files written to a temp dir, with helpers to poll, kill and restart
them.

A separate module (not conftest.py) so test modules can import it by a unique name. Every
process is started in its own session and stopped with everything it spawned (workers run in
sessions of their own, so they are found through /proc and killed one by one).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
from prometheus_client.parser import text_string_to_metric_families

from rig.net import free_port
from rig.procs import alive, cmdline, descendants
from rig.toml import write_toml

TOKEN = "e2e-node-secret"
API_KEY = "e2e-client-key"  # the SDKs always send a key, and cortex refuses unknown ones
AUTH = {"authorization": f"Bearer {TOKEN}"}
WORKER_MODULE = "helexa.neuron.engine.worker"
T = TypeVar("T")


def clean_env(**extra: str) -> dict[str, str]:
    """The test's environment minus anything that would steer the daemons (proxies, config
    variables), offline, CPU only."""
    drop = ("HELEXA_API_KEY", "HELEXA_NEURON_WORKER_CMD", "CORTEX_CONFIG", "NEURON_CONFIG")
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.lower().endswith("_proxy")
        and k not in drop
        and not k.startswith(("NEURON_", "CORTEX_"))
    }
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        CUDA_VISIBLE_DEVICES="",
        TOKENIZERS_PARALLELISM="false",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def until(check: Callable[[], T | None], within: float, what: str, step: float = 0.05) -> T:
    """Poll `check` until it returns something truthy; fail with `what` after `within` s."""
    deadline = time.monotonic() + within
    while True:
        try:
            got = check()
        except httpx.TransportError:
            got = None
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        time.sleep(step)


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples called `name` whose labels include `labels` (0 when none)."""
    total = 0.0
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


class Service:
    """One daemon process started as `python -m <module> serve --config <cfg>`."""

    module = ""

    def __init__(self, name: str, root: Path, env: dict[str, str]) -> None:
        self.name = name
        self.dir = root / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.dir / "log.txt"
        self.starts = 0
        # children of a killed daemon, with their command lines (so a reused pid is left be)
        self.orphans: list[tuple[int, str]] = []

    @property
    def cfg_path(self) -> Path:
        raise NotImplementedError

    def start(self) -> None:
        assert not self.running, f"{self.name} is already running"
        self.starts += 1
        with self.log_path.open("ab") as log:
            log.write(f"---- start {self.starts} ----\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", self.module, "serve", "--config", str(self.cfg_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.dir,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n: int = 40) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return f"--- {self.name} log ---\n" + "\n".join(lines[-n:])

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill(self) -> list[int]:
        """SIGKILL the daemon alone (its children are left to notice); returns their pids."""
        kids = descendants(self.pid) if self.running else []
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.orphans.extend((k, cmdline(k)) for k in kids)
        return kids

    def stop(self) -> None:
        """Kill the daemon, its process group and everything below it; wait for them."""
        if self.proc is None:
            return
        running = self.proc.poll() is None
        kids = descendants(self.proc.pid) if running else []
        kids += [k for k, cmd in self.orphans if alive(k) and cmdline(k) == cmd]
        if running:  # a dead leader's group id may since belong to someone else
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        for k in kids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(k, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        until(lambda: not any(alive(k) for k in kids), 10, f"{self.name}'s children to exit")


class Neuron(Service):
    """A `neuron serve` process; `config` is the neuron.toml content (listen is filled in)."""

    module = "helexa.neuron.cli"

    def __init__(self, name: str, root: Path, config: dict[str, Any], port: int = 0) -> None:
        super().__init__(name, root, clean_env(HELEXA_TEST_FAULTS="1"))
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = {
            "listen": f"127.0.0.1:{self.port}",
            "bind_url": self.url,
            "shutdown_grace_secs": 5,
            "max_output_tokens": 256,
            "auth": {"token": TOKEN},
            "allowed_model_roots": ["/"],  # fixture models live in temp and cache dirs
            **config,
        }
        # One key drives every test client through cortex; the per-principal cap has its own
        # tests in tests/neuron/daemon.
        admission = {"max_per_principal": 0, **self.config.get("admission", {})}
        self.config["admission"] = admission
        self.client = httpx.Client(base_url=self.url, headers=AUTH, timeout=60, trust_env=False)

    @property
    def cfg_path(self) -> Path:
        return self.dir / "neuron.toml"

    def start(self) -> None:
        write_toml(self.cfg_path, self.config)
        super().start()

    def wait_ready(self, within: float = 60) -> dict[str, Any]:
        """Until the pre-warm is over; fails at once if the process dies."""

        def ready() -> dict[str, Any] | None:
            if not self.running:
                raise AssertionError(f"{self.name} exited\n{self.log_tail()}")
            act = self.client.get("/health").json()["activation"]
            return act if act["state"] == "ready" else None

        act = until(ready, within, f"{self.name} to be ready")
        assert not act["failed"], f"pre-warm failed: {act['failed']}\n{self.log_tail()}"
        return act

    def models(self) -> dict[str, dict[str, Any]]:
        return {m["id"]: m for m in self.client.get("/models").json()}

    def status(self, model: str) -> str | None:
        m = self.models().get(model)
        return None if m is None else str(m["status"])

    def load(self, body: dict[str, Any]) -> dict[str, Any]:
        r = self.client.post("/models/load", json=body, timeout=120)
        assert r.status_code == 200, f"{r.status_code} {r.text}\n{self.log_tail()}"
        return dict(r.json())

    def metric(self, name: str, **labels: str) -> float:
        return metric(self.client.get("/metrics").text, name, **labels)

    def workers(self) -> list[int]:
        """Pids of the engine workers this neuron runs."""
        return [p for p in descendants(self.pid) if WORKER_MODULE in cmdline(p)]


class Cortex(Service):
    """A `cortex serve` process in front of `neurons`, with `models` as its catalogue."""

    module = "helexa.cortex.cli"

    def __init__(
        self,
        name: str,
        root: Path,
        neurons: Iterable[Neuron],
        models: dict[str, Any] | None = None,
        gateway: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(name, root, clean_env())
        self.port, self.metrics_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.base = self.url + "/v1"
        self.metrics_url = f"http://127.0.0.1:{self.metrics_port}"
        self.neurons = list(neurons)
        self.config: dict[str, Any] = {
            "models_config": "models.toml",
            "gateway": {
                "listen": f"127.0.0.1:{self.port}",
                "metrics_listen": f"127.0.0.1:{self.metrics_port}",
                "poll_interval_secs": 1,
                "probe_timeout_secs": 2,
                "request_timeout_secs": 60,
                "cold_load_timeout_secs": 120,
                "shutdown_grace_secs": 15,
                # One key drives every test client (50 concurrent in the single-flight and
                # failover tests): the per-key cap has its own tests in tests/cortex.
                "max_in_flight_per_key": 256,
                **(gateway or {}),
            },
            "neurons": [{"name": n.name, "endpoint": n.url, "token": TOKEN} for n in self.neurons],
            "entitlements": {"keys": [{"key": API_KEY, "account_id": "e2e"}]},
        }
        self.catalogue = models or {}
        self.client = httpx.Client(
            base_url=self.url,
            headers={"authorization": f"Bearer {API_KEY}"},
            timeout=60,
            trust_env=False,
        )

    @property
    def cfg_path(self) -> Path:
        return self.dir / "cortex.toml"

    def start(self) -> None:
        write_toml(self.cfg_path, self.config)
        write_toml(self.dir / "models.toml", self.catalogue)
        super().start()

    def health(self) -> dict[str, Any]:
        return dict(self.client.get("/health").json())

    def wait_healthy(self, nodes: int, within: float = 30) -> None:
        def ok() -> bool:
            if not self.running:
                raise AssertionError(f"{self.name} exited\n{self.log_tail()}")
            return bool(self.health()["nodes"]["healthy"] == nodes)

        until(ok, within, f"{self.name} to see {nodes} healthy node(s)")

    def locations(self, model: str) -> dict[str, str]:
        """{node: status} for `model` in cortex's /v1/models."""
        for m in self.client.get("/v1/models").json()["data"]:
            if m["id"] == model:
                return {loc["node"]: loc["status"] for loc in m.get("locations", [])}
        return {}

    def metrics_text(self) -> str:
        return httpx.get(self.metrics_url + "/metrics", timeout=10, trust_env=False).text

    def metric(self, name: str, **labels: str) -> float:
        return metric(self.metrics_text(), name, **labels)


@dataclass
class Stack:
    neurons: list[Neuron]
    cortex: Cortex

    @property
    def neuron(self) -> Neuron:
        return self.neurons[0]

    def stop(self) -> None:
        for s in [self.cortex, *self.neurons]:
            s.stop()

    def failure_logs(self) -> str:
        return "\n".join(s.log_tail() for s in [self.cortex, *self.neurons])


def build_tiny(dst: Path) -> Path:
    """The seeded tiny Qwen3 (seed 0: its greedy reply to the SDK tests' prompt has no markers)."""
    from fixtures.tiny import build_model

    return build_model(dst, "qwen3", seed=0)


def copy_model(tiny_dir: Path, root: Path, name: str) -> Path:
    """The tiny model under another name (so served as `local/<name>`)."""
    dst = root / name
    if not dst.exists():
        shutil.copytree(tiny_dir, dst)
    return dst
