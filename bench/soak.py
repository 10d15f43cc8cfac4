"""Soak: many clients for minutes through a real cortex to two real neurons, one killed twice.

Starts two ``neuron serve`` processes (each pre-warms ``soak-model`` on a fake worker from
``tests/neuron/daemon/fake_worker.py``, no torch: a stream of short pieces with a small delay)
and ``cortex serve`` in front of both (auth required, one key per five clients), all on
ephemeral 127.0.0.1 ports. Then ``--clients`` clients loop for ``--minutes``: chat completions
and Anthropic messages, streaming and not; one client in ten hangs up mid-stream on every
request. Neuron ``b`` is SIGKILLed at 30 % and 65 % of the run and restarted after
``--down-secs``.

The report: outcomes (completed / failed visibly / cut on purpose / lost, which must be 0),
5xx and 4xx by cause, ERROR lines in each process's log, RSS of each process (with its
workers) at start and end, and per key whether cortex's ledger equals the usage of completed
requests plus what was charged for cut and failed ones (that part must lie between what the
client saw them use and prompt + output cap). Nothing is asserted; the exit status is 1 when
a request was lost or the ledger is off.

    python bench/soak.py                      # 50 clients, 10 minutes
    python bench/soak.py --minutes 2
    python bench/soak.py --quick              # 20 clients, 1 minute, a smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import aiohttp

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(REPO / "tests" / "neuron" / "daemon"))

from daemon_rig import WORKER_CMD, model_dir, write_tokenizer  # noqa: E402

from gateway_overhead import Proc, free_port, rss_mb  # noqa: E402
from soak_clients import MODEL, Client, Tally  # noqa: E402

HOST = "127.0.0.1"
NODE_TOKEN = "soak-node-token"
REPLY = {"pieces": ["word "] * 48, "delay": 0.01, "tokens": 1}


def toml_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


class Neuron:
    """One neuron process that can be killed and started again on the same port."""

    def __init__(self, name: str, tmp: Path, model: Path) -> None:
        self.name, self.tmp = name, tmp
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.config = tmp / f"neuron-{name}.toml"
        self.config.write_text(
            f'listen = "{HOST}:{self.port}"\nbind_url = "{self.url}"\n'
            "shutdown_grace_secs = 5\ncpu_memory_mb = 8000\n"
            f'[auth]\ntoken = "{NODE_TOKEN}"\n'
            "[admission]\nmax_in_flight = 32\nmax_queue_depth = 64\nmax_wait_secs = 30\n"
            f"[[default_models]]\nmodel_id = {toml_str(str(model))}\n"
            f'served_model_id = "{MODEL}"\n'
        )
        self.lives = 0
        self.proc: Proc | None = None
        self.rss: list[tuple[str, float]] = []

    def start(self) -> None:
        self.lives += 1
        env = {
            **os.environ,
            "HELEXA_NEURON_WORKER_CMD": " ".join(WORKER_CMD),
            "CUDA_VISIBLE_DEVICES": "",
        }
        cmd = [sys.executable, "-c", "from helexa.neuron.cli import main; main()"]
        log = self.tmp / f"neuron-{self.name}-{self.lives}.log"
        self.proc = Proc(
            f"neuron-{self.name}", [*cmd, "serve", "--config", str(self.config)], log, env
        )

    def note_rss(self, when: str) -> None:
        if self.proc is not None and self.proc.alive():
            self.rss.append((f"life {self.lives} {when}", rss_mb(self.proc.pid)))

    def kill(self) -> None:
        """SIGKILL the daemon alone, as a crash would; its workers see EOF and exit."""
        assert self.proc is not None
        self.note_rss("end (before SIGKILL)")
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.popen.wait()
        self.proc.stop()

    async def ready(self, session: aiohttp.ClientSession, limit: float = 60) -> None:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            try:
                async with session.get(self.url + "/health") as r:
                    act = (await r.json())["activation"] if r.status == 200 else {}
                    if act.get("state") == "ready":
                        if act["failed"] or not act["completed"]:
                            raise RuntimeError(f"neuron {self.name}: pre-warm failed: {act}")
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
        raise RuntimeError(
            f"neuron {self.name} never became ready:\n{self.proc and self.proc.tail()}"
        )


def write_cortex(tmp: Path, neurons: list[Neuron], keys: list[str]) -> tuple[Path, str, str]:
    port, mport = free_port(), free_port()
    (tmp / "models.toml").write_text("")
    lines = [
        'models_config = "models.toml"',
        "[gateway]",
        f'listen = "{HOST}:{port}"',
        f'metrics_listen = "{HOST}:{mport}"',
        "poll_interval_secs = 1",
        "probe_timeout_secs = 2",
        "request_timeout_secs = 60",
        "shutdown_grace_secs = 5",
    ]
    for n in neurons:
        lines += ["[[neurons]]", f'name = "{n.name}"', f'endpoint = "{n.url}"']
        lines += [f'token = "{NODE_TOKEN}"']
    lines += ["[entitlements]", "require_auth = true"]
    for i, key in enumerate(keys):
        lines += ["[[entitlements.keys]]", f'key = "{key}"', f'account_id = "acct-{i}"']
        lines += [f'key_id = "key-{i}"']
    cfg = tmp / "cortex.toml"
    cfg.write_text("\n".join(lines) + "\n")
    return cfg, f"http://{HOST}:{port}", f"http://{HOST}:{mport}"


async def cortex_ready(session: aiohttp.ClientSession, url: str, proc: Proc) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            async with session.get(url + "/health") as r:
                if r.status == 200 and (await r.json())["nodes"]["healthy"] == 2:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    raise RuntimeError(f"cortex never saw both neurons healthy:\n{proc.tail()}")


async def spend_metrics(session: aiohttp.ClientSession, metrics_url: str) -> dict[str, int]:
    """cortex_spend_tokens_total per key label, from the metrics listener."""
    async with session.get(metrics_url + "/metrics") as r:
        text = await r.text()
    out: dict[str, int] = {}
    for line in text.splitlines():
        if line.startswith("cortex_spend_tokens_total{"):
            labels, value = line.rsplit(" ", 1)
            key = labels.split('key="', 1)[1].split('"', 1)[0]
            out[key] = out.get(key, 0) + int(float(value))
    return out


def logged_errors(tmp: Path) -> Counter[str]:
    """ERROR lines per process log, by logger and message start: server-side failures a client
    may never see (it had already gone)."""
    out: Counter[str] = Counter()
    for log in sorted(tmp.glob("*.log")):
        for line in log.read_text(errors="replace").splitlines():
            if " ERROR " in line:
                what = line.split(" ERROR ", 1)[1].strip()
                out[f"{log.stem}: {what.split('(')[0][:90]}"] += 1
    return out


def spend_sqlite(path: Path) -> dict[str, int] | None:
    """The persisted ledger (read after cortex stopped), when cortex keeps one."""
    if not path.exists():
        return None
    with sqlite3.connect(path) as db:
        return {k: int(v) for k, v in db.execute("SELECT key_id, spent FROM ledger")}


async def chaos(
    b: Neuron, session: aiohttp.ClientSession, secs: float, down: float, log: list[str]
) -> None:
    """Kill neuron b at 30 % and 65 % of the run; start it again `down` seconds later."""
    t0 = time.monotonic()
    for at in (0.30, 0.65):
        await asyncio.sleep(max(0.0, t0 + secs * at - time.monotonic()))
        b.kill()
        log.append(f"{time.monotonic() - t0:7.1f}s  SIGKILL neuron b (life {b.lives})")
        await asyncio.sleep(down)
        b.start()
        await b.ready(session)
        b.note_rss("start")
        log.append(f"{time.monotonic() - t0:7.1f}s  neuron b ready again (life {b.lives})")


async def run(args: argparse.Namespace) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="helexa-soak-"))
    model = model_dir(tmp, "soak", {"reply": REPLY})
    write_tokenizer(model)
    a, b = Neuron("a", tmp, model), Neuron("b", tmp, model)
    nkeys = max(1, args.clients // 5)
    keys = [f"sk-soak-{i}" for i in range(nkeys)]
    cfg, url, metrics_url = write_cortex(tmp, [a, b], keys)
    code = "import sys; from helexa.cortex.cli import main; sys.exit(main())"
    cortex = Proc(
        "cortex", [sys.executable, "-c", code, "serve", "--config", str(cfg)], tmp / "cortex.log"
    )
    for n in (a, b):
        n.start()
    tally = Tally()
    events: list[str] = []
    timeout = aiohttp.ClientTimeout(total=90)
    conn = aiohttp.TCPConnector(limit=0)
    try:
        async with aiohttp.ClientSession(timeout=timeout, connector=conn) as session:
            for n in (a, b):
                await n.ready(session)
            await cortex_ready(session, url, cortex)
            rss = {"cortex": [("start", rss_mb(cortex.pid))]}
            for n in (a, b):
                n.note_rss("start")
            secs = args.minutes * 60
            stop = asyncio.Event()
            clients = [
                Client(i, url, keys[i % nkeys], f"key-{i % nkeys}", i % 10 == 9, tally)
                for i in range(args.clients)
            ]
            tasks = [asyncio.create_task(c.run(session, stop)) for c in clients]
            chaos_task = asyncio.create_task(chaos(b, session, secs, args.down_secs, events))
            t0 = time.monotonic()
            while time.monotonic() - t0 < secs:
                await asyncio.sleep(min(30.0, secs - (time.monotonic() - t0)))
                print(f"  {time.monotonic() - t0:6.0f}s  {dict(tally.outcomes)}", flush=True)
            stop.set()
            await asyncio.gather(*tasks)
            await chaos_task
            await asyncio.sleep(2)  # cortex settles hung-up requests after the client left
            rss["cortex"].append(("end", rss_mb(cortex.pid)))
            for n in (a, b):
                n.note_rss("end")
            live = await spend_metrics(session, metrics_url)
    finally:
        cortex.stop()
        for n in (a, b):
            if n.proc is not None:
                n.proc.stop()
    stored = spend_sqlite(tmp / "ledger.sqlite3")
    return report(args, tally, events, rss, [a, b], live, stored, tmp)


def report(
    args: argparse.Namespace,
    tally: Tally,
    events: list[str],
    rss: dict[str, list[tuple[str, float]]],
    neurons: list[Neuron],
    live: dict[str, int],
    stored: dict[str, int] | None,
    tmp: Path,
) -> int:
    total = sum(tally.outcomes.values())
    print(f"\nsoak: {args.clients} clients, {args.minutes:g} min, {total} requests (logs: {tmp})")
    for e in events:
        print(" ", e)
    print("outcomes:", ", ".join(f"{k} {v}" for k, v in sorted(tally.outcomes.items())))
    lost = tally.outcomes.get("lost", 0)
    print(f"requests lost: {lost}" + (f"  {dict(tally.lost)}" if lost else ""))
    for cause, raw in tally.samples.items():
        print(f"  first {cause}: {raw!r}")
    print("5xx by cause:", dict(tally.errors_5xx) or "none")
    print("4xx by cause:", dict(tally.errors_4xx) or "none")
    errors = logged_errors(tmp)
    print("ERROR log lines:", "none" if not errors else "")
    for what, count in errors.most_common(10):
        print(f"  {count:6d}  {what}")
    print("RSS (MiB, process and its workers):")
    for when, mb in rss["cortex"]:
        print(f"  cortex     {when:28s} {mb:8.1f}")
    for n in neurons:
        for when, mb in n.rss:
            print(f"  neuron {n.name}   {when:28s} {mb:8.1f}")
    ok = lost == 0
    print("ledger per key (metrics spend; completed usage + cut/failed charge within [low, high]):")
    for key_id, tk in sorted(tally.keys.items()):
        spent = live.get(key_id, 0)
        extra = spent - tk.completed
        high = "open" if tk.open_high else str(tk.high)
        fits = extra >= tk.low and (tk.open_high > 0 or extra <= tk.high)
        ok = ok and fits
        line = f"  {key_id}: ledger {spent} = completed {tk.completed} + cut/failed {extra}"
        print(f"{line} (range [{tk.low}, {high}]) {'ok' if fits else 'MISMATCH'}")
        if stored is not None and stored.get(key_id) != spent:
            kept = stored.get(key_id, 0)
            print(f"    persisted ledger says {kept} (not persisted at stop: {spent - kept})")
    if stored is None:
        print("persisted ledger: none (cortex keeps no ledger file)")
    elif all(stored.get(k) == live.get(k, 0) for k in tally.keys):
        print("persisted ledger after a clean stop: equal to the live spend for every key")
    print("verdict:", "ok" if ok else "NOT ok")
    return 0 if ok else 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--minutes", type=float, default=10.0, help="how long the clients run (10)")
    ap.add_argument("--clients", type=int, default=50, help="concurrent clients (50)")
    ap.add_argument("--down-secs", type=float, default=5.0, help="how long neuron b stays dead (5)")
    ap.add_argument("--quick", action="store_true", help="20 clients for 1 minute")
    args = ap.parse_args(argv)
    if args.quick:
        args.minutes, args.clients, args.down_secs = 1.0, 20, 3.0
    return args


def main(argv: list[str] | None = None) -> int:
    return asyncio.run(run(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
