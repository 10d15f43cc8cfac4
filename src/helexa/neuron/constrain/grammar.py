"""llguidance grammars (Lark, JSON schemas inline via `%json`) for structured output and forced
tool calls, in the chat template's tool-call format: Hermes JSON, or Qwen3-Coder's XML.

Pure and torch-free: the daemon builds and checks grammars here; the worker compiles them
against the model's tokenizer. JSON is written in one fixed style, `{"a": 1, "b": [2, 3]}`
(what the templates' `tojson` and `json.dumps` write, so models are used to it), with no free
whitespace: a model can't spend its `max_tokens` on blanks.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from llguidance import LLMatcher

from helexa.neuron.openai.params import invalid_value
from helexa.neuron.xml_calls import is_text

JSON_STYLE = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
ANY_OBJECT: dict[str, Any] = {"type": "object"}
THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
# after `</think>` templates and models put a blank line before the answer
_THINK_GAP = r"/[ \n]{0,4}/"
CALL_TAIL = "}\n</tool_call>"
XML_TAIL = "</function>\n</tool_call>"
CALL_OPEN = "<tool_call>"
_NO_CALL = r"NO_CALL: /(.|\n)*/ & ~/(.|\n)*<tool_call>(.|\n)*/"  # text that opens no call
_THINK_RULE = f'think[lazy]: "{THINK_OPEN}" /(.|\\n)*/ "{THINK_CLOSE}"'


@dataclass(frozen=True, slots=True)
class Tool:
    """A function the model may be made to call; `parameters` is its arguments' JSON schema."""

    name: str
    parameters: Mapping[str, Any] | None = None


def _lit(text: str) -> str:
    """A Lark string literal (JSON's escapes are Lark's)."""
    return json.dumps(text, ensure_ascii=False)


def json_rule(schema: Mapping[str, Any]) -> str:
    """`%json {...}`: the schema in our JSON style."""
    styled = {**schema, "x-guidance": JSON_STYLE}
    return "%json " + json.dumps(styled, ensure_ascii=False, separators=(",", ":"))


def call_rule(tool: Tool) -> str:
    """One Hermes call after its `<tool_call>`, exactly as the Qwen templates render one:
    `<tool_call>\\n{"name": "f", "arguments": {...}}\\n</tool_call>`."""
    head = '\n{"name": ' + json.dumps(tool.name, ensure_ascii=False) + ', "arguments": '
    args = json_rule(tool.parameters if tool.parameters is not None else ANY_OBJECT)
    return f"{_lit(head)} {args} {_lit(CALL_TAIL)}"


def _xml_value(schema: Any) -> str:
    """A parameter's value in the XML form: a string is written raw (free text, or one of its
    `enum`), anything else as JSON."""
    if is_text(schema):
        choices = schema.get("enum")
        if isinstance(choices, list) and all(isinstance(c, str) for c in choices):
            return "(" + " | ".join(_lit(c) for c in choices) + ")"
        return "/(.|\\n)*/"
    return json_rule(schema if isinstance(schema, Mapping) else {})


def xml_call_rules(i: int, tool: Tool) -> list[str]:
    """One Qwen3-Coder call after its `<tool_call>`, as its template renders one:
    `<tool_call>\n<function=f>\n`, then
    `<parameter=k>\nvalue\n</parameter>\n` per argument (the required ones always, in the
    schema's order), then `</function>\n</tool_call>`."""
    params = tool.parameters or {}
    props = params.get("properties")
    props = props if isinstance(props, Mapping) else {}
    required = set(params.get("required") or ())
    rules, parts = [], []
    for k, (key, schema) in enumerate(props.items()):
        head, tail = _lit(f"<parameter={key}>\n"), _lit("\n</parameter>\n")
        lazy = "[lazy]" if _xml_value(schema).startswith("/") else ""
        rules.append(f"call_{i}_{k}{lazy}: {head} {_xml_value(schema)} {tail}")
        parts.append(f"call_{i}_{k}" + ("" if key in required else "?"))
    head = _lit(f"\n<function={tool.name}>\n")
    call = f"call_{i}: {head} {' '.join(parts)} {_lit(XML_TAIL)}"
    return [call, *rules]


def build(
    *,
    schema: Mapping[str, Any] | None = None,
    tools: Sequence[Tool] = (),
    max_calls: int | None = None,
    think: str | None = None,
    xml: bool = False,
    prose: bool = False,
) -> str:
    """The grammar of a whole reply: tool calls (one or more, at most `max_calls`, a line
    apart; Qwen3-Coder's XML form when `xml`) or a JSON value matching `schema`; at least one
    of the two is given. `prose` (tools only, one call): free text, or free text ending in one
    call, as `tool_choice: auto` without parallel calls.

    `think`: None when the reply starts with the answer; "optional" when the model may first
    write a `<think>…</think>` block (freely); "closed" when the worker starts the grammar right
    after a `</think>` (`Constraint.after`), so only the blank line before the answer remains.
    """
    rules: list[str] = []
    answers: list[str] = []
    if tools:
        for i, tool in enumerate(tools):
            rules.extend(xml_call_rules(i, tool) if xml else [f"call_{i}: {call_rule(tool)}"])
        one_of = "(" + " | ".join(f"call_{i}" for i in range(len(tools))) + ")"
        if prose:
            rules += [f"text_call[lazy]: /(.|\\n)*/ {_lit(CALL_OPEN)}", _NO_CALL]
            answers += ["NO_CALL", f"text_call {one_of}"]
        else:
            rules.append(f"call: {_lit(CALL_OPEN)} {one_of}")
            more = "*" if max_calls is None else f"~0..{max_calls - 1}"
            answers.append("call" if max_calls == 1 else f'call ("\\n" call){more}')
    if schema is not None:
        rules.append(f"answer: {json_rule(schema)}")
        answers.append("answer")
    if not answers:
        raise ValueError("a grammar needs a schema or tools")
    body = " | ".join(answers)
    if prose:  # free text holds any thinking
        start = f"start: {body}"
    elif think == "optional":
        start = f"start: (think {_THINK_GAP})? ({body})"
        rules.append(_THINK_RULE)
    elif think == "closed":
        start = f"start: {_THINK_GAP} ({body})"
    else:
        start = f"start: {body}"
    return "\n".join([start, *rules]) + "\n"


_CHECKED: OrderedDict[bytes, str] = OrderedDict()  # grammar digest -> _problem, LRU
_CHECKED_MAX = 512
_CHECKED_LOCK = threading.Lock()


def _problem(grammar: str) -> str:
    """llguidance's complaint about a grammar, "" when it compiles. Cached, as clients resend
    the same schema with every request; keyed by a digest, so large schemas aren't kept."""
    key = hashlib.blake2b(grammar.encode(), digest_size=16).digest()
    with _CHECKED_LOCK:  # requests check their schemas on the tokenizer threads
        found = _CHECKED.get(key)
        if found is not None:
            _CHECKED.move_to_end(key)
            return found
    is_error, messages = LLMatcher.validate_grammar_with_warnings(grammar)
    problem = messages[0] if is_error and messages else ""
    with _CHECKED_LOCK:
        _CHECKED[key] = problem
        if len(_CHECKED) > _CHECKED_MAX:
            _CHECKED.popitem(last=False)
    return problem


def _first_line(message: str) -> str:
    """llguidance's error without its position and source excerpt."""
    line = message.strip().splitlines()[0] if message.strip() else message
    for prefix in ("failed to compile JSON schema: ",):
        at = line.find(prefix)
        if at >= 0:
            line = line[at + len(prefix) :]
    return line.strip()


def check_schema(schema: Any, param: str) -> dict[str, Any]:
    """A JSON schema we can enforce, or 400 `invalid_value` naming `param` and the problem."""
    if not isinstance(schema, dict):
        raise invalid_value(param, "must be a JSON schema object")
    try:
        grammar = f"start: {json_rule(schema)}"
    except (TypeError, ValueError) as e:
        raise invalid_value(param, f"is not valid JSON: {e}") from None
    problem = _problem(grammar)
    if problem:
        raise invalid_value(param, f"is not a supported JSON schema: {_first_line(problem)}")
    return schema
