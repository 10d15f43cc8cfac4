"""Fuzz every neuron route with 15,000 seeded hostile requests (issue 11): never a 5xx (but a
503 with Retry-After), always the OpenAI envelope, and no admission slot or queue place left
held; then 10,000 through a cortex in front of it. A real daemon on a loopback port, a fake
worker subprocess, the character tokenizer.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from daemon_rig import TOKEN, NeuronFactory, Rig
from daemon_rig import start_neuron as start_neuron  # the fixture

from rig.cortex_rig import CortexFactory
from rig.fuzz_cortex import KEYS, fuzz_cortex
from rig.fuzzgen import Route, cases, credentials, fixed, messages, openai_routes
from rig.fuzzrun import drive, settle
from rig.net import free_port

SEED = 1111
COUNT = 15000
SERVED = "local/m"


def load_routes(model_dir: Path) -> list[Route]:
    odd_ids = ("", "../x", "a/b/c", "org/./x", "/no/such/dir", "a" * 600, "x\x00y", "local/m")
    loaded = str(model_dir)

    def model(rng: random.Random) -> Any:
        return SERVED if rng.random() < 0.8 else rng.choice(odd_ids)

    def load(rng: random.Random) -> dict[str, Any]:
        spec: dict[str, Any] = {"model_id": loaded if rng.random() < 0.5 else rng.choice(odd_ids)}
        if rng.random() < 0.5:
            spec[rng.choice(("max_in_flight", "max_queue_depth", "max_wait_secs"))] = rng.choice(
                (0, -1, 1, 2**40, 0.5, "1", None)
            )
        if rng.random() < 0.3:
            spec[rng.choice(("quant", "harness", "devices", "tensor_parallel"))] = rng.choice(
                ("int3", "torch", [0], [7], 2, 0, "")
            )
        return spec

    def tokenize(rng: random.Random) -> dict[str, Any]:
        if rng.random() < 0.5:
            return {"model": model(rng), "messages": messages(rng)}
        return {"model": model(rng), "prompt": "hi"}

    return [
        *openai_routes(model),
        Route("POST", fixed("/tokenize"), tokenize),
        Route("POST", fixed("/models/load"), load),
        Route("POST", fixed("/models/unload"), lambda r: {"model_id": r.choice(odd_ids[:-1])}),
        Route(
            "GET",
            lambda r: r.choice(("/health", "/version", "/discovery", "/models", "/metrics")),
            lambda r: None,
        ),
        Route(
            "GET",
            lambda r: f"/models/{r.choice((SERVED, 'nope', '%2e%2e', 'a' * 300))}/endpoint",
            lambda r: None,
        ),
    ]


def held(rig: Rig) -> list[str]:
    """What is still held: admission slots and queue places per model, the drain count, the
    per-principal counts and the tokenizer's slots."""
    out = [
        f"{rec.id}: {rec.admission.in_flight} in flight, {rec.admission.queue_depth} queued"
        for rec in rig.registry.records.values()
        if rec.admission.in_flight or rec.admission.queue_depth
    ]
    n = rig.neuron
    if n.in_flight:
        out.append(f"{n.in_flight} requests counted in flight")
    out += [f"{who}: {k} held" for who, k in n.principals.counts.items()]
    if n.tokenize.running or n.tokenize.waiting:
        out.append(f"tokenizer: {n.tokenize.running} running, {n.tokenize.waiting} waiting")
    return out


@pytest.fixture
async def rig(start_neuron: NeuronFactory, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Rig:
    """A neuron serving local/m; hub ids fail here, fast, without the network (offline, and
    every source on a closed loopback port)."""
    closed = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_ENDPOINT", closed)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    rig = await start_neuron(sources={"helexa": closed}, admission={"max_in_flight": 2})
    assert (await rig.load(rig.model("m"))).status_code == 200
    return rig


async def test_fuzz_every_neuron_route(rig: Rig) -> None:
    url = urlsplit(rig.url)
    assert url.hostname is not None and url.port is not None
    todo = cases(random.Random(SEED), load_routes(rig.root / "m"), credentials([TOKEN]), COUNT)
    result = await drive(url.hostname, url.port, todo)
    assert result.sent == COUNT
    assert not result.failures, result.report()
    assert await settle(lambda: held(rig)) == []
    assert result.statuses.get(200, 0) > COUNT * 0.1, result.statuses


async def test_fuzz_cortex_in_front_of_this_neuron(rig: Rig, start_cortex: CortexFactory) -> None:
    """The cortex fuzz through to a real daemon: the neuron's refusals reach clients in the
    route's envelope (Anthropic ones translated), and neither side keeps anything held."""
    cortex = await start_cortex({"node": rig.url}, entitlements=KEYS)
    await fuzz_cortex(cortex, SERVED, "node", count=10000, seed=SEED + 1)
    assert await settle(lambda: held(rig)) == []
