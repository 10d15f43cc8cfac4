"""Qwen3-Coder's XML tool calls: the body of a `<tool_call>` span,
`<function=f>\\n<parameter=k>\\nvalue\\n</parameter>\\n…</function>`, → (name, JSON arguments).

A value is text; it stays a string where the tool's schema says `string` (or a string `enum`, or
the text isn't JSON), and is read as JSON otherwise, as vLLM's qwen3_coder parser does.

`XmlArgs` turns a call that a grammar forces into JSON arguments as it is generated, so XML calls
stream like Hermes ones.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

_FUNCTION = re.compile(r"\s*<function=([^>\n]+)>\n?(.*)</function>\s*\Z", re.S)
_PARAMETER = re.compile(r"<parameter=([^>\n]+)>\n?(.*?)\n?</parameter>", re.S)
XML_HEAD = re.compile(r"\s*<function=([^>\n]+)>")
_PARAM_HEAD = re.compile(r"\s*<parameter=([^>\n]+)>\n?")
_PARAM_END = "</parameter>"
_VALUE_END = "\n" + _PARAM_END


def is_xml_call(body: str) -> bool:
    return body.lstrip().startswith("<function=")


def is_text(schema: Any) -> bool:
    """A value written raw in XML calls: a string, or an `enum` of strings."""
    if not isinstance(schema, Mapping):
        return False
    if "type" in schema:
        return schema["type"] == "string"
    choices = schema.get("enum")
    return isinstance(choices, list) and bool(choices) and all(isinstance(c, str) for c in choices)


def _props(schemas: Mapping[str, Mapping[str, Any]] | None, name: str) -> Mapping[str, Any]:
    props = ((schemas or {}).get(name) or {}).get("properties")
    return props if isinstance(props, Mapping) else {}


def _value(text: str, schema: Any) -> Any:
    if is_text(schema):
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_xml_call(
    body: str, schemas: Mapping[str, Mapping[str, Any]] | None = None
) -> tuple[str, str] | None:
    """(name, compact JSON arguments), or None when `body` isn't one well-formed call;
    `schemas`: each tool's parameters schema, by name."""
    m = _FUNCTION.match(body)
    if m is None:
        return None
    name, inner = m.group(1).strip(), m.group(2)
    if not name:
        return None
    props = _props(schemas, name)
    args: dict[str, Any] = {}
    end = 0
    for p in _PARAMETER.finditer(inner):
        if inner[end : p.start()].strip():
            return None  # text between parameters: not a call
        key = p.group(1).strip()
        args[key] = _value(p.group(2), props.get(key))
        end = p.end()
    if inner[end:].strip():
        return None
    return name, _dumps(args)


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _held(text: str) -> int:
    """Length of the suffix of a value that may start its `\n</parameter>`."""
    for n in range(min(len(text), len(_VALUE_END) - 1), 0, -1):
        if _VALUE_END.startswith(text[-n:]):
            return n
    return 0


class XmlArgs:
    """One call's JSON arguments, built as its body (what follows `<tool_call>`) grows: `{`,
    then `"k":` and the value per parameter (a text value streams its characters, any other
    goes out whole at its `</parameter>`), `}` at the end. The parts join into exactly what
    `parse_xml_call` gives for the whole body."""

    __slots__ = ("_key", "_out", "_pos", "_props", "_sent", "_text", "parts")

    def __init__(self, name: str, start: int, schemas: Mapping[str, Mapping[str, Any]] | None):
        self._props = _props(schemas, name)
        self._pos = start  # where the next parameter (or `</function>`) is looked for
        self._key: str | None = None  # the parameter whose value is open
        self._text = False  # that value is written as a JSON string
        self._sent = 0  # how much of it went out
        self.parts: list[str] = ["{"]
        self._out = 0  # parts handed out

    def feed(self, body: str) -> str:
        """The body so far → the arguments it adds."""
        while self._step(body):
            pass
        return self._new()

    def close(self, body: str) -> str:
        """The call ended (or was cut): its last arguments, the object closed."""
        while self._step(body):
            pass
        if self._key is not None:  # cut inside a value: what was generated of it
            self._end_value(body[self._pos :])
        self.parts.append("}")
        return self._new()

    def _new(self) -> str:
        text = "".join(self.parts[self._out :])
        self._out = len(self.parts)
        return text

    def _step(self, body: str) -> bool:
        if self._key is None:
            m = _PARAM_HEAD.match(body, self._pos)
            if m is None or (m.end() == len(body) and not m.group(0).endswith("\n")):
                return False  # no parameter (yet), or its newline may still come
            self._key = m.group(1).strip()
            self._text = is_text(self._props.get(self._key))
            self._pos, self._sent = m.end(), 0
            comma = "," if len(self.parts) > 1 else ""
            self.parts.append(comma + _dumps(self._key) + ":" + ('"' if self._text else ""))
            return True
        value = body[self._pos :]
        end = value.find(_PARAM_END)
        if end < 0:
            if self._text:
                self._send(value[: len(value) - _held(value)])
            return False
        self._end_value(value[:end].removesuffix("\n"))
        self._pos += end + len(_PARAM_END)
        return True

    def _send(self, value: str) -> None:
        if len(value) > self._sent:
            self.parts.append(_dumps(value[self._sent :])[1:-1])
            self._sent = len(value)

    def _end_value(self, value: str) -> None:
        if self._text:
            self._send(value)
            self.parts.append('"')
        else:
            self.parts.append(_dumps(_value(value, self._props.get(self._key or ""))))
        self._key = None
