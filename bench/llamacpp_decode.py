"""`neuron_decode.py --harness llamacpp`: the llamacpp harness against bare llama-cpp-python.

On the GGUF (F32) of the same ~100M Qwen3, with the same threads and greedy decoding:
  (a) bare llama-cpp-python in-process (`Llama.generate`, KV reset before each run);
  (b) the neuron's llamacpp harness, streamed over HTTP;
interleaved run by run, each run with its own prompt (so (b)'s prefix cache does not help).
Targets: decode (b)/(a) >= 0.95, TTFT (b)/(a) <= 1.05. Then the prefix cache: a second request
sharing a ~1,000-token prefix, TTFT second/first <= 0.2. Then F32 vs Q8_0 vs Q4_K_M (bare:
speed, file size, RSS growth) and the torch harness on the same weights through the neuron.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fixtures.gguf import quantize, write_gguf
from helexa.neuron.memory import rss_mb
from neuron_decode import (
    MODEL_ID,
    PROMPT,
    build,
    chat_body,
    med,
    serve_neuron,
    stop,
    stream_once,
    wait_loaded,
)

GGUF_ID = "bench/qwen3-100m-gguf"


class Bare:
    """llama-cpp-python's own `Llama`, greedy, timing every token."""

    def __init__(self, path: Path, threads: int) -> None:
        from llama_cpp import Llama

        self.llm = Llama(
            model_path=str(path), n_ctx=4096, n_threads=threads, n_batch=512, verbose=False
        )
        self.eos = self.llm.token_eos()

    def once(self, ids: list[int], tokens: int) -> tuple[float, float, int]:
        self.llm.reset()
        stamps: list[float] = []
        start = time.perf_counter()
        for t in self.llm.generate(
            ids, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0, reset=True
        ):
            if t == self.eos:
                break
            stamps.append(time.perf_counter())
            if len(stamps) >= tokens:
                break
        span = stamps[-1] - stamps[0] if len(stamps) > 1 else 0.0
        tps = (len(stamps) - 1) / span if span > 0 else float("nan")
        return stamps[0] - start, tps, len(stamps)


def chat_ids(tok: Any) -> Callable[[str], list[int]]:
    """A user message's prompt ids through the model's chat template (the bare runs' input)."""

    def ids_of(text: str) -> list[int]:
        msgs = [{"role": "user", "content": text}]
        return list(
            tok.apply_chat_template(
                msgs, add_generation_prompt=True, tokenize=True, return_dict=False
            )
        )

    return ids_of


def long_text(tok: Any, n: int) -> str:
    words = [
        "river",
        "stone",
        "garden",
        "lamp",
        "window",
        "cloud",
        "paper",
        "orange",
        "silver",
        "music",
    ]
    out: list[str] = []
    while len(tok.encode(" ".join(out))) < n:
        out.append(words[len(out) * 7 % len(words)] + str(len(out) % 97))
    return " ".join(out)


async def interleaved(
    url: str, bare: Bare, ids_of: Any, tokens: int, runs: int
) -> dict[str, list[float]]:
    import aiohttp

    got: dict[str, list[float]] = {"a_ttft": [], "a_tps": [], "b_ttft": [], "b_tps": []}
    async with aiohttp.ClientSession() as s:
        for i in range(runs + 1):
            text = f"{i}: {PROMPT}"
            a = bare.once(ids_of(text), tokens)
            b = await stream_once(s, url, chat_body(GGUF_ID, text, tokens))
            if i == 0:
                continue  # warm-up
            got["a_ttft"].append(a[0])
            got["a_tps"].append(a[1])
            got["b_ttft"].append(b[0])
            got["b_tps"].append(b[1])
    return got


async def prefix_runs(url: str, text: str, runs: int) -> tuple[list[float], list[float], int]:
    import aiohttp

    firsts, seconds, cached = [], [], 0
    async with aiohttp.ClientSession() as s:
        for i in range(runs + 1):
            head = f"[{i}] {text}"
            first = await stream_once(s, url, chat_body(GGUF_ID, head + " First question?", 8))
            second = await stream_once(s, url, chat_body(GGUF_ID, head + " Another one?", 8))
            if i == 0:
                continue
            firsts.append(first[0])
            seconds.append(second[0])
            cached = second[3]
    return firsts, seconds, cached


async def torch_runs(url: str, tokens: int, runs: int) -> tuple[list[float], list[float]]:
    import aiohttp

    ttft, tps = [], []
    async with aiohttp.ClientSession() as s:
        for i in range(runs + 1):
            r = await stream_once(s, url, chat_body(MODEL_ID, f"{i}: {PROMPT}", tokens))
            if i:
                ttft.append(r[0])
                tps.append(r[1])
    return ttft, tps


def run(args: argparse.Namespace) -> None:
    from transformers import AutoTokenizer

    tmp = Path(tempfile.mkdtemp(prefix="helexa-llamacpp-bench-"))
    hf = build(tmp / "model", args.hidden, args.layers)
    files = {q: write_gguf(hf, tmp / f"m-{q}.gguf", q) for q in ("F32", "Q8_0")}
    files["Q4_K_M"] = quantize(files["F32"], tmp / "m-Q4_K_M.gguf", "Q4_K_M")
    tok = AutoTokenizer.from_pretrained(hf)
    threads = len(os.sched_getaffinity(0))

    ids_of = chat_ids(tok)

    print(f"model: qwen3 {args.hidden}x{args.layers}, {threads} threads, {args.tokens} tokens")
    models = [(str(files["F32"]), GGUF_ID, "llamacpp"), (str(hf), MODEL_ID, "torch")]
    proc, url = serve_neuron(tmp, args.tokens, models)
    try:
        asyncio.run(wait_loaded(url, time.monotonic() + 300, (GGUF_ID, MODEL_ID)))
        bare = Bare(files["F32"], threads)
        got = asyncio.run(interleaved(url, bare, ids_of, args.tokens, args.runs))
        del bare
        text = long_text(tok, 1000)
        firsts, seconds, cached = asyncio.run(prefix_runs(url, text, args.runs))
        t_ttft, t_tps = asyncio.run(torch_runs(url, args.tokens, args.runs))
    finally:
        stop(proc)

    a_tps, b_tps = med(got["a_tps"]), med(got["b_tps"])
    a_ttft, b_ttft = med(got["a_ttft"]), med(got["b_ttft"])
    print(f"\n{'F32 GGUF':<34} {'TTFT p50 ms':>12} {'decode tok/s p50':>17}")
    print(f"{'(a) bare llama-cpp-python':<34} {a_ttft * 1e3:>12.1f} {a_tps:>17.1f}")
    print(f"{'(b) neuron llamacpp over HTTP':<34} {b_ttft * 1e3:>12.1f} {b_tps:>17.1f}")
    print(f"{'(c) neuron torch over HTTP':<34} {med(t_ttft) * 1e3:>12.1f} {med(t_tps):>17.1f}")
    print(f"decode (b)/(a): {b_tps / a_tps:.3f} (target >= 0.95)")
    print(f"TTFT   (b)/(a): {b_ttft / a_ttft:.3f} (target <= 1.05)")
    print(
        f"\nprefix cache (~1,000 shared tokens, {cached} cached): TTFT first "
        f"{med(firsts) * 1e3:.1f} ms, second {med(seconds) * 1e3:.1f} ms, "
        f"ratio {med(seconds) / med(firsts):.3f} (target <= 0.2)"
    )
    print(f"\n{'bare, by quant':<10} {'file MB':>8} {'RSS +MB':>8} {'TTFT ms':>8} {'tok/s':>8}")
    for q, path in files.items():
        before = rss_mb() or 0
        b = Bare(path, threads)
        runs = [b.once(ids_of(f"{i}: {PROMPT}"), args.tokens) for i in range(args.runs + 1)][1:]
        grown = (rss_mb() or 0) - before
        size = path.stat().st_size / 2**20
        ttft = med([r[0] for r in runs]) * 1e3
        print(f"{q:<10} {size:>8.0f} {grown:>8} {ttft:>8.1f} {med([r[1] for r in runs]):>8.1f}")
        del b
