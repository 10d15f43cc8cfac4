"""Qwen3-Coder's XML tool calls: the body of a `<tool_call>` span,
`<function=f>\\n<parameter=k>\\nvalue\\n</parameter>\\n…</function>`, → (name, JSON arguments).

A value is text; it stays a string where the tool's schema says `string` (or a string `enum`, or
the text isn't JSON), and is read as JSON otherwise, as vLLM's qwen3_coder parser does.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

_FUNCTION = re.compile(r"\s*<function=([^>\n]+)>\n?(.*)</function>\s*\Z", re.S)
_PARAMETER = re.compile(r"<parameter=([^>\n]+)>\n?(.*?)\n?</parameter>", re.S)


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
    props = ((schemas or {}).get(name) or {}).get("properties")
    props = props if isinstance(props, Mapping) else {}
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
    return name, json.dumps(args, ensure_ascii=False, separators=(",", ":"))
