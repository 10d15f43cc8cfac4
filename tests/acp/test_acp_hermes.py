"""The Hermes `<tool_call>` fallback: well-formed blocks, the repair pass on broken JSON, what
stays prose, and the stream filter that holds a call back from the user."""

from __future__ import annotations

import json

import pytest

from helexa.acp.hermes import StreamFilter, loads_tolerant, parse, repair


def test_well_formed_blocks() -> None:
    text = (
        "Let me check.\n<tool_call>\n"
        '{"name": "read_file", "arguments": {"path": "a.py"}}\n</tool_call>\n'
        '<tool_call>{"name": "bash", "arguments": {"command": "ls"}}</tool_call>'
    )
    prose, calls = parse(text)
    assert prose == "Let me check."
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [
        ("read_file", {"path": "a.py"}),
        ("bash", {"command": "ls"}),
    ]
    assert len({c.id for c in calls}) == 2


@pytest.mark.parametrize(
    ("broken", "expected"),
    [
        ('{"a": 1,}', {"a": 1}),  # trailing comma
        ("{'a': 'it\\'s'}", {"a": "it's"}),  # single quotes
        ('{"a": True, "b": None}', {"a": True, "b": None}),  # Python literals
        ('{"a": {"b": [1, 2', {"a": {"b": [1, 2]}}),  # unclosed brackets
        ('{"a": "line1\nline2"}', {"a": "line1\nline2"}),  # raw newline in a string
        ('```json\n{"a": 1}\n```', {"a": 1}),  # code fence
        ('{a: "x"}', {"a": "x"}),  # bare key
        ('{"a": "unterminated', {"a": "unterminated"}),
    ],
)
def test_repair(broken: str, expected: object) -> None:
    assert loads_tolerant(broken) == expected
    assert json.loads(repair(broken)) == expected


def test_arguments_as_string_and_missing_close_tag() -> None:
    prose, calls = parse('<tool_call>{"name": "list_dir", "arguments": "{\\"path\\": \\".\\"}"')
    assert (
        prose == ""
        and calls[0].name == "list_dir"
        and json.loads(calls[0].arguments) == {"path": "."}
    )


def test_unusable_block_stays_prose() -> None:
    text = "I would use <tool_call>no json here</tool_call> maybe"
    assert parse(text) == (text, [])
    assert parse("plain answer") == ("plain answer", [])


def test_stream_filter_holds_the_call_back() -> None:
    f = StreamFilter()
    shown = [
        f.feed(p) for p in ["Sure", ", let me <to", "ol_ca", 'll>{"name": "bash"', "}</tool_call>"]
    ]
    assert "".join(shown) == "Sure, let me "
    assert f.captured == '<tool_call>{"name": "bash"}</tool_call>'
    g = StreamFilter()
    assert g.feed("a <t") == "a " and g.feed("able>") == "<table>" and g.finish() == ""
    h = StreamFilter()
    assert h.feed("ends with <tool") == "ends with " and h.finish() == "<tool"
