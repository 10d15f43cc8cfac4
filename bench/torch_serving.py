"""`neuron_decode.py --serving`: the torch harness under the traffic it is built for.

One `neuron serve` holds the same ~100M Qwen3 twice (compile off and on); every round runs, in
turn, on 127.0.0.1 and greedy:
  - one stream (eager): the baseline every ratio below is against, taken in the same round;
  - 2, 4, 8 concurrent streams: aggregate decode tok/s (tokens after each stream's first, over the
    span from the first stream's first token to the last stream's last) / one stream's;
  - a request sharing a ~1,000-token prefix with the one before it: TTFT / that first one's;
  - one stream through the compiled model, and bare llama-cpp-python on the F32 GGUF of the same
    weights with the same threads: torch eager / llama.cpp and compiled / llama.cpp; and 4
    streams through the compiled model (its bucketed batch step) / its one stream;
  - one stream while a CPU-bound process (a Python busy loop) runs: / undisturbed.
Prints the medians over rounds and the issue's targets (>= 2.5x at 4 streams, prefix TTFT
<= 0.2x, compiled >= 0.7x llama.cpp, >= 0.4x with a competitor). Nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from fixtures.gguf import write_gguf
from llamacpp_decode import Bare, chat_ids, long_text
from neuron_decode import (
    MODEL_ID,
    PROMPT,
    Stream,
    build,
    chat_body,
    med,
    serve_neuron,
    stop,
    stream,
    wait_loaded,
)

COMPILED_ID = MODEL_ID + "-compiled"
TARGETS = {
    "4 streams / 1": (">=", 2.5),
    "prefix TTFT / cold": ("<=", 0.2),
    "compiled / llama.cpp": (">=", 0.7),
    "competitor / alone": (">=", 0.4),
}


def aggregate(streams: list[Stream]) -> float:
    first = min(x.stamps[0] for x in streams)
    last = max(x.stamps[-1] for x in streams)
    tokens = sum(max(0, x.produced - 1) for x in streams)
    return tokens / (last - first) if last > first else float("nan")


class Round:
    """The measurements of one round, each against this round's own baselines."""

    def __init__(self, url: str, tokens: int, tag: str) -> None:
        self.url, self.tokens, self.tag = url, tokens, tag
        self.n = 0

    def body(self, model: str = MODEL_ID, text: str | None = None) -> dict[str, Any]:
        self.n += 1  # every request its own prompt: the prefix cache helps only where meant
        return chat_body(model, text or f"[{self.tag}.{self.n}] {PROMPT}", self.tokens)

    async def one(self, s: Any, model: str = MODEL_ID) -> Stream:
        return await stream(s, self.url, self.body(model))

    async def many(self, s: Any, k: int, model: str = MODEL_ID) -> float:
        return aggregate(await asyncio.gather(*(self.one(s, model) for _ in range(k))))

    async def prefix(self, s: Any, text: str) -> tuple[Stream, Stream]:
        head = f"[{self.tag}] {text}"
        first = await stream(s, self.url, chat_body(MODEL_ID, head + " First question?", 4))
        second = await stream(s, self.url, chat_body(MODEL_ID, head + " Another one?", 4))
        return first, second

    async def competed(self, s: Any) -> Stream:
        busy = await asyncio.create_subprocess_exec(sys.executable, "-c", "while True: pass")
        try:
            return await self.one(s)
        finally:
            busy.kill()
            await busy.wait()


async def rounds(
    url: str, bare: Bare, ids_of: Any, args: argparse.Namespace, text: str
) -> dict[str, list[float]]:
    import aiohttp

    got: dict[str, list[float]] = {}

    def put(key: str, value: float) -> None:
        got.setdefault(key, []).append(value)

    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn) as s:
        for i in range(args.runs + 1):
            r = Round(url, args.tokens, f"r{i}")
            one = await r.one(s)
            values = {"1 stream tok/s": one.rate, "1 stream TTFT ms": one.ttft * 1e3}
            for k in args.streams:
                values[f"{k} streams tok/s"] = await r.many(s, k)
            cold, warm = await r.prefix(s, text)
            values |= {"cold TTFT ms": cold.ttft * 1e3, "prefix TTFT ms": warm.ttft * 1e3}
            values["prefix cached tokens"] = warm.cached
            values["compiled tok/s"] = (await r.one(s, COMPILED_ID)).rate
            values["compiled 4 streams tok/s"] = await r.many(s, 4, COMPILED_ID)
            values["llama.cpp tok/s"] = bare.once(ids_of(f"[{i}] {PROMPT}"), args.tokens)[1]
            values["competitor tok/s"] = (await r.competed(s)).rate
            if i == 0:
                continue  # warm-up
            for key, v in values.items():
                put(key, v)
            base = one.rate
            for k in args.streams:
                put(f"{k} streams / 1", values[f"{k} streams tok/s"] / base)
            put("prefix TTFT / cold", warm.ttft / cold.ttft)
            put("eager / llama.cpp", base / values["llama.cpp tok/s"])
            put("compiled / llama.cpp", values["compiled tok/s"] / values["llama.cpp tok/s"])
            compiled = values["compiled tok/s"]
            put("compiled 4 streams / 1", values["compiled 4 streams tok/s"] / compiled)
            put("competitor / alone", values["competitor tok/s"] / base)
    return got


def run(args: argparse.Namespace) -> None:
    from transformers import AutoTokenizer

    tmp = Path(tempfile.mkdtemp(prefix="helexa-serving-bench-"))
    hf = build(tmp / "model", args.hidden, args.layers)
    gguf = write_gguf(hf, tmp / "m-F32.gguf", "F32")
    tok = AutoTokenizer.from_pretrained(hf)
    threads = len(os.sched_getaffinity(0))

    ids_of = chat_ids(tok)

    print(f"model: qwen3 {args.hidden}x{args.layers} fp32, {threads} threads, {args.tokens} tokens")
    models = [(str(hf), MODEL_ID, "torch"), (str(hf), COMPILED_ID, "torch")]
    extra = f"worker_threads = {threads}\n[admission]\nmax_in_flight = {max(args.streams)}\n"
    proc, url = serve_neuron(tmp, args.tokens, models, extra, {COMPILED_ID: 'compile = "on"'})
    try:
        asyncio.run(wait_loaded(url, time.monotonic() + 900, (MODEL_ID, COMPILED_ID)))
        bare = Bare(gguf, threads)
        got = asyncio.run(rounds(url, bare, ids_of, args, long_text(tok, 1000)))
    finally:
        stop(proc)
    print(f"\n{'median over ' + str(args.runs) + ' rounds':<28} {'value':>10}  target")
    for key, values in got.items():
        mark = ""
        if key in TARGETS:
            op, want = TARGETS[key]
            ok = med(values) >= want if op == ">=" else med(values) <= want
            mark = f"{op} {want}  {'met' if ok else 'NOT met'}"
        print(f"{key:<28} {med(values):>10.3f}  {mark}")
    print(f"logs: {tmp / 'neuron.log'}")
