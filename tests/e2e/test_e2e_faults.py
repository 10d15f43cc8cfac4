"""Real faults under a real cortex and two real neurons serving the same model (issue 5, end to
end): kill -9 of a worker mid-stream, SIGKILL of a neuron (health, 503, restart), failover
with no request lost, and SIGTERM to cortex with streams in flight.

Streams are made slow and deterministic with the engine's test faults (HELEXA_TEST_FAULTS=1 in
the neurons' env): every request "samples" SCRIPT, one token per `step_delay_secs`.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from e2e_rig import API_KEY, Cortex, Neuron, Stack, copy_model, until

openai = pytest.importorskip("openai")

pytestmark = [pytest.mark.torch, pytest.mark.slow]

SLOW = "local/slow"
SCRIPT = "The quick brown fox jumps over the lazy dog. " * 8
POLL_SECS = 1.0
MSGS: list[Any] = [{"role": "user", "content": "hi"}]


class FaultStack(Stack):
    """Two neurons (`n1`, `n2`, fixed ports so they can come back) loading SLOW with test
    faults, and one cortex; `ensure` brings back whatever an earlier test killed."""

    spec: dict[str, Any]

    def by_name(self, name: str) -> Neuron:
        return next(n for n in self.neurons if n.name == name)

    def ensure(self, *names: str) -> None:
        started = [n for n in self.neurons if n.name in names and not n.running]
        for n in started:
            n.start()
        if not self.cortex.running:
            self.cortex.start()
        for n in started:
            n.wait_ready()

        async def load_all() -> None:
            await asyncio.gather(*(asyncio.to_thread(n.load, self.spec) for n in started))

        asyncio.run(load_all())  # the two loads overlap
        for name in names:
            n = self.by_name(name)
            until(lambda: n.status(SLOW) == "loaded", 60, f"{SLOW} loaded on {n.name}")  # noqa: B023
        want = {name: "loaded" for name in names}
        until(
            lambda: (
                self.cortex.running
                and {k: v for k, v in self.cortex.locations(SLOW).items() if k in names} == want
                and self.cortex.health()["nodes"]["healthy"] >= len(names)
            ),
            30,
            f"cortex to see {SLOW} loaded on {names}",
        )


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, tiny_dir: Path, model_copies: Path
) -> Iterator[FaultStack]:
    path = copy_model(tiny_dir, model_copies, "slow")
    root = tmp_path_factory.mktemp("faults")
    config = {"cpu_memory_mb": 8000, "admission": {"max_in_flight": 4, "max_queue_depth": 64}}
    neurons = [Neuron(name, root, config) for name in ("n1", "n2")]
    cortex = Cortex("cortex", root, neurons, gateway={"poll_interval_secs": POLL_SECS})
    s = FaultStack(neurons, cortex)
    s.spec = {
        "model_id": str(path),
        "test_faults": {"step_delay_secs": 0.02, "script_text": SCRIPT},
        "max_in_flight": 4,
        "max_queue_depth": 64,
    }
    try:
        s.ensure("n1", "n2")
        yield s
    except BaseException:
        print(s.failure_logs())
        raise
    finally:
        s.stop()


@pytest.fixture
def oai(stack: FaultStack) -> Iterator[Any]:
    with openai.OpenAI(
        base_url=stack.cortex.base,
        api_key=API_KEY,
        http_client=httpx.Client(trust_env=False, timeout=60),
        max_retries=0,
    ) as client:
        yield client


def aoai(stack: FaultStack) -> Any:
    return openai.AsyncOpenAI(
        base_url=stack.cortex.base,
        api_key=API_KEY,
        http_client=httpx.AsyncClient(trust_env=False, timeout=60),
        max_retries=0,
    )


def test_worker_kill_mid_stream_errors_fast_and_the_model_comes_back(
    stack: FaultStack, oai: Any
) -> None:
    stack.ensure("n1", "n2")
    with oai.chat.completions.with_streaming_response.create(
        model=SLOW, messages=MSGS, max_tokens=200, stream=True
    ) as resp:
        neuron = stack.by_name(resp.headers["x-helexa-node"])
        [pid] = neuron.workers()
        chunks = iter(resp.parse())
        next(chunks)
        next(chunks)  # a content delta: the worker is generating
        os.kill(pid, signal.SIGKILL)
        killed_at = time.monotonic()
        with pytest.raises(openai.APIError) as err:
            for _ in chunks:
                pass
        seen_after = time.monotonic() - killed_at
    assert seen_after < 1.0, f"the error event came {seen_after:.2f}s after the kill"
    assert isinstance(err.value.body, dict) and err.value.body["code"] == "worker_crashed"

    # the neuron restarts the worker with the same spec; the model serves again
    until(lambda: neuron.status(SLOW) == "loaded", 30, "the model to recover")
    info = neuron.models()[SLOW]
    assert info["restarts"] == 1
    assert neuron.workers() != [pid]
    r = neuron.client.post("/v1/chat/completions", json={"model": SLOW, "messages": MSGS})
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == SCRIPT
    until(
        lambda: stack.cortex.locations(SLOW).get(neuron.name) == "loaded",
        10,
        "cortex to see the model loaded again",
    )
    reply = oai.chat.completions.create(model=SLOW, messages=MSGS)
    assert reply.choices[0].message.content == SCRIPT


async def test_a_dead_neuron_loses_no_request(stack: FaultStack) -> None:
    await asyncio.to_thread(stack.ensure, "n1", "n2")
    cortex, victim = stack.cortex, stack.by_name("n2")
    before = cortex.metric("cortex_failovers_total", model=SLOW)

    def victim_busy() -> bool:
        models = victim.client.get("/health").json()["models"]
        return any(m["id"] == SLOW and m["in_flight"] + m["queue_depth"] > 0 for m in models)

    async with aoai(stack) as client:

        async def one() -> Any:
            return await client.chat.completions.with_raw_response.create(
                model=SLOW, messages=MSGS, max_tokens=5
            )

        tasks = [asyncio.create_task(one()) for _ in range(20)]
        await asyncio.to_thread(until, victim_busy, 10, "requests on n2")
        await asyncio.to_thread(victim.kill)
        replies = await asyncio.wait_for(asyncio.gather(*tasks), 60)
        after = [await one() for _ in range(5)]  # and straight after the kill, one by one
    texts = {r.parse().choices[0].message.content for r in replies + after}
    assert all(r.status_code == 200 for r in replies + after)
    assert len(texts) == 1 and SCRIPT.startswith(texts.pop() or "-")
    assert {r.headers["x-helexa-node"] for r in after} == {"n1"}
    assert cortex.metric("cortex_failovers_total", model=SLOW) > before


def test_a_killed_neuron_is_unhealthy_within_a_poll_then_503_then_resumes(
    stack: FaultStack,
) -> None:
    stack.ensure("n1")
    cortex, n1, n2 = stack.cortex, stack.by_name("n1"), stack.by_name("n2")
    if n2.running:
        n2.kill()
    until(lambda: cortex.health()["nodes"]["healthy"] == 1, 10, "n2 to be unhealthy")

    n1.kill()
    killed_at = time.monotonic()
    until(lambda: cortex.health()["nodes"]["healthy"] == 0, 5, "n1 to be unhealthy", step=0.02)
    took = time.monotonic() - killed_at
    assert took <= POLL_SECS + 0.5, f"marked unhealthy {took:.2f}s after the kill"
    assert cortex.metric("cortex_node_healthy", node="n1") == 0

    r = cortex.client.post("/v1/chat/completions", json={"model": SLOW, "messages": MSGS})
    assert r.status_code == 503, r.text
    assert int(r.headers["retry-after"]) >= 1
    assert r.json()["error"]["type"] == "api_error"

    stack.ensure("n1")  # the same port again; cortex's next poll finds it
    r = cortex.client.post("/v1/chat/completions", json={"model": SLOW, "messages": MSGS})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == SCRIPT
    assert r.headers["x-helexa-node"] == "n1"


async def test_sigterm_to_cortex_lets_streams_in_flight_finish(stack: FaultStack) -> None:
    await asyncio.to_thread(stack.ensure, "n1")
    cortex = stack.cortex
    async with aoai(stack) as client:
        ref = await client.chat.completions.create(model=SLOW, messages=MSGS, max_tokens=30)
        want = ref.choices[0].message.content
        started = 0
        all_started = asyncio.Event()

        async def stream() -> tuple[str, str | None]:
            nonlocal started
            text, finish, first = "", None, True
            s = await client.chat.completions.create(
                model=SLOW, messages=MSGS, max_tokens=30, stream=True
            )
            async for chunk in s:
                if first:
                    first = False
                    started += 1
                    if started == 3:
                        all_started.set()
                if chunk.choices:
                    text += chunk.choices[0].delta.content or ""
                    finish = chunk.choices[0].finish_reason or finish
            return text, finish

        tasks = [asyncio.create_task(stream()) for _ in range(3)]
        await asyncio.wait_for(all_started.wait(), 20)
        cortex.signal(signal.SIGTERM)
        results = await asyncio.wait_for(asyncio.gather(*tasks), 30)
    assert results == [(want, "length")] * 3
    assert cortex.proc is not None
    rc = await asyncio.to_thread(cortex.proc.wait, 20)
    assert rc == 0, cortex.log_tail()
