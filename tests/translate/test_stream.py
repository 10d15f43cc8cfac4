# ruff: noqa: E501  (the contract example below is quoted verbatim)
"""OpenAI chat SSE → Anthropic SSE, the pure state machine.

Unit tests pin the exact event grammar for the cases the contract names; a hypothesis property
test feeds arbitrary (but realistic) OpenAI chunk sequences, serialised as SSE and cut at
arbitrary byte boundaries, and checks that the output is always grammatical and carries exactly
what the non-streaming translation of the same completion carries.
"""

from __future__ import annotations

import itertools
import json
import logging
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helexa.translate.response import translate_response
from helexa.translate.stream import PING, AnthropicStream, error_event
from helexa.wire.sse import SSEDecoder
from rig.anthropic_types import check_event
from rig.sse import named_events

MODEL = "Qwen/Qwen3-8B"
MSG_ID = "msg_a1"

# -- helpers: OpenAI chunks -------------------------------------------------------------------


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None, **extra: Any) -> bytes:
    choice: dict[str, Any] = {"index": 0, "delta": delta or {}, "finish_reason": finish}
    choice.update(extra)
    return orjson.dumps(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "m",
            "choices": [choice],
        }
    )


def text(s: str) -> bytes:
    return chunk({"content": s})


def think(s: str) -> bytes:
    return chunk({"reasoning_content": s})


def head(k: int, name: str, cid: str, args: str = "") -> bytes:
    return chunk(
        {
            "tool_calls": [
                {
                    "index": k,
                    "id": cid,
                    "type": "function",
                    "function": {"name": name, "arguments": args},
                }
            ]
        }
    )


def args(k: int, s: str) -> bytes:
    return chunk({"tool_calls": [{"index": k, "function": {"arguments": s}}]})


def finish(reason: str | None = "stop", matched: Any = None) -> bytes:
    return chunk({}, reason, stop_reason=matched)


def usage(p: int, c: int) -> bytes:
    return orjson.dumps(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk",
            "choices": [],
            "usage": {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c},
        }
    )


ROLE = chunk({"role": "assistant", "content": ""})
DONE = b"[DONE]"


def run(payloads: list[bytes], prompt: int = 0, eof: bool = True) -> bytes:
    """start(), each payload through feed(), then end() if the upstream closed."""
    m = AnthropicStream(MODEL, MSG_ID, prompt)
    out = [m.start()] + [m.feed(p) for p in payloads]
    if eof:
        out.append(m.end())
    return b"".join(out)


def events(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    """The frames, each checked against the anthropic SDK's own event types."""
    out = named_events(raw)
    for name, data in out:
        check_event(name, data)
    return out


def names(raw: bytes) -> list[str]:
    return [n for n, _ in events(raw)]


# -- helpers: the grammar checker ---------------------------------------------------------------

DELTA_FOR = {"text": "text_delta", "thinking": "thinking_delta", "tool_use": "input_json_delta"}


@dataclass
class Accumulated:
    """What an Anthropic client reconstructs from a grammatical stream."""

    start_usage: dict[str, Any]
    blocks: list[dict[str, Any]] = field(default_factory=list)
    stop_reason: str | None = None
    stop_sequence: str | None = None
    usage: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    deltas: int = 0

    def joined(self, kind: str) -> str:
        key = "thinking" if kind == "thinking" else "text"
        return "".join(b[key] for b in self.blocks if b["type"] == kind)

    def tools(self) -> list[dict[str, Any]]:
        out = []
        for b in self.blocks:
            if b["type"] == "tool_use":
                raw = b["partial"]
                out.append(
                    {
                        "type": "tool_use",
                        "id": b["id"],
                        "name": b["name"],
                        "input": json.loads(raw) if raw else {},
                    }
                )
        return out


def check_grammar(raw: bytes, *, allow_ping: bool = False) -> Accumulated:
    """Assert the Anthropic stream grammar and return the accumulated message.

    message_start (content_block_start content_block_delta* content_block_stop)*
    (message_delta message_stop | error)
    """
    assert b"chat.completion" not in raw
    evs = events(raw)
    assert evs, "empty stream"
    name, data = evs[0]
    assert name == "message_start" and data["type"] == "message_start"
    msg = data["message"]
    assert msg["type"] == "message" and msg["role"] == "assistant"
    assert msg["content"] == [] and msg["stop_reason"] is None and msg["stop_sequence"] is None
    assert set(msg["usage"]) == {"input_tokens", "output_tokens"}
    assert msg["usage"]["output_tokens"] == 0
    acc = Accumulated(start_usage=msg["usage"])
    open_block: dict[str, Any] | None = None
    ended = False
    for i, (name, data) in enumerate(evs[1:], start=1):
        assert not ended, f"event after the end: {name}"
        assert data["type"] == name
        if name == "ping":
            assert allow_ping, "unexpected ping"
            assert data == {"type": "ping"}
        elif name == "content_block_start":
            assert open_block is None, "blocks interleave"
            assert data["index"] == len(acc.blocks), "block indexes must count up from 0"
            cb = data["content_block"]
            kind = cb["type"]
            if kind == "text":
                assert cb == {"type": "text", "text": ""}
                open_block = {"type": "text", "text": ""}
            elif kind == "thinking":
                assert cb == {"type": "thinking", "thinking": "", "signature": ""}
                open_block = {"type": "thinking", "thinking": ""}
            elif kind == "tool_use":
                assert set(cb) == {"type", "id", "name", "input"} and cb["input"] == {}
                assert isinstance(cb["id"], str) and cb["id"]
                open_block = {"type": "tool_use", "id": cb["id"], "name": cb["name"], "partial": ""}
            else:
                raise AssertionError(f"unknown block type {kind}")
            acc.blocks.append(open_block)
        elif name == "content_block_delta":
            assert open_block is not None, "delta outside a block"
            assert data["index"] == len(acc.blocks) - 1
            d = data["delta"]
            assert d["type"] == DELTA_FOR[open_block["type"]], (d, open_block["type"])
            acc.deltas += 1
            if d["type"] == "text_delta":
                assert isinstance(d["text"], str) and d["text"]
                open_block["text"] += d["text"]
            elif d["type"] == "thinking_delta":
                assert isinstance(d["thinking"], str) and d["thinking"]
                open_block["thinking"] += d["thinking"]
            else:
                assert isinstance(d["partial_json"], str) and d["partial_json"]
                open_block["partial"] += d["partial_json"]
        elif name == "content_block_stop":
            assert open_block is not None, "stop outside a block"
            assert data == {"type": "content_block_stop", "index": len(acc.blocks) - 1}
            open_block = None
        elif name == "message_delta":
            assert open_block is None, "message_delta with a block open"
            assert set(data["delta"]) == {"stop_reason", "stop_sequence"}
            acc.stop_reason = data["delta"]["stop_reason"]
            acc.stop_sequence = data["delta"]["stop_sequence"]
            assert acc.stop_reason in ("end_turn", "max_tokens", "tool_use", "stop_sequence")
            assert (acc.stop_sequence is not None) == (acc.stop_reason == "stop_sequence")
            acc.usage = data["usage"]
            assert i + 1 < len(evs) and evs[i + 1][0] == "message_stop", "no message_stop"
        elif name == "message_stop":
            assert data == {"type": "message_stop"}
            assert acc.usage is not None, "message_stop without message_delta"
            ended = True
        elif name == "error":
            assert set(data["error"]) == {"type", "message"}
            assert data["error"]["type"] in ("api_error", "overloaded_error")
            assert isinstance(data["error"]["message"], str)
            acc.error = data["error"]
            ended = True
        else:
            raise AssertionError(f"unknown event {name}")
    assert ended, "stream ended without message_stop or error"
    return acc


# -- exact grammar -------------------------------------------------------------------------------

CONTRACT_EXAMPLE = b"""event: message_start
data: {"type":"message_start","message":{"id":"msg_a1","type":"message","role":"assistant","model":"Qwen/Qwen3-8B","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":31,"output_tokens":0}}}

event: content_block_start
data: {"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":"","signature":""}}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"Need the file."}}

event: content_block_stop
data: {"type":"content_block_stop","index":0}

event: content_block_start
data: {"type":"content_block_start","index":1,"content_block":{"type":"text","text":""}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"text_delta","text":"Reading it."}}

event: content_block_stop
data: {"type":"content_block_stop","index":1}

event: content_block_start
data: {"type":"content_block_start","index":2,"content_block":{"type":"tool_use","id":"call_x","name":"Read","input":{}}}

event: content_block_delta
data: {"type":"content_block_delta","index":2,"delta":{"type":"input_json_delta","partial_json":"{\\"path\\":\\"/etc/hosts\\"}"}}

event: content_block_stop
data: {"type":"content_block_stop","index":2}

event: message_delta
data: {"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"input_tokens":31,"output_tokens":24}}

event: message_stop
data: {"type":"message_stop"}

"""


def test_contract_example_byte_for_byte() -> None:
    out = run(
        [
            ROLE,
            think("Need the file."),
            text("Reading it."),
            head(0, "Read", "call_x"),
            args(0, '{"path":"/etc/hosts"}'),
            finish("tool_calls"),
            usage(31, 24),
            DONE,
        ],
        prompt=31,
    )
    assert out == CONTRACT_EXAMPLE


def test_text_only_exact_sequence() -> None:
    out = run([ROLE] + [text(f"token{i}") for i in range(4)] + [finish("stop"), DONE], prompt=7)
    assert names(out) == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    acc = check_grammar(out)
    assert acc.joined("text") == "token0token1token2token3"
    assert acc.stop_reason == "end_turn" and acc.stop_sequence is None
    # No usage frame: P from the header and the delta count.
    assert acc.usage == {"input_tokens": 7, "output_tokens": 4}
    ev = events(out)
    assert ev[1][1] == {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "text", "text": ""},
    }
    assert ev[2][1]["delta"] == {"type": "text_delta", "text": "token0"}


def test_role_chunk_and_empty_strings_emit_nothing() -> None:
    m = AnthropicStream(MODEL, MSG_ID, 0)
    m.start()
    assert m.feed(ROLE) == b""
    assert m.feed(chunk({"content": "", "reasoning_content": ""})) == b""
    assert m.feed(chunk({"content": None, "reasoning_content": None, "tool_calls": None})) == b""
    assert m.feed(chunk({})) == b""
    assert m.feed(orjson.dumps({"choices": []})) == b""


def test_message_start_carries_the_prompt_tokens_given() -> None:
    m = AnthropicStream("some/model", "msg_x", 1234)
    (name, data) = events(m.start())[0]
    assert name == "message_start"
    assert data["message"] == {
        "id": "msg_x",
        "type": "message",
        "role": "assistant",
        "model": "some/model",
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": 1234, "output_tokens": 0},
    }


def test_thinking_then_text_are_two_blocks_never_interleaved() -> None:
    out = run([think("a"), think("b"), text("c"), text("d"), finish("stop"), DONE])
    assert names(out) == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    ev = events(out)
    assert ev[1][1]["index"] == 0 and ev[1][1]["content_block"]["type"] == "thinking"
    assert ev[2][1]["delta"] == {"type": "thinking_delta", "thinking": "a"}
    assert ev[5][1]["index"] == 1 and ev[5][1]["content_block"]["type"] == "text"
    acc = check_grammar(out)
    assert (acc.joined("thinking"), acc.joined("text")) == ("ab", "cd")


def test_one_chunk_with_reasoning_and_content_opens_thinking_first() -> None:
    out = run([chunk({"reasoning_content": "r", "content": "t"}), finish(), DONE])
    acc = check_grammar(out)
    assert [b["type"] for b in acc.blocks] == ["thinking", "text"]


def test_switching_back_and_forth_opens_new_blocks() -> None:
    out = run([text("a"), think("b"), text("c"), finish(), DONE])
    acc = check_grammar(out)
    assert [b["type"] for b in acc.blocks] == ["text", "thinking", "text"]
    assert acc.joined("text") == "ac"


@pytest.mark.parametrize("cuts", [[], [1], [5, 6], [1, 2, 3, 4, 5, 6, 7, 8, 9], [20]])
def test_text_then_tool_use_with_partial_json_split_anywhere(cuts: list[int]) -> None:
    arguments = '{"path": "/etc/hosts", "lines": [1, 2]}'
    bounds = [0, *cuts, len(arguments)]
    pieces = [arguments[a:b] for a, b in itertools.pairwise(bounds)]
    out = run(
        [
            text("Reading it."),
            head(0, "Read", "call_abc"),
            *[args(0, p) for p in pieces],
            finish("tool_calls"),
            usage(12, 9),
            DONE,
        ]
    )
    acc = check_grammar(out)
    assert [b["type"] for b in acc.blocks] == ["text", "tool_use"]
    assert acc.tools() == [
        {
            "type": "tool_use",
            "id": "call_abc",
            "name": "Read",
            "input": {"path": "/etc/hosts", "lines": [1, 2]},
        }
    ]
    assert acc.stop_reason == "tool_use"
    ev = events(out)
    start = next(d for n, d in ev if n == "content_block_start" and d["index"] == 1)
    assert start["content_block"] == {
        "type": "tool_use",
        "id": "call_abc",
        "name": "Read",
        "input": {},
    }
    partials = [
        d["delta"]["partial_json"]
        for n, d in ev
        if n == "content_block_delta" and d["delta"]["type"] == "input_json_delta"
    ]
    assert partials == [p for p in pieces if p]


def test_arguments_in_the_head_chunk_are_sent_after_the_block_start() -> None:
    out = run([head(0, "Ls", "call_1", '{"dir":'), args(0, '"/"}'), finish("tool_calls"), DONE])
    acc = check_grammar(out)
    assert acc.tools()[0]["input"] == {"dir": "/"}


def test_arguments_given_as_an_object_are_serialised() -> None:
    call = {"index": 0, "id": "call_1", "function": {"name": "Ls", "arguments": {"dir": "/"}}}
    out = run([chunk({"tool_calls": [call]}), finish("tool_calls"), DONE])
    assert check_grammar(out).tools()[0]["input"] == {"dir": "/"}


def test_multiple_tool_calls_each_get_a_block() -> None:
    out = run(
        [
            text("Two reads."),
            head(0, "Read", "call_1"),
            args(0, '{"path":"/a"}'),
            head(1, "Read", "call_2"),
            args(1, '{"path":'),
            args(1, '"/b"}'),
            finish("tool_calls"),
            DONE,
        ]
    )
    assert names(out) == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    acc = check_grammar(out)
    assert [(t["id"], t["input"]) for t in acc.tools()] == [
        ("call_1", {"path": "/a"}),
        ("call_2", {"path": "/b"}),
    ]


def test_several_tool_calls_in_one_chunk() -> None:
    calls = [
        {"index": 0, "id": "call_1", "function": {"name": "A", "arguments": '{"x":1}'}},
        {"index": 1, "id": "call_2", "function": {"name": "B", "arguments": '{"y":2}'}},
    ]
    out = run([chunk({"tool_calls": calls}, "tool_calls"), DONE])
    acc = check_grammar(out)
    assert [(t["name"], t["input"]) for t in acc.tools()] == [("A", {"x": 1}), ("B", {"y": 2})]


def test_tool_call_without_id_gets_one() -> None:
    call = {"index": 0, "function": {"name": "A", "arguments": "{}"}}
    acc = check_grammar(run([chunk({"tool_calls": [call]}), finish("tool_calls"), DONE]))
    assert acc.tools()[0]["id"].startswith("call_")


def test_tool_use_wins_over_stop_but_not_over_length() -> None:
    acc = check_grammar(run([head(0, "A", "call_1", "{}"), finish("stop"), DONE]))
    assert acc.stop_reason == "tool_use"
    acc = check_grammar(run([head(0, "A", "call_1", '{"a'), finish("length"), DONE]))
    assert acc.stop_reason == "max_tokens"


def test_usage_frame_reaches_message_delta() -> None:
    """The original's usage-propagation case: 225/42 → message_delta usage."""
    out = run([text("a"), text("b"), text("c"), finish("stop"), usage(225, 42), DONE], prompt=3)
    acc = check_grammar(out)
    assert acc.usage == {"input_tokens": 225, "output_tokens": 42}
    assert acc.start_usage == {"input_tokens": 3, "output_tokens": 0}


def test_last_usage_frame_wins_and_null_usage_is_ignored() -> None:
    with_null = orjson.dumps({"choices": [{"index": 0, "delta": {"content": "x"}}], "usage": None})
    out = run([usage(1, 1), with_null, finish(), usage(9, 8), DONE])
    assert check_grammar(out).usage == {"input_tokens": 9, "output_tokens": 8}


@pytest.mark.parametrize(
    ("finish_reason", "matched", "expected"),
    [
        ("stop", None, ("end_turn", None)),
        ("stop", "END", ("stop_sequence", "END")),
        ("length", None, ("max_tokens", None)),
        ("stop", 151645, ("end_turn", None)),
    ],
)
def test_stop_reasons_in_the_stream(
    finish_reason: str, matched: Any, expected: tuple[str, str | None]
) -> None:
    acc = check_grammar(run([text("x"), finish(finish_reason, matched), DONE]))
    assert (acc.stop_reason, acc.stop_sequence) == expected


def test_finish_reason_on_the_last_content_chunk() -> None:
    acc = check_grammar(run([text("a"), chunk({"content": "b"}, "length")]))
    assert acc.joined("text") == "ab" and acc.stop_reason == "max_tokens"


def test_missing_done_after_finish_reason_closes_the_message() -> None:
    m = AnthropicStream(MODEL, MSG_ID, 5)
    parts = [m.start(), m.feed(text("hi")), m.feed(finish("stop")), m.feed(usage(5, 1))]
    assert b"message_stop" not in b"".join(parts)
    parts.append(m.end())
    acc = check_grammar(b"".join(parts))
    assert acc.error is None
    assert acc.stop_reason == "end_turn"
    assert acc.usage == {"input_tokens": 5, "output_tokens": 1}
    assert m.finished
    assert m.end() == b"" and m.feed(text("late")) == b"" and m.fail("late") == b""


def test_done_without_finish_reason_still_closes_as_end_turn() -> None:
    acc = check_grammar(run([text("hi"), DONE]))
    assert acc.error is None and acc.stop_reason == "end_turn"


def test_end_without_finish_reason_is_an_error_and_no_message_stop() -> None:
    out = run([ROLE, text("partial")])
    acc = check_grammar(out)
    assert acc.error is not None and acc.error["type"] == "api_error"
    ev = names(out)
    assert ev[-1] == "error"
    assert "message_stop" not in ev and "message_delta" not in ev


def test_end_right_after_start_is_an_error() -> None:
    assert names(run([])) == ["message_start", "error"]


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        ("service_unavailable", "overloaded_error"),
        ("model_not_ready", "overloaded_error"),
        ("upstream_timeout", "api_error"),
        ("internal_server_error", "api_error"),
        (None, "api_error"),
    ],
)
def test_upstream_error_frame_becomes_an_error_event(code: str | None, kind: str) -> None:
    frame = orjson.dumps(
        {"error": {"message": "the model went away", "type": "x", "code": code, "param": None}}
    )
    m = AnthropicStream(MODEL, MSG_ID, 0)
    out = m.start() + m.feed(text("partial")) + m.feed(frame) + m.feed(text("more")) + m.end()
    ev = events(out)
    assert [n for n, _ in ev] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "error",
    ]  # the open block is not closed
    assert ev[-1][1] == {"type": "error", "error": {"type": kind, "message": "the model went away"}}
    check_grammar(out)


def test_fail_mid_block_ends_the_stream() -> None:
    m = AnthropicStream(MODEL, MSG_ID, 0)
    out = m.start() + m.feed(text("x")) + m.fail("upstream connection lost mid-stream")
    ev = events(out)
    assert ev[-1] == (
        "error",
        {
            "type": "error",
            "error": {"type": "api_error", "message": "upstream connection lost mid-stream"},
        },
    )
    assert m.finished and m.failed and m.end() == b""


def test_failed_only_after_an_error() -> None:
    m = AnthropicStream(MODEL, MSG_ID, 0)
    m.start()
    m.feed(text("x"))
    m.feed(finish())
    m.end()
    assert m.finished and not m.failed
    m = AnthropicStream(MODEL, MSG_ID, 0)
    m.start()
    m.feed(orjson.dumps({"error": {"message": "m", "code": "model_not_ready"}}))
    assert m.finished and m.failed


def test_unparsable_and_non_object_payloads_are_skipped(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="helexa.translate"):
        out = run([b"{not json", b"[1,2]", b'"s"', text("ok"), finish(), DONE])
    acc = check_grammar(out)
    assert acc.joined("text") == "ok" and acc.error is None


def test_no_openai_frame_ever_in_the_output() -> None:
    out = run(
        [
            ROLE,
            think("r"),
            text("t"),
            head(0, "A", "call_1", "{}"),
            finish("tool_calls"),
            usage(1, 2),
            DONE,
        ]
    )
    assert b"chat.completion" not in out and b"choices" not in out
    assert b"[DONE]" not in out
    for block in out.split(b"\n\n")[:-1]:
        assert block.startswith(b"event: ")


def test_output_tokens_fall_back_to_delta_count() -> None:
    out = run([think("a"), text("b"), head(0, "A", "c", "{"), args(0, "}"), finish(), DONE])
    acc = check_grammar(out)
    assert (
        acc.usage
        == {"input_tokens": 0, "output_tokens": 4}
        == {
            "input_tokens": 0,
            "output_tokens": acc.deltas,
        }
    )


def test_ping_and_error_frames() -> None:
    assert PING == b'event: ping\ndata: {"type":"ping"}\n\n'
    assert error_event("m", "overloaded_error") == (
        b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error","message":"m"}}\n\n'
    )


# -- the property ------------------------------------------------------------------------------

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.text(max_size=8),
)
json_args = st.dictionaries(
    st.text(max_size=6),
    st.one_of(json_scalars, st.lists(json_scalars, max_size=3)),
    max_size=4,
)
pieces_text = st.lists(st.text(min_size=0, max_size=6), min_size=1, max_size=4)


@st.composite
def split_string(draw: st.DrawFn, s: str) -> list[str]:
    """`s` cut at arbitrary places (pieces may be empty)."""
    cuts = sorted(draw(st.lists(st.integers(0, len(s)), max_size=5)))
    bounds = [0, *cuts, len(s)]
    return [s[a:b] for a, b in itertools.pairwise(bounds)]


def _chunk_obj(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-p",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish, **extra}],
    }


@st.composite
def upstream_stream(draw: st.DrawFn) -> dict[str, Any]:
    """A realistic OpenAI chat stream: segments of text / reasoning / whole tool calls in any
    order (tool calls by increasing index), noise, usage frames, a finish, maybe [DONE]."""
    frames: list[Any] = []  # dicts (JSON chunks), "comment", "done"
    tool_index = 0
    for _ in range(draw(st.integers(0, 7))):
        kind = draw(
            st.sampled_from(["text", "reasoning", "both", "tool", "batch", "noise", "usage"])
        )
        if kind in ("text", "reasoning"):
            key = "content" if kind == "text" else "reasoning_content"
            for p in draw(pieces_text):
                frames.append(_chunk_obj({key: p}))
        elif kind == "both":
            r, t = draw(st.text(max_size=5)), draw(st.text(max_size=5))
            frames.append(_chunk_obj({"reasoning_content": r, "content": t}))
        elif kind == "tool":
            arguments = draw(st.one_of(st.just(""), json_args.map(json.dumps)))
            parts = draw(split_string(arguments))
            in_head = draw(st.booleans())
            first = parts.pop(0) if in_head else ""
            call = {
                "index": tool_index,
                "id": f"call_{tool_index}_{draw(st.integers(0, 999))}",
                "type": "function",
                "function": {
                    "name": draw(st.sampled_from(["Read", "Bash", "Edit"])),
                    "arguments": first,
                },
            }
            frames.append(_chunk_obj({"tool_calls": [call]}))
            for p in parts:
                frames.append(
                    _chunk_obj(
                        {"tool_calls": [{"index": tool_index, "function": {"arguments": p}}]}
                    )
                )
            tool_index += 1
        elif kind == "batch":
            calls = []
            for _ in range(draw(st.integers(1, 3))):
                calls.append(
                    {
                        "index": tool_index,
                        "id": f"call_b{tool_index}",
                        "type": "function",
                        "function": {"name": "Batch", "arguments": json.dumps(draw(json_args))},
                    }
                )
                tool_index += 1
            frames.append(_chunk_obj({"tool_calls": calls}))
        elif kind == "noise":
            frames.append(
                draw(
                    st.sampled_from(
                        [
                            _chunk_obj({"role": "assistant", "content": ""}),
                            _chunk_obj({}),
                            {"id": "x", "object": "chat.completion.chunk", "choices": []},
                            "comment",
                        ]
                    )
                )
            )
        else:
            p, c = draw(st.integers(0, 10**5)), draw(st.integers(0, 10**5))
            frames.append({"choices": [], "usage": {"prompt_tokens": p, "completion_tokens": c}})
    finish_reason = draw(st.sampled_from([None, "stop", "length", "tool_calls"]))
    if finish_reason is not None:
        matched = draw(st.sampled_from([None, "END", 151645])) if finish_reason == "stop" else None
        fin = _chunk_obj({}, finish_reason, stop_reason=matched)
        last = frames[-1] if frames else None
        if isinstance(last, dict) and last.get("choices") and draw(st.booleans()):
            last["choices"][0]["finish_reason"] = finish_reason
            last["choices"][0]["stop_reason"] = matched
        else:
            frames.append(fin)
    if draw(st.booleans()):
        p, c = draw(st.integers(0, 10**5)), draw(st.integers(0, 10**5))
        frames.append(
            {
                "choices": [],
                "usage": {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c},
            }
        )
    error = None
    if draw(st.integers(0, 9)) == 0:
        code = draw(st.sampled_from(["service_unavailable", "model_not_ready", "internal_error"]))
        error = {"error": {"message": "went away", "type": "x", "code": code, "param": None}}
        frames.insert(draw(st.integers(0, len(frames))), error)
    done = draw(st.booleans())
    if done:
        frames.append("done")
    return {"frames": frames, "error": error, "done": done, "finish": finish_reason}


def serialise(frames: list[Any], crlf: bool, spaced: bool) -> bytes:
    nl = b"\r\n" if crlf else b"\n"
    prefix = b"data: " if spaced else b"data:"
    out = []
    for f in frames:
        if f == "comment":
            out.append(b": keep-alive" + nl + nl)
        elif f == "done":
            out.append(prefix + b"[DONE]" + nl + nl)
        else:
            out.append(prefix + json.dumps(f, ensure_ascii=False).encode() + nl + nl)
    return b"".join(out)


def accumulate(frames: list[Any]) -> dict[str, Any]:
    """An OpenAI chunk accumulator: the non-streaming completion the chunks add up to."""
    reasoning, content = "", ""
    calls: dict[int, dict[str, Any]] = {}
    finish_reason = matched = usage_ = None
    for f in frames:
        if f in ("comment", "done"):
            continue
        if "error" in f:
            break
        if isinstance(f.get("usage"), dict):
            usage_ = f["usage"]
        for choice in f.get("choices") or []:
            delta = choice.get("delta") or {}
            reasoning += delta.get("reasoning_content") or ""
            content += delta.get("content") or ""
            for tc in delta.get("tool_calls") or []:
                slot = calls.setdefault(
                    tc["index"],
                    {"id": None, "type": "function", "function": {"name": None, "arguments": ""}},
                )
                if tc.get("id"):
                    slot["id"] = tc["id"]
                fn = tc.get("function") or {}
                if fn.get("name"):
                    slot["function"]["name"] = fn["name"]
                slot["function"]["arguments"] += fn.get("arguments") or ""
            if choice.get("finish_reason") is not None:
                finish_reason = choice["finish_reason"]
                matched = choice.get("stop_reason")
    message: dict[str, Any] = {"role": "assistant", "content": content or None}
    if reasoning:
        message["reasoning_content"] = reasoning
    if calls:
        message["tool_calls"] = [calls[k] for k in sorted(calls)]
    completion: dict[str, Any] = {
        "id": "chatcmpl-p",
        "object": "chat.completion",
        "choices": [
            {"index": 0, "message": message, "finish_reason": finish_reason, "stop_reason": matched}
        ],
    }
    if usage_ is not None:
        completion["usage"] = usage_
    return completion


@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    scenario=upstream_stream(),
    crlf=st.booleans(),
    spaced=st.booleans(),
    prompt=st.integers(0, 10**6),
    data=st.data(),
)
def test_any_upstream_stream_yields_a_grammatical_faithful_anthropic_stream(
    scenario: dict[str, Any], crlf: bool, spaced: bool, prompt: int, data: st.DataObject
) -> None:
    frames = scenario["frames"]
    wire = serialise(frames, crlf, spaced)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=12), label="cuts"))
    bounds = [0, *cuts, len(wire)]

    machine = AnthropicStream(MODEL, MSG_ID, prompt)
    decoder = SSEDecoder()
    out = [machine.start()]
    for a, b in itertools.pairwise(bounds):
        for _, payload in decoder.feed(wire[a:b]):
            out.append(machine.feed(payload))
    out.append(machine.end())
    raw = b"".join(out)

    acc = check_grammar(raw)
    assert acc.start_usage == {"input_tokens": prompt, "output_tokens": 0}

    if scenario["error"] is not None:
        assert acc.error is not None
        expected = (
            "api_error"
            if scenario["error"]["error"]["code"] == "internal_error"
            else ("overloaded_error")
        )
        assert acc.error == {"type": expected, "message": "went away"}
        return
    if scenario["finish"] is None and not scenario["done"]:
        assert acc.error is not None and acc.error["type"] == "api_error"
        return
    assert acc.error is None

    completion = accumulate(frames)
    want = translate_response(completion, MODEL, MSG_ID)
    got_thinking = next((b["thinking"] for b in want["content"] if b["type"] == "thinking"), "")
    got_text = next((b["text"] for b in want["content"] if b["type"] == "text"), "")
    assert acc.joined("thinking") == got_thinking
    assert acc.joined("text") == got_text
    assert acc.tools() == [b for b in want["content"] if b["type"] == "tool_use"]
    assert (acc.stop_reason, acc.stop_sequence) == (want["stop_reason"], want["stop_sequence"])
    if "usage" in completion:
        assert acc.usage == {
            "input_tokens": want["usage"]["input_tokens"],
            "output_tokens": want["usage"]["output_tokens"],
        }
    else:
        assert acc.usage == {"input_tokens": prompt, "output_tokens": acc.deltas}
