"""Gateway overhead benchmark: direct to a mock upstream vs through cortex (and LiteLLM).

A fast mock neuron (``bench/mock_upstream.py``, its own process) answers a ~1 KB JSON chat
completion or a 50-chunk SSE stream. A closed-loop aiohttp load generator drives, at
concurrency 1, 16 and 64:

- **direct**: client → mock;
- **cortex**: client → ``cortex serve`` (auth, metrics and routing on) → mock;
- **litellm** (optional): client → LiteLLM proxy (in ``bench/.venv-litellm``) → mock.

It prints p50/p99 latency per path, the added latency (cortex percentile − direct percentile),
throughput and its ratios, SSE time-to-first-byte, and the resident memory of the gateways after
the run. Numbers are reported, never asserted; the script exits 0 unless it is misused.

Examples::

    .venv/bin/python bench/gateway_overhead.py                 # full matrix (~3 min on 2 cores)
    .venv/bin/python bench/gateway_overhead.py --quick --no-litellm
    .venv/bin/python bench/gateway_overhead.py --rss-requests 100000 --no-litellm

All traffic goes to 127.0.0.1, and every phase is bounded in request count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
MOCK_SCRIPT = BENCH_DIR / "mock_upstream.py"
LITELLM_VENV = BENCH_DIR / ".venv-litellm"
# Pinned: several LiteLLM releases on PyPI were compromised (supply-chain attacks); bump this
# only to a release you have checked.
LITELLM_SPEC = "litellm[proxy]==1.81.13"
MODEL = "bench-model"
CLIENT_KEY = "sk-bench"
NODE_TOKEN = "node-secret"
KINDS = ("json", "sse")
HOST = "127.0.0.1"
DONE_TAIL = b"data: [DONE]\n\n"


# --------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _proc_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (via /proc/<pid>/task/*/children)."""
    out: list[int] = []
    stack = [pid]
    while stack:
        p = stack.pop()
        out.append(p)
        task_dir = Path(f"/proc/{p}/task")
        try:
            for task in task_dir.iterdir():
                try:
                    stack.extend(int(c) for c in (task / "children").read_text().split())
                except OSError:
                    pass
        except OSError:
            pass
    return out


def _status_kb(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def rss_mb(pid: int) -> float:
    """Resident memory (VmRSS) of ``pid`` and its descendants, in MiB."""
    return sum(_status_kb(p, "VmRSS") for p in _proc_tree(pid)) / 1024.0


def hwm_mb(pid: int) -> float:
    """Peak resident memory (VmHWM) of ``pid`` itself, in MiB."""
    return _status_kb(pid, "VmHWM") / 1024.0


class Proc:
    """A child process in its own session, with its output in a log file."""

    def __init__(self, name: str, cmd: Sequence[str], log: Path, env: dict[str, str] | None = None):
        self.name = name
        self.log = log
        self._fh = log.open("wb")
        self.popen = subprocess.Popen(
            list(cmd),
            stdout=self._fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=str(REPO_ROOT),
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, n: int = 25) -> str:
        """The last ``n`` lines of the process log."""
        try:
            lines = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM the process group, then SIGKILL after ``grace`` seconds."""
        if self.alive():
            try:
                os.killpg(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.popen.wait(timeout=5)
        self._fh.close()


def start_mock(workdir: Path, sse_chunks: int, sse_gap_ms: float) -> tuple[Proc, int]:
    """Start the mock upstream with ``python bench/mock_upstream.py`` and return its port."""
    port = free_port()
    cmd = [
        sys.executable,
        str(MOCK_SCRIPT),
        "--port",
        str(port),
        "--sse-chunks",
        str(sse_chunks),
        "--sse-gap-ms",
        str(sse_gap_ms),
    ]
    proc = Proc("mock", cmd, workdir / "mock.log")
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if f"LISTENING {port}" in proc.tail():
            return proc, port
        if not proc.alive():
            break
        time.sleep(0.05)
    proc.stop()
    raise RuntimeError(f"mock upstream did not start:\n{proc.tail()}")


def cortex_command(explicit: str | None) -> tuple[list[str] | None, str]:
    """The argv prefix that runs the cortex CLI, or None and why it is unavailable."""
    if explicit:
        return shlex.split(explicit), ""
    venv_bin = REPO_ROOT / ".venv" / "bin"
    if (venv_bin / "cortex").exists():
        return [str(venv_bin / "cortex")], ""
    python = str(venv_bin / "python") if (venv_bin / "python").exists() else sys.executable
    probe = subprocess.run(
        [python, "-c", "import helexa.cortex.cli"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=str(REPO_ROOT),
    )
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["import failed"])[-1]
        return None, f"helexa.cortex.cli is not importable ({last})"
    code = "import sys; from helexa.cortex.cli import main; sys.exit(main())"
    return [python, "-c", code], ""


def write_cortex_config(workdir: Path, mock_port: int) -> tuple[Path, int, int]:
    """Write cortex.toml and an empty models.toml; return (config path, api port, metrics port)."""
    port, metrics_port = free_port(), free_port()
    (workdir / "models.toml").write_text("")
    cfg = workdir / "cortex.toml"
    cfg.write_text(
        f"""models_config = "models.toml"

[gateway]
listen = "{HOST}:{port}"
metrics_listen = "{HOST}:{metrics_port}"
poll_interval_secs = 5
shutdown_grace_secs = 2
max_in_flight_per_key = 1024  # one key drives every client: overhead, not the per-key cap

[[neurons]]
name = "mock"
endpoint = "http://{HOST}:{mock_port}"
token = "{NODE_TOKEN}"

[entitlements]
require_auth = true

[[entitlements.keys]]
key = "{CLIENT_KEY}"
account_id = "bench"
"""
    )
    return cfg, port, metrics_port


def ensure_litellm(venv: Path, spec: str, timeout: float) -> tuple[Path | None, str]:
    """Return the ``litellm`` CLI of ``venv``, creating the venv and installing ``spec`` if
    missing; on failure return None and the reason."""
    exe = venv / "bin" / "litellm"
    if exe.exists():
        return exe, "already installed"
    t0 = time.monotonic()
    print(f"[litellm] installing {spec!r} into {venv} (one-off) ...", flush=True)
    try:
        if not (venv / "bin" / "python").exists():
            subprocess.run(
                [sys.executable, "-m", "venv", str(venv)],
                check=True,
                capture_output=True,
                timeout=120,
            )
        pip = subprocess.run(
            [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", spec],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except (subprocess.SubprocessError, OSError) as exc:
        return None, f"venv/pip failed: {exc}"
    if pip.returncode != 0 or not exe.exists():
        errs = [ln for ln in pip.stderr.splitlines() if "is ignored: it is neither" not in ln]
        return None, "pip install failed:\n  " + "\n  ".join(e[:300] for e in errs[-8:])
    return exe, f"installed in {time.monotonic() - t0:.0f}s"


def write_litellm_config(workdir: Path, mock_port: int) -> tuple[Path, Path]:
    """Write LiteLLM's config.yaml (mock as an OpenAI upstream, master key = client key) and a
    logging config that silences per-request access logs; return both paths."""
    cfg = workdir / "litellm.yaml"
    cfg.write_text(
        f"""model_list:
  - model_name: {MODEL}
    litellm_params:
      model: openai/{MODEL}
      api_base: http://{HOST}:{mock_port}/v1
      api_key: sk-mock
litellm_settings:
  telemetry: false
  drop_params: true
  request_timeout: 60
general_settings:
  master_key: {CLIENT_KEY}
  disable_spend_logs: true
"""
    )
    log_cfg = workdir / "litellm-logging.json"
    log_cfg.write_text(
        json.dumps(
            {
                "version": 1,
                "disable_existing_loggers": False,
                "handlers": {"err": {"class": "logging.StreamHandler", "level": "WARNING"}},
                "root": {"handlers": ["err"], "level": "WARNING"},
                "loggers": {
                    "uvicorn.access": {"level": "WARNING", "handlers": [], "propagate": False}
                },
            }
        )
    )
    return cfg, log_cfg


def litellm_env() -> dict[str, str]:
    """Environment for LiteLLM: no telemetry, local cost map, no DB, loopback without proxies."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k.upper() not in {"DATABASE_URL", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"}
    }
    env.update(
        LITELLM_LOCAL_MODEL_COST_MAP="True",
        LITELLM_TELEMETRY="False",
        LITELLM_LOG="ERROR",
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
        DISABLE_ADMIN_UI="True",
        PYTHONUNBUFFERED="1",
    )
    return env


# --------------------------------------------------------------------------------------------
# Load generation
# --------------------------------------------------------------------------------------------


def request_body(kind: str) -> bytes:
    """The chat request for a payload kind (``json`` or ``sse``)."""
    body: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Say hello in a few words."}],
        "max_tokens": 16,
    }
    if kind == "sse":
        body["stream"] = True
    return json.dumps(body, separators=(",", ":")).encode()


HEADERS = {"authorization": f"Bearer {CLIENT_KEY}", "content-type": "application/json"}


def pct(sorted_vals: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an ascending sequence (NaN when empty)."""
    if not sorted_vals:
        return math.nan
    idx = min(len(sorted_vals) - 1, max(0, math.ceil(q * len(sorted_vals)) - 1))
    return sorted_vals[idx]


@dataclass
class Cell:
    """Result of one (target, payload kind, concurrency) run."""

    target: str
    kind: str
    concurrency: int
    ok: int = 0
    errors: int = 0
    elapsed_s: float = 0.0
    rps: float = 0.0
    p50_ms: float = math.nan
    p99_ms: float = math.nan
    ttfb_p50_ms: float = math.nan
    ttfb_p99_ms: float = math.nan
    overhead_hdr_p50_ms: float = math.nan
    first_error: str = ""


@dataclass
class _Acc:
    lat: list[float] = field(default_factory=list)
    ttfb: list[float] = field(default_factory=list)
    hdr: list[float] = field(default_factory=list)
    errors: int = 0
    first_error: str = ""


async def _one(session: aiohttp.ClientSession, url: str, body: bytes, stream: bool, acc: _Acc):
    """Send one request and record its latency (to last byte) and TTFB, or an error."""
    t0 = time.perf_counter()
    try:
        async with session.post(url, data=body, headers=HEADERS) as resp:
            status = resp.status
            first = math.nan
            if stream:
                tail = b""
                async for chunk in resp.content.iter_any():
                    if first != first:  # NaN: first body bytes
                        first = time.perf_counter()
                    tail = (tail + chunk)[-32:]
                good = status == 200 and tail.endswith(DONE_TAIL)
            else:
                data = await resp.read()
                good = status == 200 and len(data) > 0
            hdr = resp.headers.get("x-helexa-overhead-ms")
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        acc.errors += 1
        acc.first_error = acc.first_error or f"{type(exc).__name__}: {exc}"
        return
    t1 = time.perf_counter()
    if not good:
        acc.errors += 1
        acc.first_error = acc.first_error or f"HTTP {status} (or truncated stream)"
        return
    acc.lat.append(t1 - t0)
    if stream:
        acc.ttfb.append(first - t0)
    if hdr is not None:
        try:
            acc.hdr.append(float(hdr))
        except ValueError:
            pass


async def _closed_loop(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    stream: bool,
    concurrency: int,
    max_requests: int,
    max_seconds: float,
) -> tuple[_Acc, float]:
    """``concurrency`` workers, each sending back-to-back until the count or time bound."""
    acc = _Acc()
    issued = 0
    deadline = time.perf_counter() + max_seconds

    async def worker() -> None:
        nonlocal issued
        while issued < max_requests and time.perf_counter() < deadline:
            issued += 1
            await _one(session, url, body, stream, acc)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return acc, time.perf_counter() - t0


def _session(concurrency: int) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=concurrency)
    timeout = aiohttp.ClientTimeout(total=60, sock_connect=5)
    return aiohttp.ClientSession(connector=connector, timeout=timeout)


async def run_cell(
    target: str,
    base_url: str,
    kind: str,
    concurrency: int,
    max_requests: int,
    max_seconds: float,
    warmup: int,
) -> Cell:
    """Warm up, then measure one cell with a fresh session (connection pool = concurrency)."""
    url = base_url + "/v1/chat/completions"
    body = request_body(kind)
    stream = kind == "sse"
    async with _session(concurrency) as session:
        if warmup:
            n = max(warmup, concurrency)
            await _closed_loop(session, url, body, stream, concurrency, n, min(5.0, max_seconds))
        acc, elapsed = await _closed_loop(
            session, url, body, stream, concurrency, max_requests, max_seconds
        )
    lat = sorted(acc.lat)
    ttfb = sorted(acc.ttfb)
    hdr = sorted(acc.hdr)
    return Cell(
        target=target,
        kind=kind,
        concurrency=concurrency,
        ok=len(lat),
        errors=acc.errors,
        elapsed_s=elapsed,
        rps=len(lat) / elapsed if elapsed > 0 else math.nan,
        p50_ms=pct(lat, 0.50) * 1e3,
        p99_ms=pct(lat, 0.99) * 1e3,
        ttfb_p50_ms=pct(ttfb, 0.50) * 1e3,
        ttfb_p99_ms=pct(ttfb, 0.99) * 1e3,
        overhead_hdr_p50_ms=pct(hdr, 0.50),
        first_error=acc.first_error,
    )


async def wait_ready(
    proc: Proc, base_url: str, limit_s: float, health_path: str | None
) -> tuple[bool, str]:
    """Wait until ``health_path`` looks healthy (if given) and a chat request returns 200."""
    deadline = time.monotonic() + limit_s
    last = "no answer yet"
    async with _session(2) as session:
        while time.monotonic() < deadline:
            if not proc.alive():
                return False, f"{proc.name} exited with {proc.popen.returncode}:\n{proc.tail()}"
            try:
                if health_path is not None:
                    async with session.get(base_url + health_path) as resp:
                        data = await resp.json(content_type=None)
                    nodes = (data or {}).get("nodes") or {}
                    if data.get("status") != "ok" or int(nodes.get("healthy", 0)) < 1:
                        last = f"{health_path} -> {data}"
                        await asyncio.sleep(0.2)
                        continue
                async with session.post(
                    base_url + "/v1/chat/completions", data=request_body("json"), headers=HEADERS
                ) as resp:
                    text = await resp.text()
                    if resp.status == 200:
                        return True, ""
                    last = f"chat -> HTTP {resp.status}: {text[:300]}"
            except (aiohttp.ClientError, TimeoutError, OSError, ValueError, AttributeError) as e:
                last = f"{type(e).__name__}: {e}"
            await asyncio.sleep(0.2)
    return False, f"not ready after {limit_s:.0f}s: {last}\n{proc.tail()}"


async def metrics_requests_total(metrics_url: str) -> float | None:
    """Sum of ``cortex_requests_total`` samples on the metrics listener (None if unreadable)."""
    try:
        async with _session(1) as s, s.get(metrics_url + "/metrics") as resp:
            text = await resp.text()
    except (aiohttp.ClientError, TimeoutError, OSError):
        return None
    total = 0.0
    for line in text.splitlines():
        if line.startswith("cortex_requests_total"):
            try:
                total += float(line.rsplit(" ", 1)[1])
            except (IndexError, ValueError):
                pass
    return total


# --------------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------------


def _f(v: float, width: int = 8, prec: int = 3) -> str:
    return f"{'-':>{width}}" if v != v else f"{v:>{width}.{prec}f}"


def _ratio(a: float, b: float) -> float:
    return a / b if b and b == b and a == a else math.nan


def print_report(
    cells: dict[tuple[str, str, int], Cell], concs: Sequence[int], targets: Sequence[str]
) -> None:
    """Latency, added latency, throughput and ratio tables."""
    has_c = "cortex" in targets
    has_l = "litellm" in targets
    print("\n== Latency, ms (SSE: time to last byte). added = gateway pct − direct pct ==")
    head = f"{'payload':<7} {'c':>3} | {'direct p50':>10} {'p99':>8}"
    if has_c:
        head += f" | {'cortex p50':>10} {'p99':>8} | {'added p50':>9} {'p99':>8} {'hdr p50':>8}"
    if has_l:
        head += f" | {'litellm p50':>11} {'p99':>8} | {'added p50':>9}"
    print(head)
    for kind in KINDS:
        for c in concs:
            d = cells.get(("direct", kind, c))
            if d is None:
                continue
            row = f"{kind:<7} {c:>3} | {_f(d.p50_ms, 10)} {_f(d.p99_ms)}"
            if has_c:
                x = cells.get(("cortex", kind, c)) or Cell("cortex", kind, c)
                row += (
                    f" | {_f(x.p50_ms, 10)} {_f(x.p99_ms)} | {_f(x.p50_ms - d.p50_ms, 9)}"
                    f" {_f(x.p99_ms - d.p99_ms)} {_f(x.overhead_hdr_p50_ms)}"
                )
            if has_l:
                y = cells.get(("litellm", kind, c)) or Cell("litellm", kind, c)
                row += f" | {_f(y.p50_ms, 11)} {_f(y.p99_ms)} | {_f(y.p50_ms - d.p50_ms, 9)}"
            print(row)
    if has_c:
        print("(hdr p50 = median of cortex's own x-helexa-overhead-ms header)")

    print("\n== Throughput, req/s ==")
    head = f"{'payload':<7} {'c':>3} | {'direct':>9}"
    if has_c:
        head += f" | {'cortex':>9} {'cx/direct':>9}"
    if has_l:
        head += f" | {'litellm':>9} {'ll/direct':>9}"
    if has_c and has_l:
        head += f" | {'cortex/litellm':>14}"
    print(head)
    for kind in KINDS:
        for c in concs:
            d = cells.get(("direct", kind, c))
            if d is None:
                continue
            row = f"{kind:<7} {c:>3} | {_f(d.rps, 9, 0)}"
            x = cells.get(("cortex", kind, c)) or Cell("cortex", kind, c)
            y = cells.get(("litellm", kind, c)) or Cell("litellm", kind, c)
            if has_c:
                row += f" | {_f(x.rps, 9, 0)} {_f(_ratio(x.rps, d.rps), 9, 2)}"
            if has_l:
                row += f" | {_f(y.rps, 9, 0)} {_f(_ratio(y.rps, d.rps), 9, 2)}"
            if has_c and has_l:
                row += f" | {_f(_ratio(x.rps, y.rps), 14, 1)}"
            print(row)

    if any(k == "sse" for (_, k, _) in cells):
        print("\n== SSE time to first body byte, ms (p50 / p99) ==")
        print(f"{'c':>3} | " + " | ".join(f"{t:>17}" for t in targets))
        for c in concs:
            parts = []
            for t in targets:
                cell = cells.get((t, "sse", c)) or Cell(t, "sse", c)
                parts.append(f"{_f(cell.ttfb_p50_ms, 8)} /{_f(cell.ttfb_p99_ms, 7)}")
            print(f"{c:>3} | " + " | ".join(parts))

    bad = [cell for cell in cells.values() if cell.errors]
    if bad:
        print("\n== Errors ==")
        for cell in bad:
            print(
                f"{cell.target} {cell.kind} c={cell.concurrency}: {cell.errors} errors, "
                f"{cell.ok} ok; first: {cell.first_error}"
            )


def print_targets(cells: dict[tuple[str, str, int], Cell], cortex_rss: float | None) -> None:
    """The issue's targets, as information (never asserted)."""
    print("\n== Targets (informational) ==")
    d = cells.get(("direct", "json", 1))
    x = cells.get(("cortex", "json", 1))
    if d and x:
        added = x.p50_ms - d.p50_ms
        print(f"added p50, json c=1: {added:.3f} ms (target <= 0.35): {_verdict(added <= 0.35)}")
    for kind in KINDS:
        x16 = cells.get(("cortex", kind, 16))
        l16 = cells.get(("litellm", kind, 16))
        if x16 and l16:
            r = _ratio(x16.rps, l16.rps)
            print(
                f"cortex/litellm throughput, {kind} c=16: {r:.1f}x (target >= 10x): "
                f"{_verdict(r >= 10)}"
            )
    if cortex_rss is not None:
        print(f"cortex RSS: {cortex_rss:.1f} MiB (target <= 100 MB after 100k requests)")


def _verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


async def measure(
    target: str,
    base_url: str,
    kinds: Sequence[str],
    concs: Sequence[int],
    args: argparse.Namespace,
    cells: dict[tuple[str, str, int], Cell],
) -> None:
    """Run every (kind, concurrency) cell for one target."""
    for kind in kinds:
        for c in concs:
            cell = await run_cell(
                target, base_url, kind, c, args.requests, args.duration, args.warmup
            )
            cells[(target, kind, c)] = cell
            print(
                f"  {target:<8} {kind:<4} c={c:<3} n={cell.ok:<6} err={cell.errors:<3} "
                f"p50={cell.p50_ms:8.3f} ms  p99={cell.p99_ms:8.3f} ms  {cell.rps:9.0f} req/s",
                flush=True,
            )


async def rss_phase(proc: Proc, base_url: str, n: int, max_seconds: float) -> tuple[int, float]:
    """Send ``n`` small JSON requests through cortex at c=16 (bounded by ``max_seconds``),
    printing RSS as it goes; return (requests completed, seconds)."""
    concurrency = 16
    body = request_body("json")
    url = base_url + "/v1/chat/completions"
    done = 0
    t0 = time.perf_counter()
    step = max(1, n // 5)
    async with _session(concurrency) as session:
        while done < n and time.perf_counter() - t0 < max_seconds:
            batch = min(step, n - done)
            left = max_seconds - (time.perf_counter() - t0)
            acc, _ = await _closed_loop(session, url, body, False, concurrency, batch, left)
            done += len(acc.lat) + acc.errors
            print(
                f"  rss phase: {done:>7}/{n} requests ({acc.errors} errors in batch), "
                f"cortex RSS {rss_mb(proc.pid):6.1f} MiB",
                flush=True,
            )
    return done, time.perf_counter() - t0


async def amain(args: argparse.Namespace) -> dict[str, Any]:
    """Orchestrate mock, direct, cortex and LiteLLM phases and print the report."""
    concs: list[int] = args.concurrency
    kinds: list[str] = args.kinds
    workdir = Path(tempfile.mkdtemp(prefix="helexa-bench-"))
    cells: dict[tuple[str, str, int], Cell] = {}
    procs: list[Proc] = []
    summary: dict[str, Any] = {"args": vars(args).copy(), "workdir": str(workdir)}
    targets = ["direct"]
    cortex_rss: float | None = None
    t_start = time.monotonic()
    print(
        f"gateway overhead bench: kinds={kinds} concurrency={concs} "
        f"per cell <= {args.requests} requests / {args.duration}s (+{args.warmup} warmup); "
        f"logs in {workdir}",
        flush=True,
    )
    try:
        mock, mock_port = start_mock(workdir, args.sse_chunks, args.sse_gap_ms)
        procs.append(mock)
        direct_url = f"http://{HOST}:{mock_port}"
        print(f"mock upstream pid {mock.pid} on {direct_url}", flush=True)

        # --- cortex -------------------------------------------------------------------------
        cortex: Proc | None = None
        cortex_url = ""
        metrics_url = ""
        if args.cortex:
            cmd, why = cortex_command(args.cortex_cmd)
            if cmd is None:
                print(f"[cortex] skipped: {why}", flush=True)
                summary["cortex_skipped"] = why
            else:
                cfg, port, mport = write_cortex_config(workdir, mock_port)
                full = [*cmd, "serve", "--config", str(cfg)]
                if args.cortex_log_level:
                    full += ["--log-level", args.cortex_log_level]
                cortex = Proc("cortex", full, workdir / "cortex.log")
                procs.append(cortex)
                cortex_url = f"http://{HOST}:{port}"
                metrics_url = f"http://{HOST}:{mport}"
                ok, why = await wait_ready(cortex, cortex_url, 60, "/health")
                if ok:
                    print(
                        f"cortex pid {cortex.pid} on {cortex_url}, "
                        f"RSS at start {rss_mb(cortex.pid):.1f} MiB",
                        flush=True,
                    )
                    summary["cortex_rss_start_mb"] = rss_mb(cortex.pid)
                    targets.append("cortex")
                else:
                    print(f"[cortex] skipped: {why}", flush=True)
                    summary["cortex_skipped"] = why
                    cortex.stop()
                    cortex = None

        # --- direct and cortex, interleaved per cell ----------------------------------------
        print("\nphase 1: direct" + (" vs cortex" if cortex else ""), flush=True)
        for kind in kinds:
            for c in concs:
                await measure("direct", direct_url, [kind], [c], args, cells)
                if cortex is not None:
                    await measure("cortex", cortex_url, [kind], [c], args, cells)

        if cortex is not None:
            if args.rss_requests > 0:
                print(f"\nphase 2: {args.rss_requests} requests through cortex for RSS", flush=True)
                before = rss_mb(cortex.pid)
                done, secs = await rss_phase(
                    cortex, cortex_url, args.rss_requests, args.rss_max_seconds
                )
                after = rss_mb(cortex.pid)
                print(
                    f"  RSS before {before:.1f} MiB, after {after:.1f} MiB "
                    f"({done} requests in {secs:.0f}s)",
                    flush=True,
                )
                summary["rss_phase"] = {
                    "requests": done,
                    "seconds": secs,
                    "before_mb": before,
                    "after_mb": after,
                }
            cortex_rss = rss_mb(cortex.pid)
            total = await metrics_requests_total(metrics_url)
            sent = sum(cell.ok + cell.errors for (t, _, _), cell in cells.items() if t == "cortex")
            summary.update(
                cortex_rss_mb=cortex_rss,
                cortex_hwm_mb=hwm_mb(cortex.pid),
                cortex_requests_total_metric=total,
            )
            print(
                f"\ncortex RSS after the run: {cortex_rss:.1f} MiB (peak {hwm_mb(cortex.pid):.1f}"
                f" MiB); cortex_requests_total on /metrics: "
                f"{'unreadable' if total is None else f'{total:.0f}'} "
                f"(matrix sent {sent} measured requests + warmups + rss phase)",
                flush=True,
            )
            cortex.stop()

        # --- LiteLLM -----------------------------------------------------------------------
        if args.litellm:
            t_ll = time.monotonic()
            exe, why = ensure_litellm(
                Path(args.litellm_venv), args.litellm_spec, args.litellm_install_timeout
            )
            print(f"[litellm] {why}", flush=True)
            if exe is None:
                summary["litellm_skipped"] = why
            else:
                port = free_port()
                cfg, log_cfg = write_litellm_config(workdir, mock_port)
                ll = Proc(
                    "litellm",
                    [
                        str(exe),
                        "--config",
                        str(cfg),
                        "--host",
                        HOST,
                        "--port",
                        str(port),
                        "--telemetry",
                        "False",
                        "--num_workers",
                        "1",
                        "--log_config",
                        str(log_cfg),
                    ],
                    workdir / "litellm.log",
                    env=litellm_env(),
                )
                procs.append(ll)
                ll_url = f"http://{HOST}:{port}"
                t0 = time.monotonic()
                ok, why = await wait_ready(ll, ll_url, args.litellm_start_timeout, None)
                if not ok:
                    print(f"[litellm] skipped: {why}", flush=True)
                    summary["litellm_skipped"] = why
                else:
                    print(
                        f"\nphase 3: litellm pid {ll.pid} on {ll_url} "
                        f"(ready in {time.monotonic() - t0:.1f}s, "
                        f"RSS {rss_mb(ll.pid):.1f} MiB)",
                        flush=True,
                    )
                    targets.append("litellm")
                    await measure("litellm", ll_url, kinds, concs, args, cells)
                    summary["litellm_rss_mb"] = rss_mb(ll.pid)
                    print(
                        f"litellm RSS after its run: {summary['litellm_rss_mb']:.1f} MiB",
                        flush=True,
                    )
                ll.stop()
            summary["litellm_seconds"] = time.monotonic() - t_ll
            print(f"[litellm] phase took {summary['litellm_seconds']:.0f}s", flush=True)
    finally:
        for p in reversed(procs):
            p.stop()

    print_report(cells, concs, targets)
    print_targets(cells, cortex_rss)
    total_s = time.monotonic() - t_start
    kept = f"logs kept in {workdir}" if args.keep_logs else "--keep-logs keeps the logs"
    print(f"\ntotal wall time {total_s:.0f}s; {kept}")
    summary["cells"] = [asdict(c) for c in cells.values()]
    summary["total_seconds"] = total_s
    return summary


def finish(summary: dict[str, Any], args: argparse.Namespace) -> None:
    """Write the JSON results (if asked) and remove the temp dir (unless --keep-logs)."""
    if args.json_out:
        out = Path(args.json_out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(summary, indent=2, default=str))
        print(f"results written to {out}")
    if not args.keep_logs:
        shutil.rmtree(summary["workdir"], ignore_errors=True)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(__doc__ or "").split("Examples::")[-1],
    )
    p.add_argument(
        "--requests",
        type=int,
        default=None,
        help="max measured requests per cell (default 20000, quick 2000)",
    )
    p.add_argument(
        "--duration",
        type=float,
        default=None,
        help="max measured seconds per cell (default 4, quick 1)",
    )
    p.add_argument(
        "--warmup", type=int, default=None, help="warm-up requests per cell (default 200, quick 50)"
    )
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    p.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    p.add_argument("--quick", action="store_true", help="short cells for a smoke run")
    p.add_argument("--sse-chunks", type=int, default=50, help="SSE chunk frames per stream")
    p.add_argument(
        "--sse-gap-ms",
        type=float,
        default=0.0,
        help="mock pause between SSE frames (0 = write them back to back)",
    )
    p.add_argument("--cortex", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument(
        "--cortex-cmd",
        default=None,
        help="argv prefix that runs the cortex CLI (default: .venv/bin/cortex, "
        "else python -c 'helexa.cortex.cli.main()')",
    )
    p.add_argument("--cortex-log-level", default=None, help="passed as serve --log-level")
    p.add_argument(
        "--rss-requests",
        type=int,
        default=0,
        help="extra JSON requests through cortex to watch RSS (e.g. 100000; 0 = off)",
    )
    p.add_argument(
        "--rss-max-seconds", type=float, default=300.0, help="time bound of the RSS phase"
    )
    p.add_argument(
        "--litellm",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also measure LiteLLM's proxy (installed on demand into --litellm-venv)",
    )
    p.add_argument("--litellm-venv", default=str(LITELLM_VENV))
    p.add_argument("--litellm-spec", default=LITELLM_SPEC)
    p.add_argument("--litellm-install-timeout", type=float, default=900.0)
    p.add_argument("--litellm-start-timeout", type=float, default=120.0)
    p.add_argument("--json-out", default=None, help="write results as JSON here")
    p.add_argument("--keep-logs", action="store_true", help="keep the temp dir with logs")
    args = p.parse_args(argv)
    if args.requests is None:
        args.requests = 2000 if args.quick else 20000
    if args.duration is None:
        args.duration = 1.0 if args.quick else 4.0
    if args.warmup is None:
        args.warmup = 50 if args.quick else 200
    if min(args.concurrency) < 1 or args.requests < 1 or args.duration <= 0:
        p.error("concurrency, --requests and --duration must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: run on uvloop when available."""
    args = parse_args(argv)
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    with runner:
        summary = runner.run(amain(args))
    finish(summary, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
