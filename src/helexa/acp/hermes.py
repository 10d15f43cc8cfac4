"""Fallback for endpoints that hand tool calls back as text: Hermes-style `<tool_call>` blocks.

Only used when a reply has no native tool calls. Small models break the JSON in predictable ways
(code fences, trailing commas, single quotes, Python literals, a missing closing brace or tag),
so parsing is tolerant and runs a repair pass before giving up on a block.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from helexa.acp.history import ToolCall, new_call_id

OPEN = "<tool_call>"
CLOSE = "</tool_call>"
_FENCE = re.compile(r"^\s*```[a-zA-Z]*\s*|\s*```\s*$")
_LITERALS = {"True": "true", "False": "false", "None": "null"}


def loads_tolerant(text: str) -> Any:
    """`json.loads`, then the same after `repair`; raises ValueError when both fail."""
    try:
        return json.loads(text)
    except ValueError:
        return json.loads(repair(text))


def repair(text: str) -> str:
    """Best-effort fix of almost-JSON: fences stripped, single-quoted strings and raw newlines in
    strings fixed, bare keys quoted, Python literals mapped, trailing commas dropped, open
    strings and brackets closed."""
    text = _FENCE.sub("", text.strip())
    out: list[str] = []
    stack: list[str] = []
    quote: str | None = None
    i = 0
    while i < len(text):
        c = text[i]
        if quote is not None:
            if c == "\\" and i + 1 < len(text):
                nxt = text[i + 1]
                out.append("'" if nxt == "'" and quote == "'" else c + nxt)
                i += 2
                continue
            if c == quote:
                out.append('"')
                quote = None
            elif c == '"':
                out.append('\\"')
            elif c == "\n":
                out.append("\\n")
            else:
                out.append(c)
        elif c in "\"'":
            quote = c
            out.append('"')
        elif c in "{[":
            stack.append("}" if c == "{" else "]")
            out.append(c)
        elif c in "}]":
            _drop_trailing_comma(out)
            if stack:
                stack.pop()
            out.append(c)
        elif c.isalpha():
            j = i
            while j < len(text) and (text[j].isalnum() or text[j] == "_"):
                j += 1
            word = text[i:j]
            if text[j:].lstrip().startswith(":"):  # a bare key
                word = f'"{word}"'
            out.append(_LITERALS.get(word, word))
            i = j
            continue
        else:
            out.append(c)
        i += 1
    if quote is not None:
        out.append('"')
    _drop_trailing_comma(out)
    out.extend(reversed(stack))
    return "".join(out)


def _drop_trailing_comma(out: list[str]) -> None:
    j = len(out) - 1
    while j >= 0 and out[j].isspace():
        j -= 1
    if j >= 0 and out[j] == ",":
        del out[j]


def parse_block(body: str) -> ToolCall | None:
    """One block's `{"name": ..., "arguments": {...}}` as a ToolCall, or None if unusable."""
    try:
        obj = loads_tolerant(body)
    except ValueError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):
        try:
            args = loads_tolerant(args)
        except ValueError:
            return ToolCall(new_call_id(), obj["name"], args)
    return ToolCall(new_call_id(), obj["name"], json.dumps(args, ensure_ascii=False))


def parse(text: str) -> tuple[str, list[ToolCall]]:
    """Split `text` into the prose outside `<tool_call>` blocks and the calls they hold (a last
    block may lack its closing tag)."""
    prose: list[str] = []
    calls: list[ToolCall] = []
    rest = text
    while (start := rest.find(OPEN)) >= 0:
        prose.append(rest[:start])
        body = rest[start + len(OPEN) :]
        end = body.find(CLOSE)
        chunk, rest = (body, "") if end < 0 else (body[:end], body[end + len(CLOSE) :])
        call = parse_block(chunk)
        if call is None:
            prose.append(OPEN + chunk + ("" if end < 0 else CLOSE))
        else:
            calls.append(call)
    prose.append(rest)
    return "".join(prose).strip() if calls else text, calls


@dataclass
class StreamFilter:
    """Holds back streamed text from the first `<tool_call>` on, so a fallback call is not shown
    to the user as prose; `feed` returns what may be shown now."""

    held: list[str] = field(default_factory=list)
    _tail: str = ""
    _capturing: bool = False

    def feed(self, text: str) -> str:
        if self._capturing:
            self.held.append(text)
            return ""
        buf = self._tail + text
        at = buf.find(OPEN)
        if at >= 0:
            self._capturing = True
            self._tail = ""
            self.held.append(buf[at:])
            return buf[:at]
        keep = _partial_open(buf)
        self._tail = buf[len(buf) - keep :] if keep else ""
        return buf[: len(buf) - keep]

    def finish(self) -> str:
        """Text still held that is not a tag prefix (flushed at the end of the stream)."""
        tail, self._tail = self._tail, ""
        return tail

    @property
    def captured(self) -> str:
        return "".join(self.held)


def _partial_open(buf: str) -> int:
    """Length of the longest suffix of `buf` that is a proper prefix of `<tool_call>`."""
    for n in range(min(len(OPEN) - 1, len(buf)), 0, -1):
        if OPEN.startswith(buf[-n:]):
            return n
    return 0
