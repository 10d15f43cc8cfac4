"""Target clients against real loopback servers: the fake neuron and a fake OpenAI engine."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from bench_rig import FakeOpenAI

from helexa.bench.targets import (
    NeuronTarget,
    OpenAITarget,
    TargetError,
    gpu_label,
    make_target,
)
from helexa.config.bench import Target as TargetConfig
from helexa.wire.neuron import Discovery
from rig.fake_neuron import FakeNeuron, default_discovery, model_info

TOKEN = "node-secret"


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
async def neuron() -> AsyncIterator[FakeNeuron]:
    fake = FakeNeuron(token=TOKEN)
    async with fake:
        yield fake


def test_gpu_label_groups_devices_and_strips_vendor() -> None:
    disc = Discovery.model_validate(
        {
            "devices": [
                {"index": 0, "kind": "cuda", "name": "NVIDIA GeForce RTX 5090"},
                {"index": 1, "kind": "cuda", "name": "NVIDIA GeForce RTX 5090"},
                {"index": 2, "kind": "cuda", "name": "NVIDIA H100 80GB HBM3"},
            ]
        }
    )
    assert gpu_label(disc) == "2× RTX 5090 + 1× NVIDIA H100 80GB HBM3"
    assert gpu_label(Discovery.model_validate(default_discovery())) == "CPU"
    assert gpu_label(Discovery()) is None


async def test_neuron_probe_reads_build_warm_models_and_discovery(
    neuron: FakeNeuron, session: aiohttp.ClientSession
) -> None:
    neuron.version = {"package_version": "0.3.0", "git_sha": "abc1234", "git_dirty": True}
    neuron.models = [
        model_info("warm", quant="q8"),
        model_info("cold", status="unloaded"),
        model_info("busy", status="loading"),
    ]
    target = NeuronTarget("n1", neuron.url, session=session, token=TOKEN)
    info = await target.probe()
    assert info.build.git_sha == "abc1234" and info.build.git_dirty
    assert '"package_version":"0.3.0"' in info.build_json
    assert [(m.id, m.harness, m.quant) for m in info.models] == [("warm", "torch", "q8")]
    assert (info.hostname, info.gpu) == ("mock-node", "CPU")
    assert neuron.last("/models").headers["authorization"] == f"Bearer {TOKEN}"


async def test_configured_gpu_label_wins(
    neuron: FakeNeuron, session: aiohttp.ClientSession
) -> None:
    target = NeuronTarget("n1", neuron.url, session=session, token=TOKEN, gpu="2× RTX 5090")
    assert (await target.probe()).gpu == "2× RTX 5090"


async def test_unreachable_or_unauthorised_neuron_is_a_target_error(
    neuron: FakeNeuron, session: aiohttp.ClientSession
) -> None:
    bad_token = NeuronTarget("n1", neuron.url, session=session, token="wrong")
    with pytest.raises(TargetError, match="invalid_node_token"):
        await bad_token.probe()
    await neuron.refuse()
    down = NeuronTarget("n1", neuron.url, session=session, token=TOKEN)
    with pytest.raises(TargetError, match="unreachable"):
        await down.probe()


async def test_stream_chat_measures_ttft_decode_and_usage(
    neuron: FakeNeuron, session: aiohttp.ClientSession
) -> None:
    neuron.stream_chunks, neuron.stream_delay, neuron.stream_usage = 4, 0.05, (33, 4)
    target = NeuronTarget("n1", neuron.url, session=session, token=TOKEN)
    res = await target.stream_chat({"model": "test-model", "messages": [], "max_tokens": 4})
    assert res.ok and res.error is None
    assert (res.prompt_tokens, res.completion_tokens) == (33, 4)
    assert res.ttft_s is not None and 0.04 < res.ttft_s < 1
    # 3 decode intervals of ~0.05 s → about 20 tok/s
    assert res.decode_tps is not None and 10 < res.decode_tps < 25
    assert res.total_s is not None and res.total_s >= res.ttft_s
    sent = neuron.last("/v1/chat/completions").json
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}


async def test_stream_chat_failures_are_results_not_exceptions(
    neuron: FakeNeuron, session: aiohttp.ClientSession
) -> None:
    target = NeuronTarget("n1", neuron.url, session=session, token=TOKEN, timeout=0.5)
    body = {"model": "test-model", "messages": []}

    neuron.stream_usage = None
    res = await target.stream_chat(body)
    assert not res.ok and res.error == "stream carried no usage chunk"

    neuron.reply_override["/v1/chat/completions"] = (
        500,
        {"error": {"message": "x" * 2000, "type": "api_error", "code": "internal_error"}},
    )
    res = await target.stream_chat(body)
    assert not res.ok and res.error is not None
    assert res.error.startswith("HTTP 500: internal_error") and len(res.error) <= 500

    neuron.reply_override.clear()
    neuron.fault, neuron.header_delay = "delay_headers", 5
    res = await target.stream_chat(body)
    assert not res.ok and res.error == "timeout"


async def test_tokenize_count_uses_neuron_tokenizer(
    neuron: FakeNeuron, session: aiohttp.ClientSession
) -> None:
    neuron.tokenize_count = 17
    target = NeuronTarget("n1", neuron.url, session=session, token=TOKEN)
    msgs = [{"role": "user", "content": "hi"}]
    assert await target.tokenize_count("test-model", msgs) == 17
    assert neuron.last("/tokenize").json == {"model": "test-model", "messages": msgs}
    neuron.reply_override["/tokenize"] = (404, {"error": {"message": "no", "code": "x"}})
    assert await target.tokenize_count("test-model", msgs) is None


async def test_openai_target_models_from_server_or_config(session: aiohttp.ClientSession) -> None:
    engine = await FakeOpenAI(models=["a", "b"]).start()
    try:
        listed = OpenAITarget("llama", engine.url, session=session, version="b4567")
        info = await listed.probe()
        assert [m.id for m in info.models] == ["a", "b"]
        assert {m.harness for m in info.models} == {"openai"}
        assert info.build.git_sha == "b4567" and info.hostname is None
        assert await listed.tokenize_count("a", []) is None

        cfg = TargetConfig(
            name="vllm", endpoint=engine.url, kind="openai", models=["only"], api_key="sk-1"
        )
        target = make_target(cfg, session, 10)
        info = await target.probe()
        assert [m.id for m in info.models] == ["only"] and info.build.git_sha == "unknown"
        res = await target.stream_chat({"model": "only", "messages": []})
        assert res.ok and res.completion_tokens == engine.chunks
        assert engine.auth[-1] == "Bearer sk-1"
    finally:
        await engine.stop()
