"""Compaction (CONTRACT §4): the budget, the estimate, what is never elided, the order (oldest
tool results first, then assistant prose), the 256-character floor, and tool-call pairing."""

from __future__ import annotations

from helexa.acp.compaction import budget, compact, estimate
from helexa.acp.history import Message, ToolCall

BIG = "x" * 3500  # 1000 tokens


def call(i: int) -> Message:
    return Message("assistant", "", tool_calls=[ToolCall(f"c{i}", "read_file", "{}")])


def result(i: int, text: str = BIG) -> Message:
    return Message("tool", text, tool_call_id=f"c{i}", name="read_file")


def tail() -> list[Message]:
    """Four short messages: the last 4 are never elided, so tests put them after the payloads."""
    return [
        Message("user", "u"),
        Message("assistant", "a"),
        Message("user", "b"),
        Message("assistant", "c"),
    ]


def test_budget_and_estimate() -> None:
    assert budget(8192, 1024) == 8192 - 1024 - 512
    assert budget(8192, None) == 8192 - 512
    assert estimate(Message("user", "a" * 35)) == 10 + 8
    assert estimate(Message("user", "", images=["data:,", "data:,"])) == 8 + 1024


def test_fits_untouched() -> None:
    h = [Message("system", "s"), Message("user", BIG), Message("assistant", BIG)]
    assert compact(h, 10_000, 1000) is h


def test_tool_results_first_oldest_first_then_stop() -> None:
    h = [Message("system", BIG), Message("user", "q")]
    for i in range(3):
        h += [call(i), result(i)]
    h += [Message("assistant", BIG)]
    h += tail()
    total = sum(estimate(m) for m in h)
    # room for everything but one big payload: only the oldest tool result goes
    out = compact(h, int(total - 500) + 512, None)
    assert out[3].content == f"(elided: {len(BIG)} bytes of tool result)"
    assert out[5].content == BIG and out[7].content == BIG and out[8].content == BIG
    assert h[3].content == BIG  # the stored history is not touched


def test_prose_after_all_tool_results() -> None:
    h = [
        Message("system", BIG),
        Message("user", BIG),
        Message("assistant", BIG),
        call(0),
        result(0),
    ]
    h += tail()
    out = compact(h, 100, None)  # far too small: everything elidable goes
    assert out[4].content == f"(elided: {len(BIG)} bytes of tool result)"
    assert out[2].content == f"(elided: {len(BIG)} bytes of assistant prose)"
    assert out[0].content == BIG and out[1].content == BIG  # system prompt, user turn


def test_order_tool_results_before_older_prose() -> None:
    h = [Message("user", "q"), Message("assistant", BIG), call(0), result(0)]
    h += tail()
    total = sum(estimate(m) for m in h)
    out = compact(h, int(total - 500) + 512, None)
    assert out[3].content.startswith("(elided:") and out[1].content == BIG


def test_last_four_and_short_payloads_kept() -> None:
    short = "y" * 255
    h = [Message("user", "q"), call(0), result(0, short), Message("assistant", short)]
    h += [call(1), result(1), Message("assistant", BIG), Message("user", "z")]
    out = compact(h, 10, None)
    assert out[2].content == short and out[3].content == short  # under 256 characters
    assert out[5].content == BIG and out[6].content == BIG  # among the last 4


def test_pairing_kept_and_bytes_counted() -> None:
    text = "é" * 300  # 600 bytes
    h = [Message("user", "q"), call(0), result(0, text), *tail()]
    out = compact(h, 10, None)
    assert [m.role for m in out] == [m.role for m in h]
    assert out[1].tool_calls == h[1].tool_calls
    assert out[2].tool_call_id == "c0" and out[2].content == "(elided: 600 bytes of tool result)"
