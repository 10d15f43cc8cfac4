"""A prompt too large for the model is refused by cortex at once (issue 11, item 1): over 32
bytes per token of the context the poll reported, 400 `context_length_exceeded` before any
reservation, routing or tokenization; `/v1/messages/count_tokens` goes through the same bound,
needs a key under `require_auth`, and is refused for a spent key without touching a node."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from helexa.wire.neuron import MAX_BYTES_PER_TOKEN
from rig.cortex_rig import NODE_TOKEN, Cortex, CortexFactory
from rig.fake_neuron import FakeNeuron, model_info

CONTEXT = 1000
KEY, SPENT = "sk-ok", "sk-spent"
KEYS = {
    "require_auth": True,
    "ledger_path": "",
    "keys": [
        {"key": KEY, "account_id": "ok"},
        {"key": SPENT, "account_id": "spent", "hard_cap": 0},
    ],
}


@pytest.fixture
async def small() -> Any:
    """A neuron whose test-model has a 1000-token context."""
    info = model_info("test-model", limit={"context": CONTEXT, "output": 256})
    async with FakeNeuron(token=NODE_TOKEN, models=[info]) as n:
        yield n


def chat(text: str) -> dict[str, Any]:
    return {
        "model": "test-model",
        "max_tokens": 16,
        "messages": [{"role": "user", "content": text}],
    }


async def post(cortex: Cortex, path: str, body: dict[str, Any], key: str | None = KEY) -> Any:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    async with httpx.AsyncClient(timeout=10) as client:
        return await client.post(cortex.url + path, json=body, headers=headers)


TOO_LONG = "9," * (CONTEXT * MAX_BYTES_PER_TOKEN // 2)  # just over the byte cap


@pytest.mark.parametrize(
    "path", ["/v1/chat/completions", "/v1/messages", "/v1/messages/count_tokens"]
)
async def test_a_body_over_the_byte_cap_is_refused_before_any_node_sees_it(
    start_cortex: CortexFactory, small: FakeNeuron, path: str
) -> None:
    cortex = await start_cortex({"mock-node": small}, entitlements=KEYS)
    r = await post(cortex, path, chat(TOO_LONG))
    assert r.status_code == 400
    err = r.json()["error"]
    if path.startswith("/v1/messages"):
        assert err["type"] == "invalid_request_error"
        assert err["message"].startswith("prompt is too long")
    else:
        assert err["code"] == "context_length_exceeded"
    assert small.count("/v1/chat/completions") == small.count("/tokenize") == 0
    snap = cortex.gw.auth.snapshot(cortex.gw.auth.resolve(KEY))
    assert (snap.spent, snap.reserved) == (0, 0)


async def test_a_prompt_under_the_cap_is_served(
    start_cortex: CortexFactory, small: FakeNeuron
) -> None:
    cortex = await start_cortex({"mock-node": small}, entitlements=KEYS)
    r = await post(cortex, "/v1/chat/completions", chat("hi " * 100))
    assert r.status_code == 200
    r = await post(cortex, "/v1/messages/count_tokens", chat("hi " * 100))
    assert r.status_code == 200
    assert r.json() == {"input_tokens": small.tokenize_count}


async def test_count_tokens_needs_a_key_under_require_auth(
    start_cortex: CortexFactory, small: FakeNeuron
) -> None:
    cortex = await start_cortex({"mock-node": small}, entitlements=KEYS)
    r = await post(cortex, "/v1/messages/count_tokens", chat("hi"), key=None)
    assert r.status_code == 401
    assert r.json()["error"]["type"] == "authentication_error"
    r = await post(cortex, "/v1/messages/count_tokens", chat("hi"), key="sk-unknown")
    assert r.status_code == 401
    assert small.count("/tokenize") == 0


async def test_count_tokens_is_refused_for_a_spent_key_without_reserving(
    start_cortex: CortexFactory, small: FakeNeuron
) -> None:
    cortex = await start_cortex({"mock-node": small}, entitlements=KEYS)
    spent = await post(cortex, "/v1/messages/count_tokens", chat("hi"), key=SPENT)
    inference = await post(cortex, "/v1/messages", chat("hi"), key=SPENT)
    assert spent.status_code == inference.status_code == 429  # as the reservation path answers
    assert spent.json()["error"]["type"] == inference.json()["error"]["type"]
    assert small.count("/tokenize") == 0
    snap = cortex.gw.auth.snapshot(cortex.gw.auth.resolve(SPENT))
    assert (snap.spent, snap.reserved) == (0, 0)
