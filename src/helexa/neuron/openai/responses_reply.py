"""OpenAI Responses replies on the neuron: the response object, its items and events.

Built from the same parser events as chat, so reasoning and tool calls come out of one parse.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import orjson

from helexa.neuron.openai.replies import Usage
from helexa.neuron.openai.responses import ResponsesRequest
from helexa.neuron.parse import (
    CallArgs,
    CallStart,
    ContentDelta,
    Event,
    OutputParser,
    ReasoningDelta,
    ToolCall,
    new_id,
)
from helexa.wire import sse
from helexa.wire.errors import ApiError

# -- reply ----------------------------------------------------------------------------------------


def response_object(
    req: ResponsesRequest,
    *,
    id: str,
    created_at: int,
    status: str,
    output: list[dict[str, Any]],
    usage: Usage | None,
) -> dict[str, Any]:
    """The response object (Open Responses' `ResponseResource`), for any status
    (`in_progress`, `completed`, `incomplete`)."""
    return {
        "id": id,
        "object": "response",
        "created_at": created_at,
        "completed_at": int(time.time()) if status == "completed" else None,
        "status": status,
        "incomplete_details": ({"reason": "max_output_tokens"} if status == "incomplete" else None),
        "model": req.model,
        "error": None,
        **req.echo,
        "output": output,
        "usage": usage.responses() if usage is not None else None,
    }


def reasoning_item(id: str, text: str | None, status: str = "completed") -> dict[str, Any]:
    """`text` None: the item as announced, before any text."""
    content = [] if text is None else [{"type": "reasoning_text", "text": text}]
    return {"type": "reasoning", "id": id, "summary": [], "content": content, "status": status}


def message_item(id: str, text: str | None, status: str = "completed") -> dict[str, Any]:
    content = [] if text is None else [{"type": "output_text", "text": text, "annotations": []}]
    return {"type": "message", "id": id, "role": "assistant", "status": status, "content": content}


def function_call_item(id: str, call: ToolCall, status: str = "completed") -> dict[str, Any]:
    return {
        "type": "function_call",
        "id": id,
        "call_id": call.id,
        "name": call.name,
        "arguments": call.arguments if status == "completed" else "",
        "status": status,
    }


def output_items(parser: OutputParser) -> list[dict[str, Any]]:
    """reasoning, message, function_call…: each only when it has content. On a cap hit the item
    the cut fell in (reasoning when it never closed, else the message) is `incomplete`."""
    cut_reasoning = parser.hit_cap and parser.in_reasoning
    cut_message = parser.hit_cap and not parser.in_reasoning
    items: list[dict[str, Any]] = []
    if parser.reasoning:
        status = "incomplete" if cut_reasoning else "completed"
        items.append(reasoning_item(new_id("rs_"), parser.reasoning, status))
    if parser.content:
        status = "incomplete" if cut_message else "completed"
        items.append(message_item(new_id("msg_"), parser.content, status))
    items.extend(function_call_item(new_id("fc_"), c) for c in parser.tool_calls)
    return items


def response_body(
    req: ResponsesRequest,
    parser: OutputParser,
    usage: Usage,
    *,
    id: str | None = None,
    created_at: int | None = None,
) -> dict[str, Any]:
    """The non-streaming reply from a finished parser."""
    return response_object(
        req,
        id=id or new_id("resp_"),
        created_at=created_at if created_at is not None else int(time.time()),
        status="incomplete" if parser.hit_cap else "completed",
        output=output_items(parser),
        usage=usage,
    )


class ResponsesStream:
    """Parser events → the Responses event sequence, `sequence_number` counting from 0.

    `start()` (created, in_progress), `events(...)` per parser batch, then `finish(...)` (closes
    the open item, then `response.completed`, or `response.incomplete` on a cap hit, always
    last) or `error(err)` on a fault. A change of kind (reasoning ↔ text) opens a new item;
    each tool call is one item, sent whole or, when the parser streams it, as it comes.
    """

    __slots__ = (
        "_call",
        "_kind",
        "_open",
        "_text",
        "created_at",
        "done",
        "id",
        "output",
        "req",
        "seq",
    )

    def __init__(
        self, req: ResponsesRequest, *, id: str | None = None, created_at: int | None = None
    ) -> None:
        self.req = req
        self.id = id or new_id("resp_")
        self.created_at = created_at if created_at is not None else int(time.time())
        self.seq = 0
        self.output: list[dict[str, Any]] = []  # finished items, in order
        self._kind: str | None = None  # "reasoning" | "message" while an item is open
        self._open: dict[str, Any] = {}
        self._text: list[str] = []
        self._call = ""  # the id of the function_call item being streamed
        self.done = False

    def _ev(self, name: str, obj: dict[str, Any]) -> bytes:
        data = {"type": name, **obj, "sequence_number": self.seq}
        self.seq += 1
        return sse.event_frame(name, orjson.dumps(data))

    def _response(self, status: str, usage: Usage | None) -> dict[str, Any]:
        return response_object(
            self.req,
            id=self.id,
            created_at=self.created_at,
            status=status,
            output=list(self.output),
            usage=usage,
        )

    def start(self) -> bytes:
        r = self._response("in_progress", None)
        return self._ev("response.created", {"response": r}) + self._ev(
            "response.in_progress", {"response": r}
        )

    def events(self, events: Iterable[Event]) -> bytes:
        out: list[bytes] = []
        for ev in events:
            if isinstance(ev, ReasoningDelta):
                self._delta("reasoning", ev.text, out)
            elif isinstance(ev, ContentDelta):
                self._delta("message", ev.text, out)
            elif isinstance(ev, CallStart):
                self._call_start(ev, out)
            elif isinstance(ev, CallArgs):
                self._call_args(ev.text, out)
            elif ev.streamed:
                self._call_done(ev, out)
            else:
                self._call_start(CallStart(ev.index, ev.id, ev.name), out)
                self._call_args(ev.arguments, out)
                self._call_done(ev, out)
        return b"".join(out)

    def _delta(self, kind: str, text: str, out: list[bytes]) -> None:
        if self._kind != kind:
            self._close(out)
            self._opened(kind, out)
        self._text.append(text)
        idx = len(self.output)
        name = (
            "response.reasoning_text.delta" if kind == "reasoning" else "response.output_text.delta"
        )
        ref = {"item_id": self._open["id"], "output_index": idx, "content_index": 0}
        if kind == "reasoning":
            out.append(self._ev(name, {**ref, "delta": text}))
        else:  # `logprobs`, which we never fill: the SDK's event type requires it
            out.append(self._ev(name, {**ref, "delta": text, "logprobs": []}))

    def _opened(self, kind: str, out: list[bytes]) -> None:
        idx = len(self.output)
        if kind == "reasoning":
            item = reasoning_item(new_id("rs_"), None, "in_progress")
        else:
            item = message_item(new_id("msg_"), None, "in_progress")
        self._kind, self._open, self._text = kind, item, []
        out.append(self._ev("response.output_item.added", {"output_index": idx, "item": item}))
        if kind == "message":
            part = {"type": "output_text", "text": "", "annotations": []}
            ref = {"item_id": item["id"], "output_index": idx, "content_index": 0}
            out.append(self._ev("response.content_part.added", {**ref, "part": part}))

    def _close(self, out: list[bytes], status: str = "completed") -> None:
        """End the open item; `status` is `incomplete` when the cap cut it."""
        if self._kind is None:
            return
        idx = len(self.output)
        text = "".join(self._text)
        item_id = self._open["id"]
        ref = {"item_id": item_id, "output_index": idx, "content_index": 0}
        if self._kind == "reasoning":
            out.append(self._ev("response.reasoning_text.done", {**ref, "text": text}))
            item = reasoning_item(item_id, text, status)
        else:
            part = {"type": "output_text", "text": text, "annotations": []}
            done = {**ref, "text": text, "logprobs": []}
            out.append(self._ev("response.output_text.done", done))
            out.append(self._ev("response.content_part.done", {**ref, "part": part}))
            item = message_item(item_id, text, status)
        out.append(self._ev("response.output_item.done", {"output_index": idx, "item": item}))
        self.output.append(item)
        self._kind, self._open, self._text = None, {}, []

    def _call_start(self, start: CallStart, out: list[bytes]) -> None:
        self._close(out)
        self._call = new_id("fc_")
        call = ToolCall(start.index, start.id, start.name, "")
        added = function_call_item(self._call, call, "in_progress")
        ev = {"output_index": len(self.output), "item": added}
        out.append(self._ev("response.output_item.added", ev))

    def _call_args(self, text: str, out: list[bytes]) -> None:
        ref = {"item_id": self._call, "output_index": len(self.output)}
        out.append(self._ev("response.function_call_arguments.delta", {**ref, "delta": text}))

    def _call_done(self, call: ToolCall, out: list[bytes]) -> None:
        idx = len(self.output)
        ref = {"item_id": self._call, "output_index": idx}
        out.append(
            self._ev("response.function_call_arguments.done", {**ref, "arguments": call.arguments})
        )
        item = function_call_item(self._call, call)
        out.append(self._ev("response.output_item.done", {"output_index": idx, "item": item}))
        self.output.append(item)
        self._call = ""

    def finish(self, hit_cap: bool, usage: Usage) -> bytes:
        """Close the open item, then `response.completed`, or `response.incomplete` (and the
        cut item `incomplete`) when the output cap was hit."""
        if self.done:
            return b""
        out: list[bytes] = []
        status = "incomplete" if hit_cap else "completed"
        self._close(out, status)
        response = {"response": self._response(status, usage)}
        out.append(self._ev(f"response.{status}", response))
        self.done = True
        return b"".join(out)

    def error(self, err: ApiError) -> bytes:
        """A mid-stream fault: one `error` event; the stream then ends (no `[DONE]`). The
        fields are at the top (OpenAI's event) and under `error` (Open Responses')."""
        if self.done:
            return b""
        self.done = True
        fields = {"code": err.code, "message": err.message, "param": err.param}
        return self._ev("error", {**fields, "error": {"type": err.type, **fields}})
