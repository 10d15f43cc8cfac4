"""Run the neuron and cortex of `helexa up` as child processes and keep them running.

Each child gets its own process group, so a terminal's Ctrl-C reaches only `helexa up`, which
then stops the children in order (SIGTERM, the grace period, then SIGKILL); the neuron stops its
own workers. On Linux the children also get SIGTERM if `helexa up` itself is killed, so nothing
is orphaned. A child that dies is reported and restarted with backoff, a bounded number of times.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import orjson

from helexa.exits import exit_text

MAX_RESTARTS = 5  # in a row; a child that ran STABLE_SECS resets the count
STABLE_SECS = 60.0
BACKOFF = (1.0, 2.0, 4.0, 8.0, 16.0)
TICK = 0.2
CONFIG_ERROR = 2  # the children's exit code for a config or usage error: restarting won't help

_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback, never proxied


def get_json(url: str, token: str | None = None, timeout: float = 2.0) -> Any:
    """GET a JSON body, or None when the server is not answering (yet)."""
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with _opener.open(req, timeout=timeout) as resp:
            return orjson.loads(resp.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: SIGTERM this child when `helexa up` dies, however it dies."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


@dataclass
class Child:
    """One supervised program: `argv`, its log file, and how long it may take to stop."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    grace: float
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    failures: int = 0  # consecutive deaths
    restart_at: float | None = None
    pids: list[int] = field(default_factory=list)  # every pid it has had (tests check them)
    log_start: int = 0  # where this run's lines begin: the log is appended across runs

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with self.log_path.open("ab") as log:
            self.log_start = log.seek(0, os.SEEK_END)
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                process_group=0,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        self.started_at = time.monotonic()
        self.restart_at = None
        self.pids.append(self.proc.pid)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def poll(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)

    def tail(self, lines: int = 15) -> str:
        """The last lines this run wrote (none from earlier runs)."""
        try:
            with self.log_path.open("rb") as f:
                end = f.seek(0, os.SEEK_END)
                f.seek(max(self.log_start, end - 8192))
                text = f.read().decode(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


class Stop(Exception):
    """A signal arrived while waiting."""


@dataclass
class Stack:
    """The neuron, then cortex; `on_ready` runs once both are healthy."""

    neuron: Child
    cortex: Child
    neuron_url: str
    cortex_url: str
    token: str | None
    say: Callable[[str], None]
    startup_timeout: float = 60.0
    on_ready: Callable[[], None] = lambda: None
    stopping: int = 0
    _activation_seen: bool = False

    # -- signals -------------------------------------------------------------------------------

    def _on_signal(self, signum: int, _: FrameType | None) -> None:
        self.stopping += 1
        if self.stopping > 1:  # a second Ctrl-C: no more waiting
            for c in (self.cortex, self.neuron):
                c.signal(signal.SIGKILL)

    def run(self) -> int:
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            try:
                rc = self._start()
                if rc == 0:
                    self.on_ready()
                    rc = self._supervise()
            except Stop:
                rc = 0
            return rc
        finally:
            self._stop()  # also on an exception: never leave the children behind
            for s, h in old.items():
                signal.signal(s, h)

    # -- start ---------------------------------------------------------------------------------

    def _neuron_up(self) -> bool:
        return get_json(f"{self.neuron_url}/health", self.token) is not None

    def _cortex_up(self) -> bool:
        h = get_json(f"{self.cortex_url}/health")
        return bool(h) and (h.get("nodes") or {}).get("healthy", 0) >= 1

    def _wait(self, child: Child, ready: Callable[[], bool], what: str) -> int:
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if self.stopping:
                raise Stop
            rc = child.poll()
            if rc is not None:
                self.say(f"helexa: {child.name} {exit_text(rc)} while starting")
                self._show_tail(child)
                return CONFIG_ERROR if rc == CONFIG_ERROR else 1
            if ready():
                return 0
            if time.monotonic() > deadline:
                self.say(f"helexa: {what} within {self.startup_timeout:.0f}s; see {child.log_path}")
                self._show_tail(child)
                return 1
            time.sleep(TICK)

    def _start(self) -> int:
        self.neuron.start()
        # The neuron listens before it pre-warms, so cortex's first poll round (run before its
        # own listener opens) already finds it.
        rc = self._wait(self.neuron, self._neuron_up, f"no answer from {self.neuron_url}")
        if rc:
            return rc
        self.cortex.start()
        return self._wait(
            self.cortex,
            self._cortex_up,
            f"{self.cortex_url}/health never showed the node healthy",
        )

    def _show_tail(self, child: Child) -> None:
        tail = child.tail()
        if tail:
            self.say(f"--- last lines of {child.log_path} ---\n{tail}\n---")

    # -- supervise -----------------------------------------------------------------------------

    def _supervise(self) -> int:
        next_activation = 0.0
        while not self.stopping:
            now = time.monotonic()
            for child in (self.neuron, self.cortex):
                rc = self._check(child, now)
                if rc is not None:
                    return rc
            if not self._activation_seen and now >= next_activation and self.neuron.running:
                self._report_activation()
                next_activation = now + 1.0
            time.sleep(TICK)
        return 0

    def _check(self, child: Child, now: float) -> int | None:
        """Restart a dead child when its backoff has passed; an exit code to stop with, if any."""
        if child.restart_at is not None:
            if now >= child.restart_at:
                self.say(f"helexa: restarting {child.name}")
                child.start()
                if child is self.neuron:
                    self._activation_seen = False
            return None
        rc = child.poll()
        if rc is None:
            if child.failures and now - child.started_at > STABLE_SECS:
                child.failures = 0
            return None
        self.say(f"helexa: {child.name} (pid {child.pid}) {exit_text(rc)}")
        self._show_tail(child)
        if rc == CONFIG_ERROR:
            self.say(f"helexa: {child.name} reports a config error; fix it and run again")
            return CONFIG_ERROR
        if child.failures >= MAX_RESTARTS:
            self.say(f"helexa: {child.name} died {child.failures + 1} times in a row; giving up")
            return 1
        delay = BACKOFF[min(child.failures, len(BACKOFF) - 1)]
        child.failures += 1
        child.restart_at = now + delay
        self.say(
            f"helexa: restarting {child.name} in {delay:.0f}s "
            f"(attempt {child.failures}/{MAX_RESTARTS})"
        )
        return None

    def _report_activation(self) -> None:
        """Once per neuron start: say which pre-warmed models are loaded and which failed."""
        h = get_json(f"{self.neuron_url}/health", self.token)
        if not h:
            return
        act = h.get("activation") or {}
        if act.get("state", "ready") != "ready":
            return
        self._activation_seen = True
        for mid in act.get("completed", []):
            self.say(f"helexa: {mid} is loaded")
        for f in act.get("failed", []):
            self.say(f"helexa: pre-warm of {f.get('model_id')} failed: {f.get('error')}")

    # -- stop ----------------------------------------------------------------------------------

    def _stop(self) -> None:
        """SIGTERM both (cortex drains its streams, the neuron its requests and workers), wait
        for the grace period, then SIGKILL what is left."""
        live = [c for c in (self.cortex, self.neuron) if c.running]
        if not live:
            return
        self.say("helexa: stopping " + " and ".join(c.name for c in live))
        for c in live:
            c.signal(signal.SIGTERM)
        deadline = time.monotonic() + max(c.grace for c in live) + 5
        while any(c.running for c in live) and time.monotonic() < deadline:
            time.sleep(0.05)
        for c in live:
            if c.running:
                self.say(f"helexa: {c.name} did not stop in time; killing it")
                c.signal(signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    assert c.proc is not None
                    c.proc.wait(5)
        self.say("helexa: stopped")
