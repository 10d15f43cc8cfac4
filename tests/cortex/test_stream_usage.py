"""Issue 9: the usage chunk reaches the client only when it asked (`stream_options.include_usage`);
cortex asks the neuron anyway, meters from it, and drops it on the way out."""

from __future__ import annotations

import math
from typing import Any

import httpx
import openai
import orjson
import pytest
from openai.types.chat import ChatCompletionChunk

from helexa.cortex.stream_usage import UsageStripper, ask_upstream, without_usage_frames
from rig.cortex_rig import Cortex, CortexFactory
from rig.fake_neuron import FakeNeuron

CHAT_PATH = "/v1/chat/completions"
MSGS = [{"role": "user", "content": "hi"}]
MN = {"model": "test-model", "node": "mock-node"}
KEY = {"key": "sk-one", "account_id": "acct-1", "key_id": "key-1", "hard_cap": 1_000_000}


def frame(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


CONTENT = frame({"choices": [{"index": 0, "delta": {"content": 'say "usage": 1'}}]})
FINAL = frame({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
USAGE = frame({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}})
DONE = b"data: [DONE]\n\n"


def data_lines(text: str) -> list[str]:
    return [line[6:] for line in text.split("\n") if line.startswith("data: ")]


def typed(chunks: list[Any], sdk_type: type[ChatCompletionChunk] | None) -> None:
    """Each chunk is what the SDK types it as, without coercion."""
    if sdk_type is None:
        return
    for ch in chunks:
        sdk_type.model_validate(ch, strict=True)


# -- the pieces ---------------------------------------------------------------------------------


def test_without_usage_frames_drops_only_the_usage_only_chunk() -> None:
    per_chunk = frame(
        {"choices": [{"index": 0, "delta": {"content": "x"}}], "usage": {"prompt_tokens": 1}}
    )
    assert without_usage_frames(CONTENT + FINAL + USAGE + DONE) == CONTENT + FINAL + DONE
    assert without_usage_frames(USAGE) == b""
    # A chunk that carries choices and usage (continuous usage) is content: it stays.
    assert without_usage_frames(per_chunk + USAGE + DONE) == per_chunk + DONE
    assert without_usage_frames(CONTENT + DONE) == CONTENT + DONE


@pytest.mark.parametrize("step", [1, 2, 3, 7, 64])
def test_stripper_handles_frames_split_anywhere(step: int) -> None:
    stream = CONTENT + CONTENT + FINAL + USAGE + DONE
    for first in range(len(stream)):  # one cut at every offset, the rest in `step`-byte reads
        s = UsageStripper()
        reads = [stream[:first]] + [stream[i : i + step] for i in range(first, len(stream), step)]
        out = b"".join(s.feed(r) for r in reads) + s.flush()
        assert out == CONTENT + CONTENT + FINAL + DONE


def test_stripper_passes_whole_frames_without_holding_them() -> None:
    s = UsageStripper()
    assert s.feed(CONTENT) is CONTENT  # one frame per read: no copy, no delay
    assert s.feed(CONTENT[:10]) == b""
    assert s.feed(CONTENT[10:] + FINAL[:5]) == CONTENT
    assert s.feed(FINAL[5:] + USAGE + DONE) == FINAL + DONE
    assert s.flush() == b""


def test_ask_upstream_adds_include_usage_only_when_missing() -> None:
    def ask(obj: dict[str, Any], path: str = CHAT_PATH) -> tuple[bool, dict[str, Any]]:
        body = orjson.dumps(obj) + b" \n"
        strip, sent = ask_upstream(path, obj, body)
        forwarded = orjson.loads(sent)
        assert forwarded == obj  # the body and the dict agree, whichever way it was rewritten
        return strip, forwarded

    base = {"model": "m", "messages": MSGS, "stream": True}
    strip, sent = ask(dict(base))
    assert strip and sent["stream_options"] == {"include_usage": True}
    strip, sent = ask({**base, "stream_options": None})
    assert strip and sent["stream_options"] == {"include_usage": True}
    strip, sent = ask({**base, "stream_options": {"include_usage": False, "x": 1}})
    assert strip and sent["stream_options"] == {"include_usage": True, "x": 1}
    strip, sent = ask({**base, "stream_options": {"include_usage": True}})
    assert not strip and sent["stream_options"] == {"include_usage": True}
    strip, sent = ask({"model": "m", "prompt": "p", "stream": True}, "/v1/completions")
    assert strip and sent["stream_options"] == {"include_usage": True}
    for obj, path in [
        ({"model": "m", "messages": MSGS}, CHAT_PATH),
        ({"model": "m", "messages": MSGS, "stream": False}, CHAT_PATH),
        ({"model": "m", "input": "hi", "stream": True}, "/v1/responses"),
    ]:
        body = orjson.dumps(obj)
        assert ask_upstream(path, obj, body) == (False, body)


# -- through a real cortex ----------------------------------------------------------------------


async def test_raw_stream_has_no_usage_chunk_unless_asked(cortex: Cortex, fake: FakeNeuron) -> None:
    fake.stream_usage = (225, 42)
    fake.stream_finish_reason = "stop"
    async with httpx.AsyncClient() as c:
        for path, body, sdk_type in [
            (
                "/chat/completions",
                {"model": "test-model", "messages": MSGS, "stream": True},
                ChatCompletionChunk,
            ),
            # The SDK types completion chunks as `Completion`, whose finish_reason can't be null
            # as it is mid-stream (at OpenAI too): only chat chunks are checked by type.
            ("/completions", {"model": "test-model", "prompt": "hi", "stream": True}, None),
        ]:
            r = await c.post(cortex.base + path, json=body)
            assert r.status_code == 200
            data = data_lines(r.text)
            assert data[-1] == "[DONE]"
            chunks = [orjson.loads(d) for d in data[:-1]]
            typed(chunks, sdk_type)
            assert chunks and all(ch["choices"] for ch in chunks)
            assert not any("usage" in ch for ch in chunks)
            # cortex asked the neuron for usage on the client's behalf
            assert fake.requests[-1].json["stream_options"] == {"include_usage": True}

            body["stream_options"] = {"include_usage": True}
            r = await c.post(cortex.base + path, json=body)
            chunks = [orjson.loads(d) for d in data_lines(r.text)[:-1]]
            typed(chunks, sdk_type)
            usage = [ch for ch in chunks if "usage" in ch]
            assert len(usage) == 1 and usage[0] is chunks[-1] and usage[0]["choices"] == []
            assert usage[0]["usage"]["completion_tokens"] == 42
    # Four streams, every one metered from the neuron's usage chunk.
    assert cortex.metric("cortex_prompt_tokens_total", **MN) == 4 * 225
    assert cortex.metric("cortex_completion_tokens_total", **MN) == 4 * 42


async def test_whole_stream_in_one_read_is_stripped(cortex: Cortex, fake: FakeNeuron) -> None:
    raw = CONTENT + FINAL + USAGE + DONE
    fake.reply_override[CHAT_PATH] = (200, raw, {"content-type": "text/event-stream"})
    async with httpx.AsyncClient() as c:
        body = {"model": "test-model", "messages": MSGS, "stream": True}
        r = await c.post(cortex.base + "/chat/completions", json=body)
    assert r.status_code == 200
    assert r.content == CONTENT + FINAL + DONE
    assert "content-length" not in r.headers  # cortex changed the body
    assert cortex.metric("cortex_completion_tokens_total", **MN) == 2


async def test_stream_options_must_be_an_object(cortex: Cortex, fake: FakeNeuron) -> None:
    async with httpx.AsyncClient() as c:
        body = {"model": "test-model", "messages": MSGS, "stream": True, "stream_options": "yes"}
        r = await c.post(cortex.base + "/chat/completions", json=body)
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["code"] == "invalid_value" and err["param"] == "stream_options"
    assert fake.count(CHAT_PATH) == 0


async def test_openai_sdk_streaming_example_and_budget(
    start_cortex: CortexFactory, fake: FakeNeuron
) -> None:
    """The README loop (`chunk.choices[0]` on every chunk) no longer hits an empty `choices`,
    and the key's budget still settles from the usage cortex asked for."""
    fake.stream_usage = (31, 24)
    ent = {"require_auth": True, "keys": [KEY]}
    cortex = await start_cortex({"mock-node": fake}, entitlements=ent)
    client = openai.AsyncOpenAI(base_url=cortex.base, api_key="sk-one", max_retries=0)
    try:
        stream = await client.chat.completions.create(
            model="test-model", messages=[{"role": "user", "content": "Count"}], stream=True
        )
        text = "".join([chunk.choices[0].delta.content or "" async for chunk in stream])
        assert text == "token0token1token2token3"
        principal = cortex.gw.auth.resolve("sk-one")
        assert principal is not None
        snap = cortex.gw.auth.snapshot(principal)
        assert (snap.spent, snap.reserved) == (31 + 24, 0)

        stream = await client.chat.completions.create(
            model="test-model",
            messages=[{"role": "user", "content": "Count"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
    finally:
        await client.close()
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == 55
    assert all(ch.choices for ch in chunks[:-1])
    snap = cortex.gw.auth.snapshot(principal)
    assert (snap.spent, snap.reserved) == (2 * 55, 0)
    assert math.isclose(cortex.metric("cortex_prompt_tokens_total", **MN), 62)
