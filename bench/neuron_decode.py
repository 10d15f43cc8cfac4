"""Decode speed: in-process transformers `generate` vs the same request streamed through neuron.

Builds a ~100M-parameter Qwen3 locally (random weights, tokenizer trained on the fly; nothing is
downloaded), then, for the same chat prompt and greedy decoding:
  (a) in-process `model.generate` with a streamer timing every token;
  (b) `neuron serve` with the model pre-warmed, a streamed /v1/chat/completions over HTTP.
Prints TTFT, decode tok/s and the ratio (b)/(a). Target: (b)/(a) decode >= 0.9.

    python bench/neuron_decode.py [--tokens 128] [--runs 3] [--layers 12] [--hidden 768]
    python bench/neuron_decode.py --serving [--streams 2,4,8]   (torch_serving.py)

All traffic stays on 127.0.0.1; the neuron process is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from fixtures.tiny import build_model  # noqa: E402

PROMPT = "Tell me a long story about a quick brown fox and a lazy dog."
MODEL_ID = "bench/qwen3-100m"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def build(dst: Path, hidden: int, layers: int) -> Path:
    heads = max(1, hidden // 64)
    return build_model(
        dst,
        "qwen3",
        seed=1,
        hidden_size=hidden,
        intermediate_size=hidden * 8 // 3,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 3),
        head_dim=64,
        max_position_embeddings=4096,
    )


class Timer:
    """A transformers streamer that timestamps every generated token."""

    def __init__(self) -> None:
        self.stamps: list[float] = []
        self.prompt_seen = False

    def put(self, value: object) -> None:
        if not self.prompt_seen:  # generate() first sends the prompt ids
            self.prompt_seen = True
            return
        self.stamps.append(time.perf_counter())

    def end(self) -> None:
        pass


def in_process(path: Path, tokens: int, runs: int) -> tuple[list[float], list[float], int]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    enc = tok.apply_chat_template(
        [{"role": "user", "content": PROMPT}], add_generation_prompt=True, return_tensors="pt"
    )
    ids = enc["input_ids"] if hasattr(enc, "keys") else enc
    ttfts, tps = [], []
    produced = 0
    for i in range(runs + 1):
        timer = Timer()
        start = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(ids, max_new_tokens=tokens, do_sample=False, streamer=timer)
        produced = out.shape[1] - ids.shape[1]
        if i == 0:
            continue  # warm-up
        ttfts.append(timer.stamps[0] - start)
        if len(timer.stamps) > 1:
            tps.append((len(timer.stamps) - 1) / (timer.stamps[-1] - timer.stamps[0]))
    return ttfts, tps, produced


@dataclass
class Stream:
    """One streamed chat completion, timed: a stamp per delta that carried output."""

    start: float
    stamps: list[float]
    produced: int
    cached: int

    @property
    def ttft(self) -> float:
        return self.stamps[0] - self.start

    @property
    def rate(self) -> float:
        """Decode tok/s: a delta can carry several tokens (held-back text), so the rate is over
        tokens, not frames."""
        span = self.stamps[-1] - self.stamps[0] if len(self.stamps) > 1 else 0.0
        return (self.produced - 1) / span if span > 0 else float("nan")


async def stream(s: Any, url: str, body: dict[str, Any]) -> Stream:
    """One streamed chat completion over the neuron's HTTP API."""
    stamps: list[float] = []
    produced = cached = 0
    start = time.perf_counter()
    async with s.post(url + "/v1/chat/completions", json=body) as r:
        r.raise_for_status()
        buf = b""
        async for chunk in r.content.iter_any():
            buf += chunk
            while b"\n\n" in buf:
                frame, buf = buf.split(b"\n\n", 1)
                data = frame.removeprefix(b"data: ")
                if data == b"[DONE]":
                    continue
                obj = orjson.loads(data)
                if obj.get("usage"):
                    produced = obj["usage"]["completion_tokens"]
                    details = obj["usage"].get("prompt_tokens_details") or {}
                    cached = details.get("cached_tokens") or 0
                for ch in obj.get("choices", []):
                    d = ch.get("delta", {})
                    if d.get("content") or d.get("reasoning_content") or d.get("tool_calls"):
                        stamps.append(time.perf_counter())
    return Stream(start, stamps or [time.perf_counter()], produced, cached)


async def stream_once(s: Any, url: str, body: dict[str, Any]) -> tuple[float, float, int, int]:
    """One streamed chat completion: (TTFT s, decode tok/s, completion tokens, cached tokens)."""
    st = await stream(s, url, body)
    return st.ttft, st.rate, st.produced, st.cached


def chat_body(model: str, text: str, tokens: int) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": text}],
        "max_tokens": tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},  # the usage chunk carries the token count
    }


async def through_neuron(url: str, tokens: int, runs: int) -> tuple[list[float], list[float], int]:
    import aiohttp

    body = chat_body(MODEL_ID, PROMPT, tokens)
    ttfts, tps = [], []
    produced = 0
    async with aiohttp.ClientSession() as s:
        for i in range(runs + 1):
            ttft, rate, produced, _ = await stream_once(s, url, body)
            if i == 0:
                continue
            ttfts.append(ttft)
            if not math.isnan(rate):
                tps.append(rate)
    return ttfts, tps, produced


async def wait_loaded(url: str, deadline: float, ids: tuple[str, ...] = (MODEL_ID,)) -> None:
    import aiohttp

    async with aiohttp.ClientSession() as s:
        while time.monotonic() < deadline:
            try:
                async with s.get(url + "/health") as r:
                    h = await r.json()
                loaded = {m["id"] for m in h["models"] if m["status"] == "loaded"}
                if loaded >= set(ids):
                    return
                if h.get("activation", {}).get("failed"):
                    raise SystemExit(f"pre-warm failed: {h['activation']['failed']}")
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    raise SystemExit("neuron did not load the model in time")


def serve_neuron(
    tmp: Path,
    tokens: int,
    models: list[tuple[str, str, str]],
    extra: str = "",
    per_model: dict[str, str] | None = None,
) -> tuple[subprocess.Popen[bytes], str]:
    """`neuron serve` on a free loopback port pre-warming `models` (path, served id, harness),
    with `per_model[served id]` added to that model's entry. Every worker gets every core (the
    in-process baselines use them all) unless `extra` sets `worker_threads`: the neuron's default
    shares the cores out among the loaded workers, which would halve a second model's threads."""
    port = free_port()
    if "worker_threads" not in extra:
        extra = f"worker_threads = {len(os.sched_getaffinity(0))}\n{extra}"
    toml = (
        f'listen = "127.0.0.1:{port}"\nbind_url = "http://127.0.0.1:{port}"\n'
        f"max_output_tokens = {tokens}\n{extra}"
    )
    for path, served, harness in models:
        toml += (
            f'[[default_models]]\nmodel_id = "{path}"\nserved_model_id = "{served}"\n'
            f'harness = "{harness}"\n{(per_model or {}).get(served, "")}\n'
        )
    (tmp / "neuron.toml").write_text(toml)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "helexa.neuron.cli", "serve", "--config", str(tmp / "neuron.toml")],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(tmp / "neuron.log", "wb"),  # noqa: SIM115
    )
    return proc, f"http://127.0.0.1:{port}"


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--harness", choices=("torch", "llamacpp"), default="torch")
    ap.add_argument("--serving", action="store_true", help="streams, prefix, compile, competitor")
    ap.add_argument("--streams", type=lambda v: [int(x) for x in v.split(",")], default=[2, 4, 8])
    args = ap.parse_args()
    if args.serving:
        from torch_serving import run as serving

        serving(args)
        return
    if args.harness == "llamacpp":
        from llamacpp_decode import run

        run(args)
        return

    tmp = Path(tempfile.mkdtemp(prefix="helexa-neuron-bench-"))
    path = build(tmp / "model", args.hidden, args.layers)
    params = sum(
        p.numel()
        for p in __import__("transformers").AutoModelForCausalLM.from_pretrained(path).parameters()
    )
    print(f"model: qwen3 {params / 1e6:.0f}M params, fp32 on CPU, {args.tokens} tokens, greedy")

    a_ttft, a_tps, a_n = in_process(path, args.tokens, args.runs)

    proc, url = serve_neuron(tmp, args.tokens, [(str(path), MODEL_ID, "torch")])
    try:
        asyncio.run(wait_loaded(url, time.monotonic() + 180))
        b_ttft, b_tps, b_n = asyncio.run(through_neuron(url, args.tokens, args.runs))
    finally:
        stop(proc)

    print(f"\n{'path':<28} {'tokens':>6} {'TTFT p50 ms':>12} {'decode tok/s p50':>17}")
    print(
        f"{'(a) in-process generate':<28} {a_n:>6} {med(a_ttft) * 1e3:>12.1f} {med(a_tps):>17.1f}"
    )
    print(f"{'(b) neuron over HTTP':<28} {b_n:>6} {med(b_ttft) * 1e3:>12.1f} {med(b_tps):>17.1f}")
    ratio = med(b_tps) / med(a_tps)
    print(f"\ndecode ratio (b)/(a): {ratio:.3f}  (target >= 0.9)")
    print(f"TTFT added by the neuron path: {(med(b_ttft) - med(a_ttft)) * 1e3:.1f} ms")
    print(f"logs: {tmp / 'neuron.log'}")


if __name__ == "__main__":
    main()
