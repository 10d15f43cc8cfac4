"""The three providers against a real SSE server: deltas, reasoning, native tool calls, request
shape (system/instructions, max_tokens, auth headers), and endpoint failures as ProviderError."""

from __future__ import annotations

import pytest
from scripted_llm import ScriptedLLM, Turn, collect

from helexa.acp.history import Message, ToolCall
from helexa.acp.providers import WIRE_APIS, Delta, Done, ProviderError, make_provider
from helexa.acp.tools import SPECS
from rig.net import free_port

HISTORY = [
    Message("system", "be brief"),
    Message("user", "hi"),
    Message("assistant", "reading", tool_calls=[ToolCall("c0", "read_file", '{"path": "a"}')]),
    Message("tool", "file text", tool_call_id="c0", name="read_file"),
]


@pytest.mark.parametrize("wire", list(WIRE_APIS))
async def test_text_and_reasoning_stream(wire: str) -> None:
    async with ScriptedLLM([Turn(text="Hello world", reasoning="thinking hard")]) as llm:
        items = await collect(
            make_provider(wire, llm.base_url, "k").stream(HISTORY, SPECS, "m", 64)
        )
    deltas = [i for i in items if isinstance(i, Delta)]
    assert "".join(d.text for d in deltas if not d.thought) == "Hello world"
    assert "".join(d.text for d in deltas if d.thought) == "thinking hard"
    assert len(deltas) == 4  # streamed, not buffered
    done = items[-1]
    assert isinstance(done, Done) and done.stop == "end_turn"
    assert done.message.content == "Hello world" and done.message.reasoning == "thinking hard"


@pytest.mark.parametrize("wire", list(WIRE_APIS))
async def test_native_tool_calls(wire: str) -> None:
    calls = [("call_a", "read_file", {"path": "x.py"}), ("call_b", "bash", {"command": "ls"})]
    async with ScriptedLLM([Turn(text="let me look", calls=calls)]) as llm:
        items = await collect(make_provider(wire, llm.base_url).stream(HISTORY, SPECS, "m", None))
    done = items[-1]
    assert isinstance(done, Done) and done.stop == "tool_use"
    got = [(c.id, c.name, c.arguments) for c in done.message.tool_calls]
    assert got == [
        ("call_a", "read_file", '{"path": "x.py"}'),
        ("call_b", "bash", '{"command": "ls"}'),
    ]


@pytest.mark.parametrize(
    ("wire", "stop"), [(w, s) for w in WIRE_APIS for s in ("max_tokens", "refusal")]
)
async def test_stop_reasons(wire: str, stop: str) -> None:
    async with ScriptedLLM([Turn(text="cut", stop=stop)]) as llm:
        items = await collect(make_provider(wire, llm.base_url).stream(HISTORY, SPECS, "m", 5))
    assert items[-1].stop == stop


async def test_chat_request_shape() -> None:
    async with ScriptedLLM([Turn(text="ok")]) as llm:
        await collect(
            make_provider("openai-chat", llm.base_url, "sk-1").stream(HISTORY, SPECS, "m", 99)
        )
    seen = llm.seen[0]
    assert seen.path == "/v1/chat/completions"
    assert seen.headers["Authorization"] == "Bearer sk-1"
    body = seen.body
    assert body["model"] == "m" and body["stream"] is True and body["max_tokens"] == 99
    assert body["messages"][0] == {"role": "system", "content": "be brief"}
    assert body["messages"][2]["tool_calls"][0]["function"] == {
        "name": "read_file",
        "arguments": '{"path": "a"}',
    }
    assert body["messages"][3] == {"role": "tool", "tool_call_id": "c0", "content": "file text"}
    assert [t["function"]["name"] for t in body["tools"]] == [s.name for s in SPECS]


async def test_responses_request_shape() -> None:
    async with ScriptedLLM([Turn(text="ok")]) as llm:
        provider = make_provider("openai-responses", llm.base_url, "sk-2")
        await collect(provider.stream(HISTORY, SPECS, "m", 77))
    body = llm.seen[0].body
    assert llm.seen[0].path == "/v1/responses"
    assert body["instructions"] == "be brief"
    assert body["max_output_tokens"] == 77 and "max_tokens" not in body
    assert all(i.get("role") != "system" for i in body["input"])
    assert {
        "type": "function_call",
        "call_id": "c0",
        "name": "read_file",
        "arguments": '{"path": "a"}',
    } in body["input"]
    assert {"type": "function_call_output", "call_id": "c0", "output": "file text"} in body["input"]
    assert body["tools"][0]["type"] == "function" and body["tools"][0]["name"] == "read_file"


async def test_anthropic_request_shape() -> None:
    async with ScriptedLLM([Turn(text="ok")]) as llm:
        provider = make_provider("anthropic-messages", llm.base_url, "sk-3")
        await collect(provider.stream(HISTORY, SPECS, "m", 55))
    seen = llm.seen[0]
    assert seen.path == "/v1/messages"
    assert seen.headers["x-api-key"] == "sk-3"
    assert seen.headers["anthropic-version"] == "2023-06-01"
    assert "Authorization" not in seen.headers
    body = seen.body
    assert body["system"] == "be brief" and body["max_tokens"] == 55
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    assert body["messages"][1]["content"][1] == {
        "type": "tool_use",
        "id": "c0",
        "name": "read_file",
        "input": {"path": "a"},
    }
    assert body["messages"][2]["content"] == [
        {"type": "tool_result", "tool_use_id": "c0", "content": "file text"}
    ]
    assert body["tools"][0]["input_schema"]["required"] == ["path"]


IMAGE = "data:image/png;base64,iVBORw0KGgo="


@pytest.mark.parametrize(
    ("wire", "part"),
    [
        ("openai-chat", {"type": "image_url", "image_url": {"url": IMAGE}}),
        ("openai-responses", {"type": "input_image", "image_url": IMAGE}),
        (
            "anthropic-messages",
            {
                "type": "image",
                "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="},
            },
        ),
    ],
)
async def test_user_images(wire: str, part: dict[str, object]) -> None:
    history = [Message("user", "what is this?", images=[IMAGE])]
    async with ScriptedLLM([Turn(text="a dot")]) as llm:
        await collect(make_provider(wire, llm.base_url).stream(history, [], "m", 10))
    body = llm.seen[0].body
    (msg,) = body.get("messages") or body["input"]
    assert msg["role"] == "user" and msg["content"][-1] == part
    assert "tools" not in body


@pytest.mark.parametrize("wire", list(WIRE_APIS))
async def test_endpoint_down(wire: str) -> None:
    provider = make_provider(wire, f"http://127.0.0.1:{free_port()}/v1")
    with pytest.raises(ProviderError, match=r"127\.0\.0\.1"):
        await collect(provider.stream(HISTORY, SPECS, "m", None))


@pytest.mark.parametrize("wire", list(WIRE_APIS))
async def test_http_error_carries_the_message(wire: str) -> None:
    async with ScriptedLLM([Turn(status=500)]) as llm:
        with pytest.raises(ProviderError, match="HTTP 500: scripted failure 500"):
            await collect(make_provider(wire, llm.base_url).stream(HISTORY, SPECS, "m", None))


@pytest.mark.parametrize("wire", list(WIRE_APIS))
async def test_stream_closed_mid_reply(wire: str) -> None:
    async with ScriptedLLM([Turn(text="partial answer", drop=True)]) as llm:
        with pytest.raises(ProviderError):
            await collect(make_provider(wire, llm.base_url).stream(HISTORY, SPECS, "m", None))


@pytest.mark.parametrize(
    "frame",
    [b'data: {"choices": [{"delta": "text"}]}\n\n', b"data: [1, 2]\n\n", b"data: {bad\n\n"],
)
async def test_malformed_frames(frame: bytes) -> None:
    async with ScriptedLLM([Turn(raw=[frame])]) as llm:
        with pytest.raises(ProviderError, match="the stream sent a frame"):
            await collect(make_provider("openai-chat", llm.base_url).stream([], SPECS, "m", None))


async def test_silence_past_the_timeout() -> None:
    async with ScriptedLLM([Turn(text="stalls here", hang=True)]) as llm:
        provider = make_provider("openai-chat", llm.base_url, timeout_s=0.2)
        with pytest.raises(ProviderError, match=r"nothing received for 0\.2 s"):
            await collect(provider.stream(HISTORY, SPECS, "m", None))


def test_unknown_wire_api() -> None:
    with pytest.raises(ValueError, match="unknown wire_api 'grpc'"):
        make_provider("grpc", "http://x/v1")
