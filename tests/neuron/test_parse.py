"""The streaming output parser: every rule, then split-invariance.

The property part cuts sample outputs (reasoning, text, tool calls, invalid spans, unclosed
spans, stray markers, multi-byte characters) at every character boundary (every single cut,
every pair of cuts, one character per feed, and random partitions) and checks that the events
equal the one-shot parse and that no run of deltas ever splits a marker.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helexa.neuron.parse import (
    MARKERS,
    ContentDelta,
    Event,
    OutputParser,
    ReasoningDelta,
    ToolCall,
    new_id,
    parse_call_body,
)


def counter_ids() -> Callable[[], str]:
    n = itertools.count()
    return lambda: f"call_{next(n)}"


def make(reasoning: bool = True, start: bool = False, tools: bool = True) -> OutputParser:
    return OutputParser(reasoning, start, tools, new_call_id=counter_ids())


def run(
    pieces: list[str], *, cap: bool = False, **kw: bool
) -> tuple[OutputParser, list[list[Event]]]:
    """Each piece one feed (1 token each), then finish; the event batches per call."""
    p = make(**kw)
    batches = [p.feed(s, 1) for s in pieces]
    batches.append(p.finish(cap))
    return p, batches


def flat(batches: list[list[Event]]) -> list[Event]:
    return [e for b in batches for e in b]


def merged(events: list[Event]) -> list[Event]:
    """Adjacent deltas of one kind joined: the split-independent view of a stream."""
    out: list[Event] = []
    for e in events:
        if out and type(e) is type(out[-1]) and isinstance(e, ContentDelta | ReasoningDelta):
            out[-1] = type(e)(out[-1].text + e.text)  # type: ignore[union-attr]
        else:
            out.append(e)
    return out


def one_shot(text: str, *, cap: bool = False, **kw: bool) -> list[Event]:
    _, batches = run([text], cap=cap, **kw)
    return merged(flat(batches))


# -- ids ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["chatcmpl-", "cmpl-", "resp_", "msg_", "rs_", "fc_", "call_"])
def test_new_id_shape(prefix: str) -> None:
    ids = {new_id(prefix) for _ in range(50)}
    assert len(ids) == 50
    for i in ids:
        assert re.fullmatch(re.escape(prefix) + r"[A-Za-z0-9]{24}", i)


def test_default_call_ids_are_fresh() -> None:
    p = OutputParser(False, False, True)
    evs = p.feed('<tool_call>{"name":"a","arguments":{}}</tool_call>' * 2, 2) + p.finish()
    ids = [e.id for e in evs if isinstance(e, ToolCall)]
    assert len(ids) == 2 and ids[0] != ids[1]
    assert all(re.fullmatch(r"call_[A-Za-z0-9]{24}", i) for i in ids)


# -- reasoning ----------------------------------------------------------------------------------


def test_plain_text_is_content() -> None:
    p, b = run(["Hello", " world"])
    assert flat(b) == [ContentDelta("Hello"), ContentDelta(" world")]
    assert p.content == "Hello world" and p.reasoning == "" and p.finish_reason == "stop"


def test_think_span_is_reasoning_and_whitespace_after_close_dropped() -> None:
    p, b = run(["<think>\nHmm.\n</think>\n\n  The answer."])
    assert flat(b) == [ReasoningDelta("\nHmm.\n"), ContentDelta("The answer.")]
    assert p.reasoning == "\nHmm.\n" and p.content == "The answer."


def test_whitespace_after_close_dropped_across_feeds() -> None:
    p, b = run(["<think>x</think>", "\n", " \n", "Hi \n", "there"])
    assert p.content == "Hi \nthere"
    assert flat(b)[0] == ReasoningDelta("x")


def test_start_in_reasoning_when_prompt_opened_think() -> None:
    p, b = run(["Let me see", ".</think>", "\n\nDone"], reasoning=True, start=True)
    assert merged(flat(b)) == [ReasoningDelta("Let me see."), ContentDelta("Done")]
    assert p.reasoning_tokens == 2


def test_start_in_reasoning_implies_reasoning_parsing() -> None:
    p, _ = run(["a</think>b"], reasoning=False, start=True)
    assert (p.reasoning, p.content) == ("a", "b")


def test_cap_before_close_is_all_reasoning() -> None:
    p, b = run(["<think>long thought", " </thi"], cap=True)
    assert merged(flat(b)) == [ReasoningDelta("long thought </thi")]
    assert p.content == "" and p.finish_reason == "length" and p.hit_cap


def test_eos_inside_think_is_all_reasoning() -> None:
    p, _ = run(["<think>unfinished"])
    assert p.reasoning == "unfinished" and p.content == "" and p.finish_reason == "stop"


def test_reasoning_off_leaves_think_in_content() -> None:
    p, b = run(["<think>x</think> y"], reasoning=False)
    assert p.content == "<think>x</think> y" and p.reasoning == ""
    assert merged(flat(b)) == [ContentDelta("<think>x</think> y")]


def test_tool_call_inside_reasoning_is_reasoning_text() -> None:
    span = '<tool_call>{"name":"a","arguments":{}}</tool_call>'
    p, _ = run([f"<think>{span}</think>ok"])
    assert p.reasoning == span and p.tool_calls == [] and p.content == "ok"


def test_reasoning_tokens_count_tokens_fed_in_reasoning_mode() -> None:
    p = make()
    p.feed("Hi ", 1)  # content
    p.feed("<think>", 1)  # opens reasoning: counts
    p.feed("a", 1)
    p.feed("b", 2)
    p.feed("</think>", 1)  # fed while reasoning: counts
    p.feed("\n\nok", 2)
    p.finish()
    assert p.reasoning_tokens == 5
    assert (p.reasoning, p.content) == ("ab", "Hi ok")


# -- tool calls ---------------------------------------------------------------------------------


CALL = '<tool_call>\n{"name": "Read", "arguments": {"path": "/etc/hosts", "n": 1}}\n</tool_call>'


def test_hermes_call_parsed_with_compact_args() -> None:
    p, b = run([CALL])
    assert flat(b) == [ToolCall(0, "call_0", "Read", '{"path":"/etc/hosts","n":1}')]
    assert p.content == "" and p.saw_tool_call and p.finish_reason == "tool_calls"


@pytest.mark.parametrize(
    "body,expected",
    [
        ('{"name":"f","arguments":"{\\"a\\": [1, 2]}"}', ("f", '{"a":[1,2]}')),
        ('{"name":"f","parameters":{"a":true}}', ("f", '{"a":true}')),
        ('{"name":"f"}', ("f", "{}")),
        ('{"name":"f","arguments":{"t":"héllo 🎉"}}', ("f", '{"t":"héllo 🎉"}')),
        ('  {"arguments":{"x":null},"name":"g"}  ', ("g", '{"x":null}')),
    ],
)
def test_call_body_forms(body: str, expected: tuple[str, str]) -> None:
    assert parse_call_body(body) == expected


@pytest.mark.parametrize(
    "body",
    [
        "{not json}",
        '{"arguments":{}}',  # no name
        '{"name":"","arguments":{}}',
        '{"name":3,"arguments":{}}',
        '{"name":"f","arguments":[1]}',
        '{"name":"f","arguments":"not json"}',
        '{"name":"f","arguments":"[1]"}',
        '{"name":"f","arguments":{"x":NaN}}',
        '["f"]',
        "",
    ],
)
def test_invalid_span_stays_in_content_verbatim(body: str) -> None:
    assert parse_call_body(body) is None
    text = f"before <tool_call>{body}</tool_call> after"
    p, b = run([text])
    assert p.content == text and p.tool_calls == [] and p.finish_reason == "stop"
    assert merged(flat(b)) == [ContentDelta(text)]


def test_text_before_and_between_calls_stays_whitespace_after_last_dropped() -> None:
    text = f"I'll look.\n{CALL}\nand then\n{CALL}\n\n  \n"
    p, b = run([text])
    assert merged(flat(b)) == [
        ContentDelta("I'll look.\n"),
        ToolCall(0, "call_0", "Read", '{"path":"/etc/hosts","n":1}'),
        ContentDelta("\nand then\n"),
        ToolCall(1, "call_1", "Read", '{"path":"/etc/hosts","n":1}'),
    ]
    assert p.content == "I'll look.\n\nand then\n"


def test_whitespace_only_between_calls_is_dropped() -> None:
    p, _ = run([f"{CALL}\n{CALL}\n"])
    assert p.content == "" and [c.index for c in p.tool_calls] == [0, 1]


def test_whitespace_before_invalid_span_after_call_is_kept() -> None:
    p, _ = run([f"{CALL}\n<tool_call>oops</tool_call>"])
    assert p.content == "\n<tool_call>oops</tool_call>" and len(p.tool_calls) == 1


def test_cap_inside_open_span_keeps_it_in_content() -> None:
    p, b = run(['Sure <tool_call>{"name": "Read", "argu'], cap=True)
    assert merged(flat(b)) == [ContentDelta('Sure <tool_call>{"name": "Read", "argu')]
    assert p.tool_calls == [] and p.finish_reason == "length"


def test_cap_after_a_call_is_length() -> None:
    p, _ = run([CALL, " more"], cap=True)
    assert p.saw_tool_call and p.finish_reason == "length"


def test_eos_inside_open_span_after_a_call() -> None:
    p, _ = run([CALL, "\n<tool_call>{"])
    assert p.content == "\n<tool_call>{" and p.finish_reason == "tool_calls"


def test_tools_off_parses_nothing() -> None:
    p, _ = run([CALL], tools=False)
    assert p.content == CALL and p.tool_calls == [] and p.finish_reason == "stop"


def test_think_then_call() -> None:
    _, b = run(["<think>need file</think>\n\n", CALL, "\n"])
    assert merged(flat(b)) == [
        ReasoningDelta("need file"),
        ToolCall(0, "call_0", "Read", '{"path":"/etc/hosts","n":1}'),
    ]


def test_nested_open_marker_makes_the_span_invalid() -> None:
    text = '<tool_call>{"name":"a"<tool_call>{"name":"b"}</tool_call>'
    p, _ = run([text])
    assert p.content == text and p.tool_calls == []


# -- hold-back ----------------------------------------------------------------------------------


def test_marker_prefix_is_held_until_certain() -> None:
    p = make()
    assert p.feed("Hello <thi", 1) == [ContentDelta("Hello ")]
    assert p.feed("s is not a tag", 1) == [ContentDelta("<this is not a tag")]
    assert p.feed(" <", 1) == [ContentDelta(" ")]
    assert p.feed("/tool_ca", 1) == []
    assert p.feed("ll> stray", 1) == [ContentDelta("</tool_call> stray")]
    assert p.feed(" a<", 1) == [ContentDelta(" a")]
    assert p.finish() == [ContentDelta("<")]


def test_lone_lt_followed_by_lt_is_released() -> None:
    p = make()
    assert p.feed("a<<", 1) == [ContentDelta("a<")]
    assert p.feed("b", 1) == [ContentDelta("<b")]


def test_marker_split_one_char_per_feed() -> None:
    p = make()
    out: list[Event] = []
    for ch in "<think>ab</think>c":
        out += p.feed(ch, 1)
    out += p.finish()
    assert merged(out) == [ReasoningDelta("ab"), ContentDelta("c")]
    assert p.reasoning_tokens == len("<think>ab</think>")


def test_feed_after_finish_raises_and_finish_is_idempotent() -> None:
    p = make()
    p.feed("x", 1)
    assert p.finish() == []
    assert p.finish() == [] and p.content == "x"
    with pytest.raises(RuntimeError):
        p.feed("y", 1)


def test_adjacent_deltas_in_one_feed_are_coalesced() -> None:
    p = make()
    evs = p.feed(f"{CALL}\n\nText after", 3)
    assert evs[1:] == [ContentDelta("\n\nText after")]


# -- split invariance ---------------------------------------------------------------------------

SAMPLES = [
    "<think>\nLet me think about 日本 and 🎉.\n</think>\n\nThe answer is 42 — é.",
    'Sure.\n<tool_call>\n{"name": "Read", "arguments": {"path": "/etc/hosts"}}\n</tool_call>\n',
    '<tool_call>{"name":"a","arguments":{}}</tool_call>\n \n<tool_call>{"name":"b",'
    '"parameters":{"ü":"✓"}}</tool_call>\n\n',
    "<tool_call>{not json}</tool_call> tail 日本",
    "<think>plan</think>\n"
    '<tool_call>{"name":"a","arguments":"{\\"x\\":1}"}</tool_call> then '
    '<tool_call>{"name":"b","arguments":{}}</tool_call>',
    "a < b <thinking> </thinker> <tool_calls> <tool_cal é <<think>>",
    "<think>never closed </thi",
    'x <tool_call>{"name": "a"',
    "</tool_call> and </think> in content",
    '<tool_call>{"name":"ok"}</tool_call>\n<tool_call>{"bad":1}</tool_call>\ntext',
    "<think></think>",
    '<think><think></think></think><tool_call><tool_call>{"name":"z"}</tool_call>',
    "\n\n<think>\n🎉🎉</think>\n\n\n",
    'done</think> <tool_call>{"name":"q","arguments":{"s":"</tool_call"}}</tool_call>',
]
CONFIGS = [
    dict(reasoning=r, start=s, tools=t)
    for r, s, t in itertools.product([True, False], [False, True], [True, False])
]


def straddles(text: str, bounds: list[int]) -> bool:
    for m in MARKERS:
        for mt in re.finditer(re.escape(m), text):
            if any(mt.start() < b < mt.end() for b in bounds):
                return True
    return False


def check_no_partial_markers(events: list[Event]) -> None:
    """Within every run of same-kind deltas, no marker straddles a delta boundary."""
    run_text, kind = "", None
    bounds: list[int] = []
    for e in [*events, None]:
        k = type(e) if isinstance(e, ContentDelta | ReasoningDelta) else None
        if k is not kind or k is None:
            assert not straddles(run_text, bounds), (run_text, bounds)
            run_text, bounds, kind = "", [], k
        if k is not None:
            assert isinstance(e, ContentDelta | ReasoningDelta)
            if run_text:
                bounds.append(len(run_text))
            run_text += e.text


def check_split(text: str, cuts: list[int], expected: list[Event], cap: bool, **kw: bool) -> None:
    edges = [0, *cuts, len(text)]
    pieces = [text[a:b] for a, b in itertools.pairwise(edges)]
    _, batches = run(pieces, cap=cap, **kw)
    events = flat(batches)
    assert merged(events) == expected, (pieces, kw)
    check_no_partial_markers(events)


def partitions(n: int, max_pairs: int) -> Iterator[list[int]]:
    for i in range(1, n):
        yield [i]
    if n <= max_pairs:
        for i, j in itertools.combinations(range(1, n), 2):
            yield [i, j]
    yield list(range(1, n))


@pytest.mark.parametrize("cap", [False, True])
@pytest.mark.parametrize("text", SAMPLES)
def test_every_split_equals_one_shot(text: str, cap: bool) -> None:
    for kw in CONFIGS:
        expected = one_shot(text, cap=cap, **kw)
        # pairs of cuts for the main configuration only: the rest get single cuts and chars
        main = kw == {"reasoning": True, "start": False, "tools": True}
        for cuts in partitions(len(text), 200 if main else 0):
            check_split(text, cuts, expected, cap, **kw)


@pytest.mark.parametrize("text", SAMPLES)
def test_reasoning_tokens_char_by_char(text: str) -> None:
    """One token per character: the count equals the characters consumed in reasoning mode
    (the markers that open or close it included), whatever the order of spans."""
    p = make()
    for ch in text:
        p.feed(ch, 1)
    p.finish()
    one = make()
    one.feed(text, len(text))
    one.finish()
    assert (p.content, p.reasoning, p.tool_calls) == (one.content, one.reasoning, one.tool_calls)
    assert p.reasoning_tokens <= len(text)
    if "<think>" not in text:
        assert p.reasoning_tokens == 0


@settings(max_examples=300, deadline=None)
@given(
    parts=st.lists(
        st.sampled_from(
            [
                "<think>",
                "</think>",
                "<tool_call>",
                "</tool_call>",
                '{"name":"f","arguments":{"a":"é"}}',
                '{"name":',
                "{bad",
                "\n",
                " ",
                "text",
                "日本",
                "🎉",
                "<",
                "</",
                "<tool",
                "call>",
                ">",
            ]
        ),
        max_size=14,
    ),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=12),
    reasoning=st.booleans(),
    start=st.booleans(),
    tools=st.booleans(),
    cap=st.booleans(),
)
def test_random_partitions(
    parts: list[str],
    cuts: list[int],
    reasoning: bool,
    start: bool,
    tools: bool,
    cap: bool,
) -> None:
    text = "".join(parts)
    kw = dict(reasoning=reasoning, start=start, tools=tools)
    expected = one_shot(text, cap=cap, **kw)
    cut_set = sorted({c for c in cuts if 0 < c < len(text)})
    check_split(text, cut_set, expected, cap, **kw)
    # the split never loses text: content + reasoning + spans account for everything
    p, _ = run([text], cap=cap, **kw)
    assert len(p.content) + len(p.reasoning) <= len(text)


def test_partial_marker_checker_catches_a_split() -> None:
    """The checker used above is not vacuous."""
    with pytest.raises(AssertionError):
        check_no_partial_markers([ContentDelta("a<thi"), ContentDelta("nk>b")])
    with pytest.raises(AssertionError):
        check_no_partial_markers(
            [ReasoningDelta("<"), ReasoningDelta("/tool_"), ReasoningDelta("call>")]
        )
    check_no_partial_markers([ContentDelta("a<thi"), ReasoningDelta("x"), ContentDelta("nk>")])
