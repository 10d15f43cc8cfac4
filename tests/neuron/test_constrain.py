"""The grammar builder (helexa.neuron.constrain): what its grammars accept and reject, checked
with llguidance's own matcher over a byte-level vocabulary, and how a request picks one."""

from __future__ import annotations

import json
from typing import Any

import pytest

from helexa.neuron.constrain.grammar import Tool, build, check_schema
from helexa.neuron.constrain.plan import constraint_for
from helexa.neuron.openai.chat import parse_chat
from helexa.neuron.parse import OutputParser
from helexa.neuron.xml_calls import parse_xml_call
from helexa.wire.errors import ApiError

llguidance = pytest.importorskip("llguidance")


class _Bytes:
    """A tokenizer whose tokens are the 256 bytes, plus an end token."""

    def __init__(self) -> None:
        self.eos_token_id = 256
        self.bos_token_id = None
        self.tokens = [bytes([i]) for i in range(256)] + [b"<end>"]
        self.special_token_ids = [256]

    def __call__(self, s: bytes) -> list[int]:
        return list(s)


TOKENIZER = llguidance.LLTokenizer(llguidance.TokenizerWrapper(_Bytes()))


def matches(grammar: str, text: str) -> bool:
    """`text` is a complete output of `grammar`."""
    m = llguidance.LLMatcher(TOKENIZER, grammar, log_level=0)
    assert not m.is_error(), m.get_error()
    return m.consume_tokens(list(text.encode())) and m.is_accepting()


ORDER = {
    "type": "object",
    "properties": {
        "id": {"type": "integer"},
        "status": {"enum": ["open", "shipped"]},
        "customer": {
            "type": "object",
            "properties": {"name": {"type": "string"}, "vip": {"type": "boolean"}},
            "required": ["name", "vip"],
            "additionalProperties": False,
        },
        "items": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"sku": {"type": "string"}, "qty": {"type": "integer"}},
                "required": ["sku", "qty"],
                "additionalProperties": False,
            },
        },
    },
    "required": ["id", "status", "customer", "items"],
    "additionalProperties": False,
}
GOOD_ORDER = {
    "id": 7,
    "status": "open",
    "customer": {"name": "Ada", "vip": True},
    "items": [{"sku": "a-1", "qty": 2}, {"sku": "b", "qty": 1}],
}


def test_schema_grammar_accepts_matching_json_in_one_style() -> None:
    g = build(schema=ORDER)
    assert matches(g, json.dumps(GOOD_ORDER))
    assert matches(g, json.dumps({**GOOD_ORDER, "items": []}))
    assert not matches(g, json.dumps(GOOD_ORDER, separators=(",", ":")))  # one style only
    assert not matches(g, json.dumps(GOOD_ORDER, indent=2))


@pytest.mark.parametrize(
    "bad",
    [
        {**GOOD_ORDER, "status": "lost"},
        {k: v for k, v in GOOD_ORDER.items() if k != "customer"},
        {**GOOD_ORDER, "customer": {"name": "Ada"}},
        {**GOOD_ORDER, "items": [{"sku": "a", "qty": "two"}]},
        {**GOOD_ORDER, "extra": 1},
        [GOOD_ORDER],
    ],
)
def test_schema_grammar_rejects_what_does_not_match(bad: Any) -> None:
    assert not matches(build(schema=ORDER), json.dumps(bad))


def test_json_object_is_any_object() -> None:
    g = build(schema={"type": "object"})
    assert matches(g, '{"a": [1, {"b": null}]}') and matches(g, "{}")
    assert not matches(g, "[1]") and not matches(g, "hello")


READ = Tool("Read", {"type": "object", "properties": {"path": {"type": "string"}},
                     "required": ["path"], "additionalProperties": False})  # fmt: skip
LS = Tool("ls", None)


def call(name: str, args: dict[str, Any]) -> str:
    """A call as the Qwen templates write one."""
    return f'<tool_call>\n{{"name": "{name}", "arguments": {json.dumps(args)}}}\n</tool_call>'


def test_tool_grammar_is_the_templates_call_format_with_matching_arguments() -> None:
    g = build(tools=[READ, LS])
    assert matches(g, call("Read", {"path": "/etc/hosts"}))
    assert matches(g, call("ls", {"any": ["thing"]}))
    assert matches(g, call("Read", {"path": "a"}) + "\n" + call("ls", {}))
    assert not matches(g, call("Read", {"file": "a"}))
    assert not matches(g, call("Write", {"path": "a"}))
    assert not matches(g, "I will read it. " + call("Read", {"path": "a"}))
    assert not matches(g, "")


def test_call_count_is_capped() -> None:
    one, two = call("ls", {}), call("ls", {}) + "\n" + call("ls", {})
    assert matches(build(tools=[LS], max_calls=1), one)
    assert not matches(build(tools=[LS], max_calls=1), two)
    assert matches(build(tools=[LS], max_calls=2), two)
    assert not matches(build(tools=[LS], max_calls=2), two + "\n" + call("ls", {}))


def test_a_tool_name_that_needs_escaping() -> None:
    odd = Tool('qu"ote\\d', None)
    assert matches(build(tools=[odd]), call('qu\\"ote\\\\d', {}))


def test_tools_beside_a_schema_answer_either_way() -> None:
    g = build(schema=ORDER, tools=[READ])
    assert matches(g, json.dumps(GOOD_ORDER)) and matches(g, call("Read", {"path": "x"}))
    assert not matches(g, "plain prose")


def test_thinking_first_is_free_then_the_grammar_holds() -> None:
    g = build(schema={"type": "object"}, think="optional")
    assert matches(g, "<think>\nmaybe {not json} </thin\n</think>\n\n{}")
    assert matches(g, "{}")
    assert not matches(g, "<think>x</think>\n\nnot json")
    assert not matches(g, "prose first {}")
    closed = build(schema={"type": "object"}, think="closed")
    assert matches(closed, "\n\n{}") and matches(closed, "{}") and not matches(closed, "x{}")


@pytest.mark.parametrize(
    "schema,problem",
    [
        ({"type": "thing"}, "Invalid type: thing"),
        ({"$ref": "#/$defs/missing"}, "Pointer '/$defs/missing' does not exist"),
        ({"type": "string", "pattern": "(("}, "regex parse error:"),
        ([1], None),
    ],
)
def test_a_bad_schema_is_invalid_value_naming_it(schema: Any, problem: str | None) -> None:
    with pytest.raises(ApiError) as e:
        check_schema(schema, "response_format.json_schema.schema")
    err = e.value
    assert (err.status, err.code, err.param) == (
        400, "invalid_value", "response_format.json_schema.schema"
    )  # fmt: skip
    assert err.message.startswith("'response_format.json_schema.schema' ")
    assert problem is None or problem in err.message


def _chat(**extra: Any) -> Any:
    return parse_chat({"model": "m", "messages": [{"role": "user", "content": "hi"}], **extra})


TOOLS = [
    {"type": "function", "function": {"name": "Read", "parameters": dict(READ.parameters or {})}},
    {"type": "function", "function": {"name": "ls"}},
]
FORMAT = {"type": "json_schema", "json_schema": {"name": "order", "schema": ORDER, "strict": True}}


@pytest.mark.parametrize(
    "prompt,reasoning,after,thinks",
    [
        ("<|im_start|>assistant\n<think>\n", True, "</think>", False),
        ("<|im_start|>assistant\n<think>\n\n</think>\n\n", True, None, False),
        ("<|im_start|>assistant\n", True, None, True),
        ("<|im_start|>assistant\n", False, None, False),
    ],
)
def test_the_prompt_decides_where_the_grammar_starts(
    prompt: str, reasoning: bool, after: str | None, thinks: bool
) -> None:
    c = constraint_for(_chat(response_format=FORMAT), prompt, reasoning)
    assert c is not None and c.after == after
    assert matches(c.grammar, "<think>hm</think>\n\n" + json.dumps(GOOD_ORDER)) is thinks
    assert matches(c.grammar, json.dumps(GOOD_ORDER))


def test_which_requests_are_constrained() -> None:
    assert constraint_for(_chat(), "", False) is None
    assert constraint_for(_chat(tools=TOOLS), "", False) is None  # auto: free
    assert constraint_for(_chat(tools=TOOLS, tool_choice="none", response_format=FORMAT), "",
                          False) is not None  # fmt: skip
    named = constraint_for(
        _chat(tools=TOOLS, tool_choice={"type": "function", "function": {"name": "ls"}}), "", False
    )
    assert named is not None
    assert matches(named.grammar, call("ls", {}))
    assert not matches(named.grammar, call("Read", {"path": "x"}))
    assert not matches(named.grammar, call("ls", {}) + "\n" + call("ls", {}))
    required = constraint_for(_chat(tools=TOOLS, tool_choice="required"), "", False)
    assert required is not None
    assert matches(required.grammar, call("Read", {"path": "x"}) + "\n" + call("ls", {}))
    single = constraint_for(
        _chat(tools=TOOLS, tool_choice="required", parallel_tool_calls=False), "", False
    )
    assert single is not None
    assert not matches(single.grammar, call("Read", {"path": "x"}) + "\n" + call("ls", {}))


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "Read"}}])
def test_a_forced_call_wins_over_the_response_format(choice: Any) -> None:
    c = constraint_for(_chat(tools=TOOLS, tool_choice=choice, response_format=FORMAT), "", False)
    assert c is not None
    assert matches(c.grammar, call("Read", {"path": "x"}))
    assert not matches(c.grammar, json.dumps(GOOD_ORDER))
    auto = constraint_for(_chat(tools=TOOLS, response_format=FORMAT), "", False)
    assert auto is not None and matches(auto.grammar, json.dumps(GOOD_ORDER))


def test_the_schemas_a_grammar_enforces_are_checked_and_named() -> None:
    tools = [*TOOLS, {"type": "function", "function": {"name": "x", "parameters": {"type": 5}}}]
    with pytest.raises(ApiError) as e:
        constraint_for(_chat(tools=tools, tool_choice="required"), "", False)
    assert (e.value.code, e.value.param) == ("invalid_value", "tools[2].function.parameters")
    assert constraint_for(_chat(tools=tools), "", False) is None  # auto: nothing enforced
    bad = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "thing"}}}
    with pytest.raises(ApiError) as e:
        constraint_for(_chat(response_format=bad), "", False)
    assert e.value.param == "response_format.json_schema.schema"
    assert "Invalid type: thing" in e.value.message


def test_what_the_grammar_allows_the_parser_reads_as_calls() -> None:
    text = call("Read", {"path": "/tmp/a b"}) + "\n" + call("ls", {})
    g = constraint_for(_chat(tools=TOOLS, tool_choice="required"), "", False)
    assert g is not None and matches(g.grammar, text)
    parser = OutputParser(False, False, True)
    events = [e for ch in text for e in parser.feed(ch)] + parser.finish()
    assert [(c.name, json.loads(c.arguments)) for c in parser.tool_calls] == [
        ("Read", {"path": "/tmp/a b"}),
        ("ls", {}),
    ]
    assert parser.content == "" and len(events) == 2


def _streamed(text: str, cuts: list[int], **kw: Any) -> tuple[OutputParser, list[Any]]:
    parser = OutputParser(False, False, True, stream_calls=True, **kw)
    events: list[Any] = []
    for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True):
        events += parser.feed(text[a:b])
    return parser, events + parser.finish()


@pytest.mark.parametrize("step", [1, 2, 3, 7, 1000])
def test_forced_calls_stream_their_arguments_as_generated(step: int) -> None:
    args = {"path": "/a}b", "n": {"m": [1, {"k": "}"}]}}
    text = call("Read", args) + "\n" + call("ls", {})
    parser, events = _streamed(text, list(range(step, len(text), step)))
    kinds = [type(e).__name__ for e in events]
    assert kinds[0] == "CallStart" and kinds.count("CallStart") == 2
    assert kinds.index("ToolCall") < kinds.index("CallStart", 1)  # one call after the other
    for call_ in parser.tool_calls:
        sent = "".join(e.text for e in events if type(e).__name__ == "CallArgs"
                       and e.index == call_.index)  # fmt: skip
        assert sent == call_.arguments and call_.streamed
    assert json.loads(parser.tool_calls[0].arguments) == args
    assert [(c.index, c.name) for c in parser.tool_calls] == [(0, "Read"), (1, "ls")]
    starts = [e for e in events if type(e).__name__ == "CallStart"]
    assert [s.id for s in starts] == [c.id for c in parser.tool_calls]
    if step == 1:  # arguments go out before the call closes
        first_args = kinds.index("CallArgs")
        assert first_args < kinds.index("ToolCall") - 1
    assert parser.content == "" and parser.finish_reason == "tool_calls"


def test_a_streamed_call_cut_by_the_cap_keeps_what_was_generated() -> None:
    text = call("Read", {"path": "/etc/hosts"})
    parser = OutputParser(False, False, True, stream_calls=True)
    args_at = text.index('"arguments": ') + len('"arguments": ')
    cut = args_at + len('{"path": "/etc/hosts"}')  # the tail's `}` might have come next
    events = parser.feed(text[:cut]) + parser.finish(hit_cap=True)
    sent = "".join(e.text for e in events if type(e).__name__ == "CallArgs")
    assert parser.tool_calls[0].arguments == sent == '{"path": "/etc/hosts"}'
    assert [type(e).__name__ for e in events] == ["CallStart", "CallArgs", "CallArgs", "ToolCall"]
    assert parser.finish_reason == "length" and parser.content == ""


WRITE = Tool(
    "Write",
    {
        "type": "object",
        "properties": {
            "path": {"type": "string"},
            "lines": {"type": "integer"},
            "mode": {"type": "string", "enum": ["a", "w"]},
            "meta": {"type": "object"},
        },
        "required": ["path", "mode"],
    },
)


def xml_call(name: str, params: dict[str, str]) -> str:
    """A call as Qwen3-Coder's template writes one."""
    body = "".join(f"<parameter={k}>\n{v}\n</parameter>\n" for k, v in params.items())
    return f"<tool_call>\n<function={name}>\n{body}</function>\n</tool_call>"


def test_xml_call_grammar_follows_the_schema() -> None:
    g = build(tools=[WRITE], xml=True)
    text = xml_call("Write", {"path": "/a b\n</para", "lines": "3", "mode": "w"})
    assert matches(g, text)
    assert matches(g, xml_call("Write", {"path": "x", "mode": "a", "meta": '{"k": [1]}'}))
    assert not matches(g, xml_call("Write", {"path": "x"}))  # a required one missing
    assert not matches(g, xml_call("Write", {"path": "x", "lines": "three", "mode": "a"}))
    assert not matches(g, xml_call("Write", {"path": "x", "mode": "append"}))
    assert not matches(g, xml_call("Read", {"path": "x"}))
    assert not matches(build(tools=[WRITE]), text)  # Hermes is another grammar


def test_xml_calls_parse_into_typed_arguments() -> None:
    text = xml_call("Write", {"path": "42", "lines": "3", "mode": "w", "meta": '{"k": [1]}'})
    schemas = {"Write": dict(WRITE.parameters or {})}
    parser = OutputParser(False, False, True, stream_calls=True, schemas=schemas)
    events = [e for ch in text for e in parser.feed(ch)] + parser.finish()
    assert [type(e).__name__ for e in events][:2] == ["CallStart", "CallArgs"]
    call = parser.tool_calls[0]
    assert call.name == "Write" and call.arguments == parse_xml_call(text[11:-12], schemas)[1]
    assert json.loads(call.arguments) == {"path": "42", "lines": 3, "mode": "w", "meta": {"k": [1]}}
    assert parse_xml_call("<function=f>\nprose<parameter=a>\n1\n</parameter>\n</function>") is None
    assert parse_xml_call("<function=f>\n</function>") == ("f", "{}")


XML_PARAMS = {"path": 'a "b"\n</para\n\\é', "lines": "3", "mode": "w", "meta": '{"k": [1, "}"]}'}


@pytest.mark.parametrize("step", [1, 2, 3, 5, 13, 1000])
def test_forced_xml_calls_stream_json_arguments_as_generated(step: int) -> None:
    text = xml_call("Write", XML_PARAMS) + "\n" + xml_call("Write", {"path": "", "mode": "a"})
    schemas = {"Write": dict(WRITE.parameters or {})}
    parser, events = _streamed(text, list(range(step, len(text), step)), schemas=schemas)
    kinds = [type(e).__name__ for e in events]
    assert kinds.count("CallStart") == 2 and kinds.index("ToolCall") < kinds.index("CallStart", 1)
    whole = OutputParser(False, False, True, schemas=schemas)
    whole.feed(text)
    whole.finish()
    for streamed, parsed in zip(parser.tool_calls, whole.tool_calls, strict=True):
        sent = "".join(e.text for e in events if type(e).__name__ == "CallArgs"
                       and e.index == streamed.index)  # fmt: skip
        assert sent == streamed.arguments == parsed.arguments and streamed.streamed
    assert json.loads(parser.tool_calls[0].arguments) == {
        "path": 'a "b"\n</para\n\\é',
        "lines": 3,
        "mode": "w",
        "meta": {"k": [1, "}"]},
    }
    if step == 1:  # the string value streams: its characters go out before its `</parameter>`
        args = [e.text for e in events if type(e).__name__ == "CallArgs"]
        assert args[:5] == ["{", '"path":"', "a", " ", '\\"']
    assert parser.content == "" and parser.finish_reason == "tool_calls"


@pytest.mark.parametrize("cut", ["<parameter=pa", "<parameter=path>\nab\n</para", "lines>\n3"])
def test_a_streamed_xml_call_cut_by_the_cap_is_closed_json(cut: str) -> None:
    text = xml_call("Write", {"path": "ab", "lines": "3", "mode": "w"})
    parser = OutputParser(
        False, False, True, stream_calls=True, schemas={"Write": dict(WRITE.parameters or {})}
    )
    events = parser.feed(text[: text.index(cut) + len(cut)]) + parser.finish(hit_cap=True)
    sent = "".join(e.text for e in events if type(e).__name__ == "CallArgs")
    assert parser.tool_calls[0].arguments == sent
    assert (
        json.loads(sent)
        == {
            "<parameter=pa": {},
            "<parameter=path>\nab\n</para": {"path": "ab\n</para"},
            "lines>\n3": {"path": "ab", "lines": 3},
        }[cut]
    )
    assert parser.finish_reason == "length"


def test_auto_without_parallel_calls_is_prose_or_prose_and_one_valid_call() -> None:
    c = constraint_for(_chat(tools=TOOLS, parallel_tool_calls=False), "", True)
    assert c is not None and c.after is None
    g = c.grammar
    one = call("Read", {"path": "x"})
    assert matches(g, "Just an answer, <tool_ no call.") and matches(g, "")
    assert matches(g, "<think>hm</think>\n\nLet me look.\n" + one) and matches(g, one)
    assert not matches(g, one + "\n" + call("ls", {}))  # at most one call
    assert not matches(g, one + " and more")  # the call ends the reply
    assert not matches(g, "x " + call("Read", {"file": "x"}))  # its arguments match
    assert constraint_for(_chat(tools=TOOLS), "", True) is None  # parallel calls: free


def test_auto_with_a_schema_we_cant_enforce_stays_unconstrained() -> None:
    odd = {"type": "object", "properties": {"tags": {"type": "array", "uniqueItems": True}}}
    tools = [*TOOLS, {"type": "function", "function": {"name": "tag", "parameters": odd}}]
    assert constraint_for(_chat(tools=tools, parallel_tool_calls=False), "", False) is None
    with pytest.raises(ApiError) as e:  # asked for: enforced, or refused
        constraint_for(_chat(tools=tools, tool_choice="required"), "", False)
    assert e.value.param == "tools[2].function.parameters" and "uniqueItems" in e.value.message
