"""Scenarios against loopback servers: chat sizing, concurrency aggregates, cold load."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from bench_rig import FakeOpenAI

from helexa.bench.scenarios import (
    NO_THINK,
    ChatScenario,
    ColdLoadScenario,
    ConcurrencyScenario,
    PromptBuilder,
    build_scenarios,
    percentile,
)
from helexa.bench.targets import NeuronTarget, OpenAITarget, Target
from helexa.config.bench import Scenarios
from rig.fake_neuron import FakeNeuron


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
async def engine() -> AsyncIterator[FakeOpenAI]:
    fake = await FakeOpenAI().start()
    yield fake
    await fake.stop()


class ThreeCharTarget(Target):
    """A target whose tokenizer counts one token per 3 characters (so 4 chars/token is off)."""

    def __init__(self) -> None:
        self.name = "stub"
        self.calls = 0

    async def tokenize_count(self, model: str, messages: list[dict[str, Any]]) -> int | None:
        self.calls += 1
        return len(messages[0]["content"]) // 3


def test_registry_builds_the_configured_scenarios_cold_load_last() -> None:
    cfg = Scenarios(prompt_sizes=[128, 4096], concurrency=[2, 8], cold_load=True)
    ids = [s.id for s in build_scenarios(cfg)]
    assert ids == ["chat:128", "chat:4096", "concurrency:2", "concurrency:8", "cold_load"]
    no_cold = Scenarios(prompt_sizes=[64], concurrency=[], cold_load=False)
    assert [s.id for s in build_scenarios(no_cold)] == ["chat:64"]


def test_percentile_is_nearest_rank() -> None:
    assert percentile([3.0, 1.0, 2.0, 4.0], 50) == 2.0
    assert percentile([3.0, 1.0, 2.0, 4.0], 99) == 4.0
    assert percentile([5.0], 99) == 5.0


async def test_prompt_is_sized_with_the_target_tokenizer_and_cached() -> None:
    target = ThreeCharTarget()
    prompts = PromptBuilder()
    msgs = await prompts.messages(target, "m", 1000)
    text = msgs[0]["content"]
    assert text.endswith(NO_THINK)
    assert abs(len(text) // 3 - 1000) <= 20
    calls = target.calls
    assert await prompts.messages(target, "m", 1000) == msgs and target.calls == calls


async def test_prompt_falls_back_to_four_chars_per_token(
    engine: FakeOpenAI, session: aiohttp.ClientSession
) -> None:
    target = OpenAITarget("e", engine.url, session=session)
    text = (await PromptBuilder().messages(target, "m", 500))[0]["content"]
    assert text.endswith(NO_THINK) and abs(len(text) - 2000) < 20


async def test_chat_scenario_sends_temperature_zero_and_max_tokens(
    engine: FakeOpenAI, session: aiohttp.ClientSession
) -> None:
    scen = ChatScenario(128, 64, PromptBuilder())
    res = await scen.run(OpenAITarget("e", engine.url, session=session), "llama-3b")
    assert res.ok and res.max_tokens == 64 and res.completion_tokens == engine.chunks
    assert res.prompt_tokens_actual == engine.prompt_tokens and res.decode_tps is not None
    body = engine.bodies[-1]
    assert (body["temperature"], body["max_tokens"], body["stream"]) == (0, 64, True)
    assert body["messages"][0]["content"].endswith("/no_think")


async def test_concurrency_runs_n_parallel_streams_and_aggregates(
    engine: FakeOpenAI, session: aiohttp.ClientSession
) -> None:
    engine.chunks, engine.stream_delay = 10, 0.02
    scen = ConcurrencyScenario(4, 16, PromptBuilder())
    assert (scen.id, scen.prompt_size_approx) == ("concurrency:4", 128)
    res = await scen.run(OpenAITarget("e", engine.url, session=session), "llama-3b")
    assert res.ok and engine.peak == 4
    extra = res.extra
    assert extra is not None and extra["streams"] == 4 and extra["streams_ok"] == 4
    assert res.completion_tokens == 40
    assert res.decode_tps == extra["aggregate_tps"]
    assert res.total_s is not None and extra["aggregate_tps"] == pytest.approx(40 / res.total_s)
    assert res.ttft_s == extra["ttft_p50"] and extra["ttft_p50"] <= extra["ttft_p99"]

    engine.status = 503
    failed = await scen.run(OpenAITarget("e", engine.url, session=session), "llama-3b")
    assert not failed.ok and failed.error is not None
    assert failed.error.startswith("4/4 streams failed: HTTP 503")


async def test_cold_load_unloads_then_times_load_and_first_token(
    session: aiohttp.ClientSession,
) -> None:
    async with FakeNeuron() as neuron:
        neuron.load_delay, neuron.stream_delay = 0.2, 0.01
        target = NeuronTarget("n", neuron.url, session=session)
        scen = ColdLoadScenario(256, PromptBuilder())
        assert scen.applies_to(target)
        assert not scen.applies_to(OpenAITarget("e", neuron.url, session=session))
        res = await scen.run(target, "test-model")
        assert res.ok, res.error
        assert res.extra is not None and res.extra["load_s"] >= 0.2
        assert res.ttft_s is not None and res.ttft_s >= res.extra["load_s"]
        paths = [r.path for r in neuron.requests]
        assert paths.index("/models/unload") < paths.index("/models/load")
        assert paths.index("/models/load") < paths.index("/v1/chat/completions")
        assert neuron.last("/models/load").json == {"model_id": "test-model"}
        assert neuron.model("test-model")["status"] == "loaded"  # type: ignore[index]

        neuron.load_response = (500, {"error": {"message": "oom", "code": "load_failed"}})
        res = await scen.run(target, "test-model")
        assert not res.ok and res.error is not None and "load failed" in res.error
