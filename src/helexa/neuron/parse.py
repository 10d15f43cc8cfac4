"""Streaming output parser: model text → reasoning, content and Hermes tool calls.

Pure and incremental: the daemon feeds each worker delta and forwards the events it gets back.
Whatever way the text is cut into feeds, the concatenated events are the same as for one feed of
the whole text, and no delta ever ends inside a `<think>`, `</think>`, `<tool_call>` or
`</tool_call>` marker: a suffix that could start one is held back until it is certain.

States: `content` (watching `<think>` when reasoning is on, `<tool_call>` when tools are on),
`reasoning` (watching `</think>` only) and `call` (inside a tool-call span, buffering until
`</tool_call>`; a span is only ever emitted whole, unless `stream_calls`: a grammar guarantees
the span's shape, so the call is announced (`CallStart`) once its name is read and its
arguments stream (`CallArgs`) as they are generated; a Qwen3-Coder XML call's arguments stream
as the JSON that `XmlArgs` builds from its parameters).
"""

from __future__ import annotations

import json
import random
import re
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from helexa.neuron.xml_calls import XML_HEAD, XmlArgs, is_xml_call, parse_xml_call

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
CALL_OPEN = "<tool_call>"
CALL_CLOSE = "</tool_call>"
MARKERS = (THINK_OPEN, THINK_CLOSE, CALL_OPEN, CALL_CLOSE)
_LONGEST = max(len(m) for m in MARKERS)

_ALNUM = string.ascii_letters + string.digits
# Ids name objects, they guard nothing: a fast PRNG seeded from the OS is enough.
_rng = random.Random()


def new_id(prefix: str) -> str:
    """`prefix` + 24 alphanumerics: `chatcmpl-`, `cmpl-`, `resp_`, `call_`, …"""
    return prefix + "".join(_rng.choices(_ALNUM, k=24))


@dataclass(frozen=True, slots=True)
class ContentDelta:
    text: str


@dataclass(frozen=True, slots=True)
class ReasoningDelta:
    text: str


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One parsed call, emitted when its `</tool_call>` closes; `streamed` when its start and
    arguments already went out as `CallStart` and `CallArgs`."""

    index: int
    id: str
    name: str
    arguments: str  # JSON of an object: compact, or as generated when streamed
    streamed: bool = False


@dataclass(frozen=True, slots=True)
class CallStart:
    """A streamed call's name is known (its arguments follow as `CallArgs`)."""

    index: int
    id: str
    name: str


@dataclass(frozen=True, slots=True)
class CallArgs:
    """More of a streamed call's arguments."""

    index: int
    text: str


Event = ContentDelta | ReasoningDelta | ToolCall | CallStart | CallArgs

# a streamed span's head, as the call grammar writes it (constrain/grammar.py)
_CALL_HEAD = re.compile(r'\s*\{"name": "((?:[^"\\]|\\.)*)", "arguments": ')
_CALL_TAIL = "}\n" + CALL_CLOSE

_CONTENT, _REASONING, _CALL = 0, 1, 2


def _held_len(buf: str) -> int:
    """Length of the longest suffix of `buf` that is a proper prefix of some marker."""
    n = len(buf)
    i = buf.find("<", max(0, n - _LONGEST + 1))
    while i >= 0:
        tail = buf[i:]
        for m in MARKERS:
            if len(tail) < len(m) and m.startswith(tail):
                return n - i
        i = buf.find("<", i + 1)
    return 0


def _tail_hold(buf: str) -> int:
    """Length of the suffix of a streamed span that may be the start of its tail
    (`}\n</tool_call>`), so not yet arguments."""
    i = buf.rfind("}")
    return len(buf) - i if i >= 0 and _CALL_TAIL.startswith(buf[i:]) else 0


@dataclass(slots=True)
class _Streaming:
    """The streamed call open in the span: its start, and how far its arguments went out."""

    start: CallStart
    args_from: int  # where the arguments begin in the span
    sent: int  # how far they were emitted
    xml: XmlArgs | None = None  # an XML call: its arguments are built, not copied


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_call_body(
    body: str, schemas: Mapping[str, Mapping[str, Any]] | None = None
) -> tuple[str, str] | None:
    """The `{json}` (or Qwen3-Coder XML, typed by `schemas`) of a span → (name, compact
    arguments), or None when it isn't a valid call."""
    if is_xml_call(body):
        return parse_xml_call(body, schemas)
    try:
        obj = json.loads(body, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        return None
    if not isinstance(obj, dict):
        return None
    name = obj.get("name")
    if not isinstance(name, str) or not name:
        return None
    args = obj["arguments"] if "arguments" in obj else obj.get("parameters", {})
    if isinstance(args, str):
        try:
            args = json.loads(args, parse_constant=_reject_constant)
        except (ValueError, RecursionError):
            return None
    if not isinstance(args, dict):
        return None
    return name, json.dumps(args, ensure_ascii=False, separators=(",", ":"))


class OutputParser:
    """Feed model text as it arrives; get `Event`s back. Also the totals the reply needs.

    `reasoning`: the model has `<think>` markers; `start_in_reasoning`: the rendered prompt ended
    inside an open `<think>`; `tools_enabled`: the request has tools and `tool_choice != "none"`;
    `max_calls`: valid calls past this many are dropped (`parallel_tool_calls: false` is 1,
    Responses' `max_tool_calls`); `stream_calls`: a grammar forces the calls, so they stream;
    `schemas`: the tools' parameter schemas by name (they type XML calls' values).
    """

    __slots__ = (
        "_after_call",
        "_buf",
        "_content",
        "_entered_reasoning",
        "_finished",
        "_held_tokens",
        "_max_calls",
        "_mode",
        "_new_call_id",
        "_reasoning",
        "_scan_from",
        "_schemas",
        "_stream_calls",
        "_streaming",
        "_strip_ws",
        "_ws_hold",
        "hit_cap",
        "reasoning_enabled",
        "reasoning_tokens",
        "tool_calls",
        "tools_enabled",
    )

    def __init__(
        self,
        reasoning: bool,
        start_in_reasoning: bool,
        tools_enabled: bool,
        *,
        max_calls: int | None = None,
        new_call_id: Callable[[], str] | None = None,
        stream_calls: bool = False,
        schemas: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        self.reasoning_enabled = reasoning or start_in_reasoning
        self._stream_calls = stream_calls
        self._schemas = schemas
        self._streaming: _Streaming | None = None
        self.tools_enabled = tools_enabled
        self._max_calls = max_calls
        self._new_call_id = new_call_id or (lambda: new_id("call_"))
        self._mode = _REASONING if start_in_reasoning else _CONTENT
        self._buf = ""  # text not yet emitted: a held-back marker prefix, or an open span
        self._scan_from = 0  # in a span: where the `</tool_call>` search resumes
        self._strip_ws = False  # right after `</think>`: leading whitespace is dropped
        self._after_call = False  # after a parsed call: whitespace-only text is held
        self._ws_hold = ""  # that whitespace; dropped if another call or the end follows
        self._entered_reasoning = False
        self._held_tokens = 0  # tokens of a held marker prefix (content mode)
        self._finished = False
        self._content: list[str] = []
        self._reasoning: list[str] = []
        self.tool_calls: list[ToolCall] = []
        self.reasoning_tokens = 0
        self.hit_cap = False

    # -- results ---------------------------------------------------------------------------

    @property
    def content(self) -> str:
        return "".join(self._content)

    @property
    def reasoning(self) -> str:
        return "".join(self._reasoning)

    @property
    def saw_tool_call(self) -> bool:
        return bool(self.tool_calls)

    @property
    def in_reasoning(self) -> bool:
        return self._mode == _REASONING

    @property
    def finish_reason(self) -> str:
        """`length` on a cap hit, else `tool_calls` when a call was parsed, else `stop`."""
        if self.hit_cap:
            return "length"
        return "tool_calls" if self.tool_calls else "stop"

    # -- input -----------------------------------------------------------------------------

    def feed(self, text: str, tokens: int = 0) -> list[Event]:
        """One delta of model text (`tokens` of output) → the events that are now certain."""
        if self._finished:
            raise RuntimeError("feed() after finish()")
        was_reasoning = self._mode == _REASONING
        self._entered_reasoning = False
        out: list[Event] = []
        if text:
            self._buf += text
            self._drain(out)
        if was_reasoning or self._entered_reasoning:
            self.reasoning_tokens += tokens + self._held_tokens
            self._held_tokens = 0
        elif self._mode == _CONTENT and self._buf:
            # a marker prefix is held: if it turns out to be `<think>`, its tokens are reasoning
            self._held_tokens = tokens if out else self._held_tokens + tokens
        else:
            self._held_tokens = 0
        return out

    def finish(self, hit_cap: bool = False) -> list[Event]:
        """The generation ended: flush what was held. Open spans go to content verbatim, an open
        think stays reasoning, whitespace after the last call is dropped."""
        if self._finished:
            return []
        self._finished = True
        self.hit_cap = hit_cap
        out: list[Event] = []
        buf, self._buf = self._buf, ""
        if self._mode == _CALL and self._streaming is not None:
            self._end_streamed(buf, out, closed=False)  # cut: the arguments so far, as OpenAI
        elif self._mode == _CALL:
            self._emit_content(CALL_OPEN + buf, out)
        elif self._mode == _REASONING:
            self._emit_reasoning(buf, out)
        else:
            self._emit_content(buf, out)
        self._ws_hold = ""
        return out

    # -- the machine -----------------------------------------------------------------------

    def _drain(self, out: list[Event]) -> None:
        while self._buf:
            buf = self._buf
            if self._mode == _CALL:
                j = buf.find(CALL_CLOSE, self._scan_from)
                if j < 0:
                    self._scan_from = max(0, len(buf) - len(CALL_CLOSE) + 1)
                    if self._stream_calls:
                        self._stream_call(buf, out)
                    return
                if self._stream_calls:  # a span that opened and closed in one feed
                    self._stream_call(buf[:j], out)
                self._buf = buf[j + len(CALL_CLOSE) :]
                self._mode = _CONTENT
                self._close_call(buf[:j], out)
                continue
            at, marker = self._next_marker(buf)
            if marker is None:
                keep = _held_len(buf)
                self._emit(buf[: len(buf) - keep], out)
                self._buf = buf[len(buf) - keep :]
                return
            self._emit(buf[:at], out)
            self._buf = buf[at + len(marker) :]
            self._strip_ws = False
            if marker == THINK_OPEN:
                self._mode = _REASONING
                self._entered_reasoning = True
            elif marker == THINK_CLOSE:
                self._mode = _CONTENT
                self._strip_ws = True
            else:
                self._mode = _CALL
                self._scan_from = 0

    def _next_marker(self, buf: str) -> tuple[int, str | None]:
        if self._mode == _REASONING:
            i = buf.find(THINK_CLOSE)
            return (i, THINK_CLOSE) if i >= 0 else (-1, None)
        best, found = len(buf), None
        if self.reasoning_enabled:
            i = buf.find(THINK_OPEN)
            if 0 <= i < best:
                best, found = i, THINK_OPEN
        if self.tools_enabled:
            i = buf.find(CALL_OPEN)
            if 0 <= i < best:
                best, found = i, CALL_OPEN
        return best, found

    def _stream_call(self, buf: str, out: list[Event]) -> None:
        """In an open span: announce the call once its name is read, then send its arguments
        up to what may be the span's tail."""
        st = self._streaming
        if st is None:
            st = self._open_streamed(buf)
            if st is None:
                return
            self._streaming = st
            out.append(st.start)
        if st.xml is not None:
            text = st.xml.feed(buf)
            if text:
                out.append(CallArgs(st.start.index, text))
            return
        end = len(buf) - _tail_hold(buf)
        if end > st.sent:
            out.append(CallArgs(st.start.index, buf[st.sent : end]))
            st.sent = end

    def _open_streamed(self, buf: str) -> _Streaming | None:
        """The streamed call whose head `buf` starts with, once its name is read."""
        if self._max_calls is not None and len(self.tool_calls) >= self._max_calls:
            return None
        m = XML_HEAD.match(buf)
        if m is not None:
            name = m.group(1).strip()
            xml = XmlArgs(name, m.end(), self._schemas)
        else:
            m = _CALL_HEAD.match(buf)
            if m is None:
                return None
            try:
                name = json.loads('"' + m.group(1) + '"')
            except ValueError:
                return None
            xml = None
        start = CallStart(len(self.tool_calls), self._new_call_id(), name)
        return _Streaming(start, m.end(), m.end(), xml)

    def _end_streamed(self, body: str, out: list[Event], closed: bool) -> None:
        """The streamed call's span ended (closed, or cut by the cap): the rest of its arguments,
        then the whole call."""
        st = self._streaming
        assert st is not None
        self._streaming = None
        if st.xml is not None:
            out.append(CallArgs(st.start.index, st.xml.close(body)))
            args = "".join(st.xml.parts)
        else:
            args = self._hermes_args(st, body, out, closed)
        call = ToolCall(st.start.index, st.start.id, st.start.name, args, streamed=True)
        self.tool_calls.append(call)
        out.append(call)

    @staticmethod
    def _hermes_args(st: _Streaming, body: str, out: list[Event], closed: bool) -> str:
        """A Hermes call's arguments are the span's text: what is left of them goes out."""
        args = body[st.args_from :].rstrip()
        if closed and args.endswith("}"):  # the span's object closes after the arguments
            args = args[:-1].rstrip()
        if len(args) > st.sent - st.args_from:
            out.append(CallArgs(st.start.index, args[st.sent - st.args_from :]))
        return args

    def _close_call(self, body: str, out: list[Event]) -> None:
        if self._streaming is not None:
            self._ws_hold = ""
            self._after_call = True
            self._end_streamed(body, out, closed=True)
            return
        parsed = parse_call_body(body, self._schemas)
        if parsed is None:
            self._emit_content(CALL_OPEN + body + CALL_CLOSE, out)
            return
        self._ws_hold = ""
        self._after_call = True
        if self._max_calls is not None and len(self.tool_calls) >= self._max_calls:
            return
        call = ToolCall(len(self.tool_calls), self._new_call_id(), parsed[0], parsed[1])
        self.tool_calls.append(call)
        out.append(call)

    def _emit(self, text: str, out: list[Event]) -> None:
        if self._mode == _REASONING:
            self._emit_reasoning(text, out)
        else:
            self._emit_content(text, out)

    def _emit_reasoning(self, text: str, out: list[Event]) -> None:
        if not text:
            return
        self._reasoning.append(text)
        if out and isinstance(out[-1], ReasoningDelta):
            out[-1] = ReasoningDelta(out[-1].text + text)
        else:
            out.append(ReasoningDelta(text))

    def _emit_content(self, text: str, out: list[Event]) -> None:
        if self._strip_ws:
            text = text.lstrip()
            if not text:
                return
            self._strip_ws = False
        if self._after_call:
            if not text or text.isspace():
                self._ws_hold += text
                return
            text, self._ws_hold, self._after_call = self._ws_hold + text, "", False
        if not text:
            return
        self._content.append(text)
        if out and isinstance(out[-1], ContentDelta):
            out[-1] = ContentDelta(out[-1].text + text)
        else:
            out.append(ContentDelta(text))
