"""Seeded runs shared by the store, API, report and CLI tests: two builds on one neuron target,
an openai target on the same cell, failed runs mixed in (medians must ignore them)."""

from __future__ import annotations

from typing import Any

from helexa.bench.store import RunRow, Store


def run(**kw: Any) -> RunRow:
    base: dict[str, Any] = {
        "ts": "2026-01-01T00:00:00Z",
        "host": "alpha",
        "hostname": "alpha-box",
        "gpu": "2× RTX 5090",
        "git_sha": "aaa1111",
        "git_sha_long": "aaa1111" + "0" * 33,
        "build_timestamp": "2026-01-01T00:00:00Z",
        "package_version": "0.1.0",
        "build_info": {"git_sha": kw.get("git_sha", "aaa1111")},
        "bench_sha": "bench01",
        "model_id": "m1",
        "harness": "hf",
        "quant": "bf16",
        "scenario_id": "chat:128",
        "prompt_size_approx": 128,
        "prompt_tokens_actual": 130,
        "max_tokens": 256,
        "ok": True,
    }
    base.update(kw)
    return RunRow(**base)


def seed(store: Store) -> None:
    rows = [
        # alpha, old build: three ok, one failed
        run(ts="2026-01-01T00:00:01Z", ttft_s=0.1, decode_tps=10.0, total_s=1.0),
        run(ts="2026-01-01T00:00:02Z", ttft_s=0.3, decode_tps=30.0, total_s=3.0),
        run(ts="2026-01-01T00:00:03Z", ttft_s=0.2, decode_tps=20.0, total_s=2.0),
        run(ts="2026-01-01T00:00:04Z", ok=False, error="HTTP 500: boom", ttft_s=9.0),
        # alpha, new build: two ok (median = mean), one failed
        run(
            ts="2026-01-02T00:00:01Z",
            git_sha="bbb2222",
            build_timestamp="2026-01-02T00:00:00Z",
            package_version="0.2.0",
            ttft_s=0.5,
            decode_tps=50.0,
            total_s=2.5,
            prompt_tokens_actual=128,
        ),
        run(
            ts="2026-01-02T00:00:02Z",
            git_sha="bbb2222",
            build_timestamp="2026-01-02T00:00:00Z",
            package_version="0.2.0",
            ttft_s=0.7,
            decode_tps=70.0,
            total_s=3.5,
            prompt_tokens_actual=132,
        ),
        run(
            ts="2026-01-02T00:00:03Z",
            git_sha="bbb2222",
            build_timestamp="2026-01-02T00:00:00Z",
            package_version="0.2.0",
            ok=False,
            error="x" * 900,
        ),
        # alpha, new build, the concurrency scenario with extra metrics
        run(
            ts="2026-01-02T00:01:00Z",
            git_sha="bbb2222",
            build_timestamp="2026-01-02T00:00:00Z",
            package_version="0.2.0",
            scenario_id="concurrency:4",
            ttft_s=0.9,
            decode_tps=200.0,
            total_s=5.0,
            extra={"streams": 4, "aggregate_tps": 200.0, "ttft_p50": 0.9, "ttft_p99": 1.4},
        ),
        # beta: an openai engine on the same hardware, same cell
        run(
            ts="2026-01-03T00:00:01Z",
            host="beta",
            hostname=None,
            gpu="CPU",
            git_sha="llama-b1",
            git_sha_long=None,
            build_timestamp=None,
            package_version="llama-b1",
            build_info={"version": "llama-b1"},
            harness="openai",
            quant=None,
            ttft_s=0.25,
            decode_tps=30.0,
            total_s=4.0,
        ),
    ]
    for r in rows:
        store.add_run(r)
