"""Prometheus metrics and the token observer behind them."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from helexa.cortex.observer import TAIL_CAP, TokenObserver, last_count_for
from rig.cortex_rig import NODE_TOKEN, Cortex, CortexFactory
from rig.fake_neuron import FakeNeuron, error_body, model_info

CHAT = [{"role": "user", "content": "hi"}]
MN = {"model": "test-model", "node": "mock-node"}


async def post(cortex: Cortex, path: str, body: dict[str, Any], **kw: Any) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as client:
        return await client.post(cortex.base + path, json=body, **kw)


async def scrape(cortex: Cortex) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=10) as client:
        r = await client.get(cortex.metrics_url + "/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    return {f.name: f for f in text_string_to_metric_families(r.text)}


# -- last_count_for -------------------------------------------------------------------------


def test_last_count_for_final_sse_usage_chunk() -> None:
    tail = (
        b'data: {"choices":[{"index":0,"delta":{"content":"x"}}]}\n\n'
        b'data: {"choices":[],"usage":{"prompt_tokens":225,"completion_tokens":42,'
        b'"total_tokens":267}}\n\n'
        b"data: [DONE]\n\n"
    )
    assert last_count_for(tail, b"prompt_tokens") == 225
    assert last_count_for(tail, b"completion_tokens") == 42


def test_last_count_for_spaced_json_body() -> None:
    body = b'{\n  "usage": {\n    "prompt_tokens" : 12,\n    "completion_tokens":\t 7\n  }\n}'
    assert last_count_for(body, b"prompt_tokens") == 12
    assert last_count_for(body, b"completion_tokens") == 7


def test_last_count_for_ignores_details_and_takes_the_last_match() -> None:
    tail = (
        b'{"usage":{"completion_tokens":5}}'
        b'{"usage":{"completion_tokens": 99,"completion_tokens_details":{"reasoning_tokens":3}}}'
    )
    assert last_count_for(tail, b"completion_tokens") == 99
    only_details = b'{"completion_tokens_details": {"reasoning_tokens": 3}}'
    assert last_count_for(only_details, b"completion_tokens") is None


@pytest.mark.parametrize(
    "tail",
    [
        b'{"usage":{"total_tokens":3}}',
        b'{"usage":{"prompt_tokens":null}}',
        b'{"usage":{"prompt_tokens": null, "x": 4}}',
        b'{"usage":{"prompt_tokens":"12"}}',
        b"",
    ],
)
def test_last_count_for_absent_or_null_gives_none(tail: bytes) -> None:
    assert last_count_for(tail, b"prompt_tokens") is None


def test_last_count_for_null_after_a_number_gives_the_number_before() -> None:
    """'The last match' is the last `"key": <digits>`; a trailing null is no match at all."""
    tail = b'{"prompt_tokens": 8}{"prompt_tokens": null}'
    assert last_count_for(tail, b"prompt_tokens") == 8


# -- TokenObserver --------------------------------------------------------------------------


def test_observer_emits_once_with_none_when_no_usage() -> None:
    seen: list[tuple[int | None, int | None]] = []
    obs = TokenObserver(0.0, True, lambda o, p, c: seen.append((p, c)))
    obs.feed(b'data: {"choices":[]}\n\n')
    obs.finish()
    obs.finish()
    assert seen == [(None, None)]  # no usage: accounting charges what it observed instead
    assert obs.frames == 1


def test_observer_responses_keys() -> None:
    seen: list[tuple[int, int]] = []
    obs = TokenObserver(0.0, True, lambda o, p, c: seen.append((p, c)), responses_keys=True)
    obs.feed(b'event: response.completed\ndata: {"usage":{"input_tokens":5,"output_tokens":6,')
    obs.feed(b'"prompt_tokens":99}}\n\n')
    obs.finish()
    assert seen == [(5, 6)]


def test_observer_tail_is_capped_keeping_the_newest() -> None:
    seen: list[tuple[int, int]] = []
    obs = TokenObserver(0.0, True, lambda o, p, c: seen.append((p, c)))
    obs.feed(b'{"prompt_tokens":1}')
    for _ in range(10):
        obs.feed(b"x" * (16 * 1024))
    obs.feed(b'{"prompt_tokens":2,"completion_tokens":3}')
    assert len(obs.tail) <= TAIL_CAP
    obs.finish()
    assert seen == [(2, 3)]


def test_observer_tokens_per_second_window() -> None:
    obs = TokenObserver(10.0, True, lambda o, p, c: None)
    obs.first_at, obs.last_at = 10.5, 12.5  # a 2 s window between first and last chunk
    assert obs.tokens_per_second(40) == pytest.approx(20.0)
    assert obs.ttft() == pytest.approx(0.5)
    obs.first_at, obs.last_at = 11.95, 12.0  # under 0.1 s: measured from the request start
    assert obs.tokens_per_second(40) == pytest.approx(20.0)
    assert obs.tokens_per_second(0) is None


# -- the gateway's metrics ------------------------------------------------------------------


async def test_one_chat_counts_request_and_duration(cortex: Cortex) -> None:
    r = await post(cortex, "/chat/completions", {"model": "test-model", "messages": CHAT})
    assert r.status_code == 200
    assert cortex.metric("cortex_requests_total", **MN) == 1
    assert cortex.metric("cortex_request_duration_seconds_count", **MN) == 1
    assert cortex.metric("cortex_request_errors_total", **MN) == 0
    assert cortex.metric("cortex_cold_starts_total", **MN) == 0
    assert cortex.metric("cortex_prompt_tokens_total", **MN) == 10
    assert cortex.metric("cortex_completion_tokens_total", **MN) == 5
    # Non-streaming replies have no TTFT.
    assert cortex.metric("cortex_time_to_first_token_seconds_count", **MN) == 0
    assert cortex.metric("cortex_model_in_flight", **MN) == 0
    families = await scrape(cortex)
    assert "cortex_requests" in families
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for s in families["cortex_requests"].samples
    }
    assert samples[("cortex_requests_total", (("model", "test-model"), ("node", "mock-node")))] == 1


async def test_stream_usage_gives_ttft_tps_and_token_counters(
    cortex: Cortex, fake: FakeNeuron
) -> None:
    fake.stream_usage = (225, 42)
    fake.stream_chunks = 3
    fake.stream_delay = 0.02
    r = await post(
        cortex, "/chat/completions", {"model": "test-model", "messages": CHAT, "stream": True}
    )
    assert r.status_code == 200 and r.text.endswith("data: [DONE]\n\n")
    assert cortex.metric("cortex_time_to_first_token_seconds_count", **MN) == 1
    assert cortex.metric("cortex_tokens_per_second_count", **MN) == 1
    assert cortex.metric("cortex_tokens_per_second_sum", **MN) > 0
    assert cortex.metric("cortex_prompt_tokens_total", **MN) >= 225
    assert cortex.metric("cortex_completion_tokens_total", **MN) >= 42
    assert cortex.metric("cortex_request_errors_total", **MN) == 0


async def test_responses_stream_counts_input_and_output_tokens(
    cortex: Cortex, fake: FakeNeuron
) -> None:
    fake.responses_usage = (31, 17)
    r = await post(cortex, "/responses", {"model": "test-model", "input": "hi", "stream": True})
    assert r.status_code == 200
    assert cortex.metric("cortex_prompt_tokens_total", **MN) == 31
    assert cortex.metric("cortex_completion_tokens_total", **MN) == 17
    assert cortex.metric("cortex_time_to_first_token_seconds_count", **MN) == 1


async def test_labels_use_the_resolved_id_never_the_alias(
    start_cortex: CortexFactory, fake: FakeNeuron
) -> None:
    cortex = await start_cortex(
        {"mock-node": fake}, models={"aliases": {"helexa/small": "test-model"}}
    )
    r = await post(cortex, "/chat/completions", {"model": "helexa/small", "messages": CHAT})
    assert r.status_code == 200
    assert cortex.metric("cortex_requests_total", **MN) == 1
    text = await scrape_text(cortex)
    assert "helexa/small" not in text


async def scrape_text(cortex: Cortex) -> str:
    async with httpx.AsyncClient(timeout=10) as client:
        return (await client.get(cortex.metrics_url + "/metrics")).text


async def test_upstream_5xx_counts_as_error_but_4xx_does_not(
    cortex: Cortex, fake: FakeNeuron
) -> None:
    fake.reply_override["/v1/chat/completions"] = (
        400,
        error_body("too long", "invalid_request_error", "context_length_exceeded"),
    )
    r = await post(cortex, "/chat/completions", {"model": "test-model", "messages": CHAT})
    assert r.status_code == 400
    assert cortex.metric("cortex_request_errors_total", **MN) == 0
    fake.reply_override["/v1/chat/completions"] = (
        503,
        error_body("not ready", "api_error", "model_not_ready"),
        {"Retry-After": "2"},
    )
    r = await post(cortex, "/chat/completions", {"model": "test-model", "messages": CHAT})
    assert r.status_code == 503
    assert cortex.metric("cortex_request_errors_total", **MN) == 1
    assert cortex.metric("cortex_requests_total", **MN) == 2
    # Passed-through upstream errors are not cortex rejections.
    assert cortex.metric("cortex_rejections_total", code="model_not_ready") == 0


async def test_rejections_counted_by_code(cortex: Cortex) -> None:
    r = await post(cortex, "/chat/completions", {"model": "nope/nope", "messages": CHAT})
    assert r.status_code == 404
    r = await post(cortex, "/chat/completions", {"messages": CHAT})
    assert r.status_code == 400
    assert cortex.metric("cortex_rejections_total", code="model_not_found") == 1
    assert cortex.metric("cortex_rejections_total", code="missing_model_field") == 1
    # A request that never routed is not a routed request.
    assert cortex.metric("cortex_requests_total", model="nope/nope", node="mock-node") == 0


async def test_spend_counters_per_key(start_cortex: CortexFactory, fake: FakeNeuron) -> None:
    keys = {"keys": [{"key": "sk-m", "account_id": "acct-1", "key_id": "key-1"}]}
    cortex = await start_cortex({"mock-node": fake}, entitlements=keys)
    for _ in range(3):
        r = await post(
            cortex,
            "/chat/completions",
            {"model": "test-model", "messages": CHAT},
            headers={"Authorization": "Bearer sk-m"},
        )
        assert r.status_code == 200
    ak = {"account": "acct-1", "key": "key-1"}
    assert cortex.metric("cortex_spend_tokens_total", **ak) == 45
    assert cortex.metric("cortex_spend_prompt_tokens_total", **ak) == 30
    assert cortex.metric("cortex_spend_completion_tokens_total", **ak) == 15
    assert "sk-m" not in await scrape_text(cortex)  # the secret is never a label


async def test_cold_load_and_eviction_metrics(start_cortex: CortexFactory) -> None:
    devices = [
        {
            "index": 0,
            "kind": "cpu",
            "name": "cpu",
            "vram_total_mb": 32000,
            "vram_used_mb": 20000,
            "vram_free_mb": 12000,
        }
    ]
    models = {"models": [{"id": "cat/model", "vram_mb": 16000}]}
    async with FakeNeuron(
        token=NODE_TOKEN, devices=devices, models=[model_info("test-model")]
    ) as fake:
        cortex = await start_cortex({"mock-node": fake}, models=models)
        r = await post(cortex, "/chat/completions", {"model": "cat/model", "messages": CHAT})
        assert r.status_code == 200, r.text
        assert r.headers["x-helexa-cold-start"] == "1"
        assert fake.count("/models/unload") == 1
    cat = {"model": "cat/model", "node": "mock-node"}
    assert cortex.metric("cortex_evictions_total", node="mock-node", model="test-model") == 1
    assert cortex.metric("cortex_node_lifecycle_cycles", node="mock-node") == 1
    assert cortex.metric("cortex_model_loads_total", outcome="success", **cat) == 1
    assert cortex.metric("cortex_load_duration_seconds_count", **cat) == 1
    assert cortex.metric("cortex_cold_starts_total", **cat) == 1
    assert cortex.metric("cortex_requests_total", **cat) == 1


async def test_failed_load_counts_failure(start_cortex: CortexFactory, fake: FakeNeuron) -> None:
    models = {"models": [{"id": "cat/model", "vram_mb": 1000}]}
    cortex = await start_cortex({"mock-node": fake}, models=models)
    fake.load_response = (500, error_body("secret detail", "api_error", "load_failed"))
    r = await post(cortex, "/chat/completions", {"model": "cat/model", "messages": CHAT})
    assert r.status_code == 502
    cat = {"model": "cat/model", "node": "mock-node"}
    assert cortex.metric("cortex_model_loads_total", outcome="failure", **cat) == 1
    assert cortex.metric("cortex_model_loads_total", outcome="success", **cat) == 0
    assert cortex.metric("cortex_load_duration_seconds_count", **cat) == 0
    assert cortex.metric("cortex_rejections_total", code="cold_load_failed") == 1


async def test_failover_metric(start_cortex: CortexFactory) -> None:
    async with FakeNeuron(token=NODE_TOKEN) as a, FakeNeuron(token=NODE_TOKEN) as b:
        a.fault = "close_before_headers"
        cortex = await start_cortex({"node-a": a, "node-b": b})
        r = await post(cortex, "/chat/completions", {"model": "test-model", "messages": CHAT})
    assert r.status_code == 200
    assert cortex.metric("cortex_failovers_total", model="test-model") == 1
    assert "cortex_failovers_total" in await scrape_text(cortex)


async def test_node_healthy_gauge_follows_health(cortex: Cortex, fake: FakeNeuron) -> None:
    assert cortex.metric("cortex_node_healthy", node="mock-node") == 1
    await fake.refuse()
    await cortex.poll()
    assert cortex.metric("cortex_node_healthy", node="mock-node") == 0
    await fake.start()
    await cortex.poll()
    assert cortex.metric("cortex_node_healthy", node="mock-node") == 1


async def test_node_healthy_is_zero_before_the_first_poll(
    start_cortex: CortexFactory, fake: FakeNeuron
) -> None:
    cortex = await start_cortex({"mock-node": fake}, poll=False)
    families = await scrape(cortex)
    samples = families["cortex_node_healthy"].samples
    assert [(s.labels, s.value) for s in samples] == [({"node": "mock-node"}, 0.0)]


async def test_in_flight_gauge_during_a_stream(cortex: Cortex, fake: FakeNeuron) -> None:
    fake.stream_chunks = 3
    fake.stream_delay = 0.05
    async with (
        httpx.AsyncClient(timeout=10) as client,
        client.stream(
            "POST",
            cortex.base + "/chat/completions",
            json={"model": "test-model", "messages": CHAT, "stream": True},
        ) as r,
    ):
        lines = r.aiter_lines()
        assert (await anext(lines)).startswith("data: ")
        assert cortex.metric("cortex_model_in_flight", **MN) == 1
        async for _ in lines:
            pass
    assert cortex.metric("cortex_model_in_flight", **MN) == 0


async def test_histogram_buckets_match_the_contract(cortex: Cortex, fake: FakeNeuron) -> None:
    fake.stream_usage = (5, 5)
    await post(
        cortex, "/chat/completions", {"model": "test-model", "messages": CHAT, "stream": True}
    )
    families = await scrape(cortex)

    def bounds(name: str) -> list[float]:
        return [
            float(s.labels["le"])
            for s in families[name].samples
            if s.name == name + "_bucket" and s.labels["le"] != "+Inf"
        ]

    durations = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300]
    assert bounds("cortex_request_duration_seconds") == durations
    assert bounds("cortex_time_to_first_token_seconds") == durations
    assert bounds("cortex_tokens_per_second") == [
        1,
        5,
        10,
        20,
        30,
        40,
        60,
        80,
        100,
        150,
        200,
        300,
        500,
    ]


async def test_metrics_only_on_the_metrics_listener(cortex: Cortex) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        api = await client.get(cortex.url + "/metrics")
        met = await client.get(cortex.metrics_url + "/metrics")
    assert api.status_code == 404
    assert api.headers["content-type"].startswith("application/json")
    assert api.json()["error"]["code"] == "unknown_route"
    assert api.json()["error"]["message"] == "no route for GET /metrics"
    assert met.status_code == 200
    assert "# TYPE cortex_requests_total counter" in met.text
    assert "# TYPE cortex_request_duration_seconds histogram" in met.text


async def test_metrics_listener_serves_nothing_else(cortex: Cortex) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        r = await client.get(cortex.metrics_url + "/v1/models")
    assert r.status_code == 404
