"""End to end: in-process transformers vs neuron directly vs cortex in front of that neuron.

Builds the ~100M-parameter Qwen3 of ``bench/neuron_decode.py`` locally (random weights, nothing
downloaded), starts ``neuron serve`` (model pre-warmed, node token set) and ``cortex serve``
(client auth on, metrics on, one neuron) as subprocesses on ephemeral 127.0.0.1 ports, and, for
the same chat prompt and greedy decoding, measures time to first token and decode tok/s of:

  (a) in-process ``model.generate`` (the baseline, measured in the same run);
  (b) the neuron directly: a streamed ``/v1/chat/completions`` with the node token;
  (c) cortex in front of that neuron: the same request with a client key.

The three are interleaved (a, b, c, a, b, c, ...) after a warm-up round, so drift on a noisy
machine hits them alike; every figure is a median. The TTFT cortex adds is also measured on
``--ttft-runs`` extra interleaved pairs of 1-token requests (their TTFT is mostly prefill, so the
gateway's share shows), as the median of the paired differences (c - b). Targets: (c)/(a) decode
>= 0.9, cortex adds <= 1 ms to TTFT over (b). Numbers are reported, never asserted.

    python bench/end_to_end.py [--tokens 128] [--runs 3] [--layers 12] [--hidden 768]
    python bench/end_to_end.py --layers 4 --tokens 64 --runs 2 --ttft-runs 10   # quick

All traffic stays on 127.0.0.1; both processes (and the neuron's workers) are stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from gateway_overhead import Proc, _proc_tree  # noqa: E402
from neuron_decode import MODEL_ID, PROMPT, Timer, build, free_port, med  # noqa: E402

HOST = "127.0.0.1"
NODE_TOKEN = "bench-node-token"
CLIENT_KEY = "sk-bench"


def write_configs(tmp: Path, model: Path, tokens: int) -> tuple[Path, Path, str, str]:
    """neuron.toml, cortex.toml and an empty models.toml; return both configs and both URLs."""
    n_port, c_port, m_port = free_port(), free_port(), free_port()
    neuron = tmp / "neuron.toml"
    neuron.write_text(
        f'listen = "{HOST}:{n_port}"\nbind_url = "http://{HOST}:{n_port}"\n'
        f"max_output_tokens = {tokens}\nshutdown_grace_secs = 5\n"
        f'[auth]\ntoken = "{NODE_TOKEN}"\n'
        f'[[default_models]]\nmodel_id = "{model}"\nserved_model_id = "{MODEL_ID}"\n'
    )
    (tmp / "models.toml").write_text("")  # the model is routed because the neuron has it loaded
    cortex = tmp / "cortex.toml"
    cortex.write_text(
        f"""models_config = "models.toml"

[gateway]
listen = "{HOST}:{c_port}"
metrics_listen = "{HOST}:{m_port}"
poll_interval_secs = 1
shutdown_grace_secs = 2

[[neurons]]
name = "local"
endpoint = "http://{HOST}:{n_port}"
token = "{NODE_TOKEN}"

[entitlements]
require_auth = true

[[entitlements.keys]]
key = "{CLIENT_KEY}"
account_id = "bench"
"""
    )
    return neuron, cortex, f"http://{HOST}:{n_port}", f"http://{HOST}:{c_port}"


async def wait_ready(procs: list[Proc], cortex_url: str, limit_s: float) -> None:
    """Wait until cortex says `ok` with a healthy node and lists the model as loaded."""
    deadline = time.monotonic() + limit_s
    last = "no answer yet"
    auth = {"authorization": f"Bearer {CLIENT_KEY}"}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as s:
        while time.monotonic() < deadline:
            for p in procs:
                if not p.alive():
                    raise SystemExit(f"{p.name} exited with {p.popen.returncode}:\n{p.tail()}")
            try:
                async with s.get(cortex_url + "/health") as r:
                    h = await r.json(content_type=None)
                async with s.get(cortex_url + "/v1/models", headers=auth) as r:
                    models = (await r.json(content_type=None)).get("data", [])
                loaded = any(m.get("id") == MODEL_ID and m.get("loaded") for m in models)
                if h.get("status") == "ok" and loaded:
                    return
                last = f"health={h.get('status')} nodes={h.get('nodes')} loaded={loaded}"
            except (aiohttp.ClientError, TimeoutError, OSError, ValueError, AttributeError) as e:
                last = f"{type(e).__name__}: {e}"
            await asyncio.sleep(0.25)
    raise SystemExit(f"stack not ready after {limit_s:.0f}s: {last}\n{procs[0].tail()}")


async def stream_once(
    s: aiohttp.ClientSession, url: str, headers: dict[str, str], max_tokens: int
) -> tuple[float, float, int, float]:
    """One streamed chat request: (TTFT s, decode tok/s, completion tokens, x-helexa-overhead-ms).

    Decode rate is (completion_tokens - 1) over first-to-last token frame, as helexa-bench does
    (a frame may carry several tokens of held-back text)."""
    body = {
        "model": MODEL_ID,
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
    }
    stamps: list[float] = []
    produced = 0
    start = time.perf_counter()
    async with s.post(url + "/v1/chat/completions", json=body, headers=headers) as r:
        if r.status != 200:
            raise SystemExit(f"{url}: HTTP {r.status}: {(await r.text())[:300]}")
        hdr = r.headers.get("x-helexa-overhead-ms")
        buf = b""
        async for chunk in r.content.iter_any():
            buf += chunk
            while b"\n\n" in buf:
                frame, buf = buf.split(b"\n\n", 1)
                data = frame.removeprefix(b"data: ")
                if data == b"[DONE]" or not data.startswith(b"{"):
                    continue
                obj = orjson.loads(data)
                if obj.get("usage"):
                    produced = obj["usage"]["completion_tokens"]
                for ch in obj.get("choices") or []:
                    d = ch.get("delta") or {}
                    if d.get("content") or d.get("reasoning_content") or d.get("tool_calls"):
                        stamps.append(time.perf_counter())
    if not stamps:
        raise SystemExit(f"{url}: stream carried no tokens")
    window = stamps[-1] - stamps[0]
    tps = (produced - 1) / window if produced > 1 and window > 0 else math.nan
    return stamps[0] - start, tps, produced, float(hdr) if hdr else math.nan


class InProcess:
    """(a): the model loaded in this process, one greedy `generate` per call (the same dtype,
    threads and chat template as ``neuron_decode.in_process``), so it can be interleaved."""

    def __init__(self, path: Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.set_num_threads(max(1, os.cpu_count() or 1))
        self.torch = torch
        tok = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        self.params = sum(p.numel() for p in self.model.parameters())
        enc: Any = tok.apply_chat_template(
            [{"role": "user", "content": PROMPT}], add_generation_prompt=True, return_tensors="pt"
        )
        self.ids = enc["input_ids"] if hasattr(enc, "keys") else enc

    def run(self, tokens: int) -> tuple[float, float, int]:
        """(TTFT s, decode tok/s, tokens produced)."""
        timer = Timer()
        start = time.perf_counter()
        with self.torch.inference_mode():
            self.model.generate(self.ids, max_new_tokens=tokens, do_sample=False, streamer=timer)
        st = timer.stamps
        tps = (len(st) - 1) / (st[-1] - st[0]) if len(st) > 1 else math.nan
        return st[0] - start, tps, len(st)


async def measure(
    local: InProcess, neuron_url: str, cortex_url: str, tokens: int, runs: int, ttft_runs: int
) -> dict[str, Any]:
    """(a), (b), (c) interleaved per round after a warm-up round; HTTP paths on one keep-alive
    session each. Then ``ttft_runs`` interleaved 1-token (b, c) pairs."""
    paths = {
        "b": (neuron_url, {"authorization": f"Bearer {NODE_TOKEN}"}),
        "c": (cortex_url, {"authorization": f"Bearer {CLIENT_KEY}"}),
    }
    res: dict[str, Any] = {
        k: {"ttft": [], "tps": [], "n": 0, "short": [], "hdr": []} for k in ("a", *paths)
    }
    timeout = aiohttp.ClientTimeout(total=600)
    async with (
        aiohttp.ClientSession(timeout=timeout) as sb,
        aiohttp.ClientSession(timeout=timeout) as sc,
    ):
        sessions = {"b": sb, "c": sc}
        for i in range(runs + 1):  # round 0 warms up: connections, worker, route caches
            row: dict[str, tuple[float, float, int, float]] = {}
            row["a"] = (*local.run(tokens), math.nan)  # blocks the loop: nothing else runs
            for k, (url, hd) in paths.items():
                row[k] = await stream_once(sessions[k], url, hd, tokens)
            if i == 0:
                continue
            for k, (ttft, tps, n, hdr) in row.items():
                r = res[k]
                r["ttft"].append(ttft)
                r["tps"].append(tps)
                r["n"] = n
                r["hdr"].append(hdr)
            print(
                f"  run {i}/{runs}: decode tok/s (a) {row['a'][1]:.1f}, (b) {row['b'][1]:.1f},"
                f" (c) {row['c'][1]:.1f}",
                flush=True,
            )
        for _ in range(ttft_runs):
            for k, (url, hd) in paths.items():
                ttft, _, _, hdr = await stream_once(sessions[k], url, hd, 1)
                res[k]["short"].append(ttft)
                res[k]["hdr"].append(hdr)
    return res


def stop_all(procs: list[Proc]) -> None:
    """SIGTERM cortex, then the neuron (30 s grace, then SIGKILL); then kill any worker left over
    (workers run in their own sessions, so the neuron's process group does not cover them)."""
    tree = [pid for p in procs if p.alive() for pid in _proc_tree(p.pid)]
    for p in reversed(procs):
        p.stop(grace=30)
    for pid in tree:
        try:
            if b"helexa" in Path(f"/proc/{pid}/cmdline").read_bytes():  # not a reused pid
                os.kill(pid, signal.SIGKILL)
        except (OSError, ProcessLookupError):
            pass


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--tokens", type=int, default=128, help="max_tokens per measured request")
    ap.add_argument("--runs", type=int, default=3, help="measured runs per path (after a warm-up)")
    ap.add_argument("--ttft-runs", type=int, default=40, help="interleaved 1-token pairs (b, c)")
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--ready-timeout", type=float, default=240.0, help="seconds for start-up")
    ap.add_argument("--keep-logs", action="store_true", help="keep the configs and logs")
    args = ap.parse_args()
    if min(args.tokens, args.runs) < 1 or args.ttft_runs < 0:
        ap.error("--tokens and --runs must be positive")

    tmp = Path(tempfile.mkdtemp(prefix="helexa-e2e-bench-"))
    procs: list[Proc] = []
    t_start = time.monotonic()
    ok = False
    try:
        path = build(tmp / "model", args.hidden, args.layers)
        neuron_cfg, cortex_cfg, neuron_url, cortex_url = write_configs(tmp, path, args.tokens)
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        for name, cfg in (("neuron", neuron_cfg), ("cortex", cortex_cfg)):
            cmd = [sys.executable, "-m", f"helexa.{name}.cli", "serve", "--config", str(cfg)]
            procs.append(Proc(name, cmd, tmp / f"{name}.log", env=env))
        local = InProcess(path)  # loads while the stack starts; measured only once it is ready
        asyncio.run(wait_ready(procs, cortex_url, args.ready_timeout))
        print(
            f"stack ready in {time.monotonic() - t_start:.0f}s: neuron {neuron_url}, "
            f"cortex {cortex_url}",
            flush=True,
        )
        res = asyncio.run(
            measure(local, neuron_url, cortex_url, args.tokens, args.runs, args.ttft_runs)
        )
        ok = True
    finally:
        stop_all(procs)
        shutil.rmtree(tmp / "model", ignore_errors=True)
        if not ok:
            print(f"logs kept in {tmp}", file=sys.stderr)

    a, b, c = res["a"], res["b"], res["c"]
    print(
        f"\nmodel: qwen3 {local.params / 1e6:.0f}M params "
        f"(hidden {args.hidden}, {args.layers} layers),"
        f" fp32 on CPU ({os.cpu_count()} cores), greedy, max {args.tokens} tokens,"
        f" {args.runs} runs per path"
    )
    print(f"\n{'path':<30} {'tokens':>6} {'TTFT p50 ms':>12} {'decode tok/s p50':>17}")
    rows = [
        ("(a) in-process generate", a["n"], a["ttft"], a["tps"]),
        ("(b) neuron, streamed HTTP", b["n"], b["ttft"], b["tps"]),
        ("(c) cortex -> neuron", c["n"], c["ttft"], c["tps"]),
    ]
    for label, n, ttft, tps in rows:
        print(f"{label:<30} {n:>6} {med(ttft) * 1e3:>12.1f} {med(tps):>17.1f}")

    ca = med(c["tps"]) / med(a["tps"])
    print(f"\ndecode (c)/(a): {ca:.3f}  (target >= 0.9): {verdict(ca >= 0.9)}")
    print(f"decode (b)/(a): {med(b['tps']) / med(a['tps']):.3f}")
    print(f"decode (c)/(b): {med(c['tps']) / med(b['tps']):.3f}")
    long_added = (med(c["ttft"]) - med(b["ttft"])) * 1e3
    print(f"TTFT (c) - (b), {args.tokens}-token runs (medians): {long_added:+.2f} ms")
    if b["short"]:
        pairs = [(y - x) * 1e3 for x, y in zip(b["short"], c["short"], strict=True)]
        added = statistics.median(pairs)
        print(
            f"TTFT added by cortex over (b), {len(pairs)} interleaved 1-token pairs: "
            f"median {added:+.2f} ms (target <= 1 ms): {verdict(added <= 1.0)}; "
            f"(b) {med(b['short']) * 1e3:.1f} ms, (c) {med(c['short']) * 1e3:.1f} ms"
        )
        if len(pairs) >= 4:
            q1, _, q3 = statistics.quantiles(pairs, n=4)
            print(f"  paired differences p25 {q1:+.2f} ms, p75 {q3:+.2f} ms (the noise floor)")
    hdr = [h for h in c["hdr"] if not math.isnan(h)]
    if hdr:
        print(f"cortex's own x-helexa-overhead-ms, p50: {statistics.median(hdr):.3f} ms")
    print(f"TTFT (b) - (a): {(med(b['ttft']) - med(a['ttft'])) * 1e3:+.1f} ms")
    print(f"\ntotal wall time {time.monotonic() - t_start:.0f}s", end="")
    if args.keep_logs:
        print(f"; logs in {tmp}")
    else:
        print("; --keep-logs keeps the logs")
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
