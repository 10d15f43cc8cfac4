"""Claude-style clients through cortex: the official anthropic SDK against cortex + a neuron."""

from __future__ import annotations

from typing import Any

import anthropic
import pytest

from rig.anthropic_types import check_reply
from rig.cortex_rig import CortexFactory
from rig.fake_neuron import (
    FakeNeuron,
    content_delta,
    finish_chunk,
    reasoning_delta,
    tool_call_args,
    tool_call_head,
)

KEYS = {"keys": [{"key": "sk-ant", "account_id": "acct"}]}


async def typed_reply(r: Any) -> None:
    """Every reply checked against the SDK's own types, strictly (the SDK itself is lax)."""
    await r.aread()  # buffered: the SDK still streams it from memory
    check_reply(
        r.url.raw_path.decode(), r.status_code, r.headers.get("content-type", ""), r.content
    )


@pytest.fixture
async def client(start_cortex: CortexFactory, fake: FakeNeuron) -> anthropic.AsyncAnthropic:
    cortex = await start_cortex({"mock-node": fake}, entitlements=KEYS)
    http = anthropic.DefaultAsyncHttpxClient(event_hooks={"response": [typed_reply]})
    return anthropic.AsyncAnthropic(
        base_url=cortex.url, api_key="sk-ant", max_retries=0, http_client=http
    )


async def test_create_round_trip(client: anthropic.AsyncAnthropic) -> None:
    msg = await client.messages.create(
        model="test-model", max_tokens=64, messages=[{"role": "user", "content": "hi"}]
    )
    assert msg.id.startswith("msg_")
    assert msg.content[0].type == "text" and msg.content[0].text == "Hello from mock backend"
    assert msg.stop_reason == "end_turn"
    assert (msg.usage.input_tokens, msg.usage.output_tokens) == (10, 5)


async def test_stream_thinking_text_and_tool_use(
    client: anthropic.AsyncAnthropic, fake: FakeNeuron
) -> None:
    fake.stream_script = [
        {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
        reasoning_delta("Need the "),
        reasoning_delta("file."),
        content_delta("Reading it."),
        tool_call_head(0, "Read", "call_abc"),
        tool_call_args(0, '{"path":'),
        tool_call_args(0, '"/etc/hosts"}'),
        finish_chunk("tool_calls"),
    ]
    fake.stream_usage = (31, 24)
    async with client.messages.stream(
        model="test-model",
        max_tokens=64,
        messages=[{"role": "user", "content": "read /etc/hosts"}],
        tools=[{"name": "Read", "input_schema": {"type": "object"}}],
    ) as stream:
        final = await stream.get_final_message()
    kinds = [b.type for b in final.content]
    assert kinds == ["thinking", "text", "tool_use"]
    assert final.content[0].thinking == "Need the file."
    assert final.content[2].input == {"path": "/etc/hosts"}
    assert final.content[2].id == "call_abc"
    assert final.stop_reason == "tool_use"
    assert final.usage.output_tokens == 24


async def test_count_tokens(client: anthropic.AsyncAnthropic, fake: FakeNeuron) -> None:
    fake.tokenize_count = 77
    res = await client.messages.count_tokens(
        model="test-model", messages=[{"role": "user", "content": "hi"}]
    )
    assert res.input_tokens == 77
    assert fake.count("/models/load") == 0


async def test_unknown_model_is_typed_not_found(client: anthropic.AsyncAnthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as exc:
        await client.messages.create(
            model="nope/nope", max_tokens=8, messages=[{"role": "user", "content": "hi"}]
        )
    assert exc.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]


async def test_claude_code_shaped_request_through_the_beta_client(
    client: anthropic.AsyncAnthropic, fake: FakeNeuron
) -> None:
    """What Claude Code sends: `anthropic-beta` flags, a system message after the user turn,
    adaptive thinking, an effort, context management, metadata and a max_tokens far above a
    small model's output limit."""
    fake.stream_script = [content_delta("ok"), finish_chunk("stop")]
    async with client.beta.messages.stream(
        model="test-model",
        max_tokens=128000,
        betas=["claude-code-20250219", "context-management-2025-06-27", "effort-2025-11-24"],
        system=[{"type": "text", "text": "Top.", "cache_control": {"type": "ephemeral"}}],
        messages=[
            {"role": "user", "content": "hi"},
            {"role": "system", "content": [{"type": "text", "text": "# Environment"}]},  # type: ignore[list-item]
        ],
        thinking={"type": "adaptive", "display": "summarized"},  # type: ignore[typeddict-item]
        output_config={"effort": "low"},
        context_management={"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
        metadata={"user_id": "u-1"},
    ) as stream:
        final = await stream.get_final_message()
    assert [b.type for b in final.content] == ["text"]
    sent = fake.last("/v1/chat/completions")
    assert "anthropic-beta" not in sent.headers
    chat = sent.json
    assert [m["role"] for m in chat["messages"]] == ["system", "user", "system"]
    # A keyed request reserves (and forwards) at most the model's output limit: here the fake
    # node's advertised max_output_tokens, as the model reports no limit of its own.
    assert chat["max_tokens"] == 8192
    assert chat["chat_template_kwargs"] == {"enable_thinking": False}  # effort "low"
    for dropped in ("metadata", "context_management", "output_config", "thinking"):
        assert dropped not in chat
    counted = await client.beta.messages.count_tokens(
        model="test-model",
        betas=["claude-code-20250219"],
        messages=[{"role": "user", "content": "hi"}, {"role": "system", "content": "S"}],  # type: ignore[list-item]
        output_config={"effort": "high"},
    )
    assert counted.input_tokens == fake.tokenize_count
    tokenized = fake.last("/tokenize").json
    assert [m["role"] for m in tokenized["messages"]] == ["user", "system"]
    assert tokenized["chat_template_kwargs"] == {"enable_thinking": True}
