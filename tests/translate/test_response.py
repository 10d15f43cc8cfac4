"""OpenAI chat completion → Anthropic message."""

from __future__ import annotations

import logging
import re
from typing import Any

import pytest

from helexa.translate import response
from helexa.translate.response import message_id, parse_arguments, stop_reason, usage_of
from rig.anthropic_types import check_message


def translate_response(completion: Any, model: str, msg_id: str) -> dict[str, Any]:
    """The translation under test, its output checked against the SDK's own Message type."""
    out = response.translate_response(completion, model, msg_id)
    check_message(out)
    return out


def completion(
    message: dict[str, Any] | None = None,
    finish: str | None = "stop",
    matched: Any = None,
    usage: dict[str, Any] | None = None,
) -> dict[str, Any]:
    choice: dict[str, Any] = {
        "index": 0,
        "message": message if message is not None else {"role": "assistant", "content": "hi"},
        "finish_reason": finish,
        "logprobs": None,
    }
    if matched is not None:
        choice["stop_reason"] = matched
    return {
        "id": "chatcmpl-x",
        "object": "chat.completion",
        "created": 1,
        "model": "upstream-name",
        "choices": [choice],
        "usage": usage
        if usage is not None
        else {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
    }


def call(cid: str, name: str, arguments: Any) -> dict[str, Any]:
    return {"id": cid, "type": "function", "function": {"name": name, "arguments": arguments}}


def test_plain_text_reply_has_the_full_envelope() -> None:
    out = translate_response(completion(), "Qwen/Qwen3-8B", "msg_abc")
    assert out == {
        "id": "msg_abc",
        "type": "message",
        "role": "assistant",
        "model": "Qwen/Qwen3-8B",
        "content": [{"type": "text", "text": "hi"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 10,
            "output_tokens": 5,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        },
    }


def test_message_id_format() -> None:
    ids = {message_id() for _ in range(50)}
    assert len(ids) == 50
    for i in ids:
        assert re.fullmatch(r"msg_[A-Za-z0-9]{24}", i)


def test_blocks_come_in_order_thinking_text_tool_use() -> None:
    msg = {
        "role": "assistant",
        # tool_calls first in the dict: the order of blocks must not follow the keys.
        "tool_calls": [
            call("call_1", "Read", '{"path": "/etc/hosts"}'),
            call("call_2", "Ls", '{"dir": "/"}'),
        ],
        "content": "Reading it.",
        "reasoning_content": "Need the file.",
    }
    out = translate_response(completion(msg, "tool_calls"), "m", "msg_1")
    assert out["content"] == [
        {"type": "thinking", "thinking": "Need the file.", "signature": ""},
        {"type": "text", "text": "Reading it."},
        {"type": "tool_use", "id": "call_1", "name": "Read", "input": {"path": "/etc/hosts"}},
        {"type": "tool_use", "id": "call_2", "name": "Ls", "input": {"dir": "/"}},
    ]
    assert out["stop_reason"] == "tool_use"
    assert out["stop_sequence"] is None


@pytest.mark.parametrize(
    "msg",
    [
        {"role": "assistant", "content": None},
        {"role": "assistant", "content": ""},
        {"role": "assistant", "content": "", "reasoning_content": ""},
        {"role": "assistant", "content": None, "reasoning_content": None, "tool_calls": None},
        {"role": "assistant", "content": None, "tool_calls": []},
    ],
)
def test_blocks_only_when_they_have_content(msg: dict[str, Any]) -> None:
    out = translate_response(completion(msg), "m", "msg_1")
    assert out["content"] == []
    assert out["stop_reason"] == "end_turn"


def test_reasoning_only() -> None:
    msg = {"role": "assistant", "content": None, "reasoning_content": "hmm"}
    out = translate_response(completion(msg, "length"), "m", "msg_1")
    assert out["content"] == [{"type": "thinking", "thinking": "hmm", "signature": ""}]
    assert out["stop_reason"] == "max_tokens"


def test_tool_input_is_parsed_and_an_object_passes_through() -> None:
    msg = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            call("call_a", "A", '{"n": 1, "nested": {"x": [1, 2]}}'),
            call("call_b", "B", {"already": "object"}),
            call("call_c", "C", ""),
        ],
    }
    out = translate_response(completion(msg, "tool_calls"), "m", "msg_1")
    assert [b["input"] for b in out["content"]] == [
        {"n": 1, "nested": {"x": [1, 2]}},
        {"already": "object"},
        {},
    ]
    assert [b["id"] for b in out["content"]] == ["call_a", "call_b", "call_c"]


@pytest.mark.parametrize("bad", ['{"path": ', "not json", "[1, 2]", '"a string"', "42", None, 7])
def test_unparsable_arguments_become_empty_object_with_a_warning(
    bad: Any, caplog: pytest.LogCaptureFixture
) -> None:
    msg = {"role": "assistant", "content": None, "tool_calls": [call("call_z", "Z", bad)]}
    with caplog.at_level(logging.WARNING, logger="helexa.translate"):
        out = translate_response(completion(msg, "tool_calls"), "m", "msg_1")
    assert out["content"] == [{"type": "tool_use", "id": "call_z", "name": "Z", "input": {}}]
    assert any("unparsable" in r.getMessage() for r in caplog.records)


def test_parse_arguments_direct() -> None:
    assert parse_arguments('{"a": 1}') == {"a": 1}
    assert parse_arguments({"a": 1}) == {"a": 1}
    assert parse_arguments("   ") == {}
    assert parse_arguments("{") == {}


def test_tool_calls_without_a_function_are_skipped() -> None:
    msg = {
        "role": "assistant",
        "content": "ok",
        "tool_calls": [{"id": "x", "type": "function"}, "junk", call("call_1", "R", "{}")],
    }
    out = translate_response(completion(msg, "tool_calls"), "m", "msg_1")
    assert [b["type"] for b in out["content"]] == ["text", "tool_use"]


# -- stop reasons ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("finish", "matched", "tools", "expected"),
    [
        ("stop", None, False, ("end_turn", None)),
        (None, None, False, ("end_turn", None)),
        ("stop", "END", False, ("stop_sequence", "END")),
        ("stop", 151645, False, ("end_turn", None)),  # a stop token id, not a string
        ("length", None, False, ("max_tokens", None)),
        ("length", None, True, ("max_tokens", None)),
        ("tool_calls", None, True, ("tool_use", None)),
        ("stop", None, True, ("tool_use", None)),
        ("stop", "END", True, ("tool_use", None)),
        (None, None, True, ("tool_use", None)),
        ("tool_calls", None, False, ("end_turn", None)),
    ],
)
def test_stop_reason_table(
    finish: str | None, matched: Any, tools: bool, expected: tuple[str, str | None]
) -> None:
    assert stop_reason(finish, matched, tools) == expected
    msg: dict[str, Any] = {"role": "assistant", "content": "x"}
    if tools:
        msg["tool_calls"] = [call("call_1", "R", "{}")]
    out = translate_response(completion(msg, finish, matched), "m", "msg_1")
    assert (out["stop_reason"], out["stop_sequence"]) == expected


def test_finish_reason_length_is_max_tokens() -> None:
    out = translate_response(completion(finish="length"), "m", "msg_1")
    assert out["stop_reason"] == "max_tokens"


def test_stop_with_matched_string_is_stop_sequence() -> None:
    out = translate_response(completion(finish="stop", matched="END"), "m", "msg_1")
    assert out["stop_reason"] == "stop_sequence"
    assert out["stop_sequence"] == "END"


# -- usage -----------------------------------------------------------------------------------


def test_usage_with_cached_tokens() -> None:
    usage = {
        "prompt_tokens": 100,
        "completion_tokens": 7,
        "total_tokens": 107,
        "prompt_tokens_details": {"cached_tokens": 64},
    }
    out = translate_response(completion(usage=usage), "m", "msg_1")
    assert out["usage"] == {
        "input_tokens": 36,
        "output_tokens": 7,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 64,
    }


@pytest.mark.parametrize(
    "usage",
    [
        None,
        {},
        "junk",
        {"prompt_tokens": None, "completion_tokens": "5"},
        {"prompt_tokens": True, "completion_tokens": False},
        {"prompt_tokens": 3, "prompt_tokens_details": None},
    ],
)
def test_usage_missing_or_odd_fields_are_zero(usage: Any) -> None:
    u = usage_of(usage)
    assert u["output_tokens"] == 0
    assert u["cache_creation_input_tokens"] == 0
    assert u["cache_read_input_tokens"] == 0
    assert u["input_tokens"] in (0, 3)


def test_completion_without_usage_reports_zeros() -> None:
    c = completion()
    del c["usage"]
    out = translate_response(c, "m", "msg_1")
    assert out["usage"]["input_tokens"] == 0 and out["usage"]["output_tokens"] == 0


@pytest.mark.parametrize(
    "bad",
    [
        None,
        [],
        "text",
        {},
        {"choices": []},
        {"choices": "x"},
        {"choices": ["x"]},
        {"choices": [{"index": 0}]},
        {"choices": [{"index": 0, "message": "hi"}]},
    ],
)
def test_not_a_chat_completion_raises_value_error(bad: Any) -> None:
    with pytest.raises(ValueError):
        translate_response(bad, "m", "msg_1")


def test_model_is_the_one_given_not_the_upstream_name() -> None:
    out = translate_response(completion(), "resolved/id", "msg_1")
    assert out["model"] == "resolved/id"
