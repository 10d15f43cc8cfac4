"""Catalogue cold-loads through a real cortex onto a real neuron (issue 5, end to end): one
load for 50 concurrent first requests, and LRU eviction that spares a pinned model when the
neuron's `cpu_memory_mb` cannot hold another."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from e2e_rig import API_KEY, Cortex, Neuron, Stack, copy_model, until

openai = pytest.importorskip("openai")

pytestmark = [pytest.mark.torch, pytest.mark.slow]

NODE = "np"
POLL_SECS = 1.0
PINNED, B, C, D = "local/pa", "local/pb", "local/pc", "local/pd"


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory,
    tiny_dir: Path,
    model_copies: Path,
    worker_rss_mb: int,
) -> Iterator[Stack]:
    """A neuron with room for three tiny models (pinned `pa` and `pb` pre-warmed), and a
    catalogue of four that each need one model's measured memory.

    With R the measured worker size, cpu_memory_mb = 3.5 R: two loaded leave 1.5 R free (the
    third fits), three leave 0.5 R (a fourth needs an eviction, which frees R).
    """
    r = worker_rss_mb
    paths = {m: copy_model(tiny_dir, model_copies, m.split("/")[1]) for m in (PINNED, B, C, D)}
    root = tmp_path_factory.mktemp("placement")
    neuron = Neuron(
        NODE,
        root,
        {
            "cpu_memory_mb": int(3.5 * r),
            "admission": {"max_in_flight": 4, "max_queue_depth": 64},
            "default_models": [{"model_id": str(paths[PINNED])}, {"model_id": str(paths[B])}],
        },
    )
    catalogue: dict[str, Any] = {
        "models": [
            {
                "id": m,
                "path": str(p),
                "vram_mb": r,
                **({"pinned_on": [NODE]} if m == PINNED else {}),
            }
            for m, p in paths.items()
        ]
    }
    cortex = Cortex(
        "cortex", root, [neuron], models=catalogue, gateway={"poll_interval_secs": POLL_SECS}
    )
    s = Stack([neuron], cortex)
    try:
        neuron.start()
        cortex.start()
        neuron.wait_ready()
        cortex.wait_healthy(1)
        until(
            lambda: (
                cortex.locations(PINNED) == {NODE: "loaded"}
                and cortex.locations(B) == {NODE: "loaded"}
            ),
            10,
            "cortex to see the pre-warmed models",
        )
        yield s
    except BaseException:
        print(s.failure_logs())
        raise
    finally:
        s.stop()


def chat(model: str, max_tokens: int = 2) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": max_tokens,
    }


async def test_cold_load_once_for_50_concurrent_first_requests(stack: Stack) -> None:
    neuron, cortex = stack.neuron, stack.cortex
    assert neuron.status(C) is None  # in the catalogue only: never loaded anywhere
    client = openai.AsyncOpenAI(
        base_url=cortex.base,
        api_key=API_KEY,
        http_client=httpx.AsyncClient(trust_env=False, timeout=120),
        max_retries=0,
    )
    async with client:

        async def one() -> Any:
            return await client.chat.completions.with_raw_response.create(**chat(C))

        replies = await asyncio.wait_for(asyncio.gather(*(one() for _ in range(50))), 90)
    assert len(replies) == 50
    for raw in replies:
        assert raw.status_code == 200
        assert raw.headers["x-helexa-cold-start"] == "1"
        assert raw.headers["x-helexa-node"] == NODE
        assert raw.parse().choices[0].message.content is not None
    assert neuron.metric("neuron_model_load_duration_seconds_count", model=C) == 1
    assert cortex.metric("cortex_model_loads_total", model=C, node=NODE, outcome="success") == 1
    assert cortex.metric("cortex_cold_starts_total", model=C, node=NODE) == 50
    assert cortex.metric("cortex_evictions_total") == 0  # three fit: nothing was evicted
    assert neuron.models()[C]["status"] == "loaded"

    # loaded now: the next request is no cold start
    r = cortex.client.post("/v1/chat/completions", json=chat(C))
    assert r.status_code == 200 and "x-helexa-cold-start" not in r.headers


def test_lru_is_evicted_and_the_pinned_model_stays(stack: Stack) -> None:
    neuron, cortex = stack.neuron, stack.cortex
    # C (if the test above ran, already loaded), then B: B is the most recently used of the
    # displaceable two, and the pinned model was never used through cortex at all
    for m in (C, B):
        r = cortex.client.post("/v1/chat/completions", json=chat(m))
        assert r.status_code == 200, r.text
    until(
        lambda: all(cortex.locations(m) == {NODE: "loaded"} for m in (PINNED, B, C)),
        10,
        "cortex to see three models loaded",
    )
    # A model counts as busy while the last polled /health showed it in flight: let a
    # poll pass with nothing in flight, or C would be spared for being busy, not for LRU.
    time.sleep(2 * POLL_SECS + 0.2)

    r = cortex.client.post("/v1/chat/completions", json=chat(D))
    assert r.status_code == 200, f"{r.text}\n{stack.failure_logs()}"
    assert r.headers["x-helexa-cold-start"] == "1"

    status = {m: info["status"] for m, info in neuron.models().items()}
    assert status == {PINNED: "loaded", B: "loaded", C: "unloaded", D: "loaded"}
    assert cortex.metric("cortex_evictions_total", node=NODE, model=C) == 1
    assert cortex.metric("cortex_evictions_total") == 1
    assert len(neuron.workers()) == 3
