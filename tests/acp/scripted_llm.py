"""A scripted model endpoint on 127.0.0.1 speaking all three wire APIs as SSE.

Each request takes the next scripted `Turn` and streams it in the format of the path it came
in on (`/v1/chat/completions`, `/v1/responses`, `/v1/messages`), so one script drives any
provider. A Turn can also fail (an HTTP status), drop the connection mid-stream, or hang after
its first frame until the client goes away (for cancellation).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from helexa.wire.sse import DONE, data_frame, event_frame


@dataclass
class Turn:
    text: str = ""
    reasoning: str = ""
    calls: list[tuple[str, str, Any]] = field(default_factory=list)  # (id, name, args)
    stop: str = "end_turn"  # end_turn | max_tokens | refusal
    status: int = 200  # != 200: answer with an error body instead of a stream
    drop: bool = False  # close the connection after the first frames
    hang: bool = False  # after the first frames, wait until the client disconnects
    raw: list[bytes] | None = None  # these frames as they are, instead of the scripted reply


def _args(a: Any) -> str:
    return a if isinstance(a, str) else json.dumps(a)


def _halves(s: str) -> list[str]:
    """A text in two deltas, so assembling is exercised."""
    cut = len(s) // 2
    return [p for p in (s[:cut], s[cut:]) if p]


def chat_frames(t: Turn) -> list[bytes]:
    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        return data_frame(
            json.dumps({"object": "chat.completion.chunk", "choices": [choice]}).encode()
        )

    out = [chunk({"role": "assistant"})]
    out += [chunk({"reasoning_content": p}) for p in _halves(t.reasoning)]
    out += [chunk({"content": p}) for p in _halves(t.text)]
    for i, (cid, name, args) in enumerate(t.calls):
        fn = {"name": name, "arguments": ""}
        out.append(
            chunk({"tool_calls": [{"index": i, "id": cid, "type": "function", "function": fn}]})
        )
        for p in _halves(_args(args)):
            out.append(chunk({"tool_calls": [{"index": i, "function": {"arguments": p}}]}))
    finish = {"end_turn": "tool_calls" if t.calls else "stop", "max_tokens": "length"}
    finish["refusal"] = "content_filter"
    return [*out, chunk({}, finish[t.stop]), DONE]


def responses_frames(t: Turn) -> list[bytes]:
    def ev(name: str, **data: Any) -> bytes:
        return event_frame(name, json.dumps({"type": name, **data}).encode())

    out = [ev("response.created", response={"status": "in_progress"})]
    out += [ev("response.reasoning_summary_text.delta", delta=p) for p in _halves(t.reasoning)]
    out += [ev("response.output_text.delta", delta=p) for p in _halves(t.text)]
    for cid, name, args in t.calls:
        item = {"type": "function_call", "id": f"fc_{cid}", "call_id": cid, "name": name}
        out.append(ev("response.output_item.added", item={**item, "arguments": ""}))
        for p in _halves(_args(args)):
            out.append(ev("response.function_call_arguments.delta", item_id=f"fc_{cid}", delta=p))
        out.append(ev("response.output_item.done", item={**item, "arguments": _args(args)}))
    if t.stop == "end_turn":
        return [*out, ev("response.completed", response={"status": "completed"})]
    reason = "max_output_tokens" if t.stop == "max_tokens" else "content_filter"
    details = {"status": "incomplete", "incomplete_details": {"reason": reason}}
    return [*out, ev("response.incomplete", response=details)]


def anthropic_frames(t: Turn) -> list[bytes]:
    def ev(name: str, **data: Any) -> bytes:
        return event_frame(name, json.dumps({"type": name, **data}).encode())

    out = [ev("message_start", message={"role": "assistant", "content": []})]
    blocks: list[tuple[dict[str, Any], list[dict[str, Any]]]] = []
    if t.reasoning:
        deltas = [{"type": "thinking_delta", "thinking": p} for p in _halves(t.reasoning)]
        blocks.append(({"type": "thinking", "thinking": ""}, deltas))
    if t.text:
        blocks.append(
            (
                {"type": "text", "text": ""},
                [{"type": "text_delta", "text": p} for p in _halves(t.text)],
            )
        )
    for cid, name, args in t.calls:
        deltas = [{"type": "input_json_delta", "partial_json": p} for p in _halves(_args(args))]
        blocks.append(({"type": "tool_use", "id": cid, "name": name, "input": {}}, deltas))
    for i, (start, deltas) in enumerate(blocks):
        out.append(ev("content_block_start", index=i, content_block=start))
        out += [ev("content_block_delta", index=i, delta=d) for d in deltas]
        out.append(ev("content_block_stop", index=i))
    stop = "tool_use" if t.calls and t.stop == "end_turn" else t.stop
    out.append(ev("message_delta", delta={"stop_reason": stop}))
    return [*out, ev("message_stop")]


FORMATS = {
    "/v1/chat/completions": chat_frames,
    "/v1/responses": responses_frames,
    "/v1/messages": anthropic_frames,
}


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


class ScriptedLLM:
    """`async with ScriptedLLM([Turn(...)]) as llm:`, then point a provider at `llm.base_url`."""

    def __init__(self, script: list[Turn]) -> None:
        self.script = list(script)
        self.seen: list[Seen] = []
        self.disconnected = asyncio.Event()
        self.streaming = asyncio.Event()  # set once a hanging turn has sent its first frames
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.seen.append(Seen(request.path, dict(request.headers), body))
        if not self.script:
            return web.json_response({"error": {"message": "script exhausted"}}, status=500)
        turn = self.script.pop(0)
        if turn.status != 200:
            err = {"error": {"message": f"scripted failure {turn.status}", "type": "server_error"}}
            return web.json_response(err, status=turn.status)
        frames = turn.raw if turn.raw is not None else FORMATS[request.path](turn)
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        if turn.drop or turn.hang:
            frames = frames[:2]
        try:
            for f in frames:
                await resp.write(f)
            if turn.hang:
                self.streaming.set()
                await asyncio.Event().wait()  # until the client hangs up (handler cancelled)
            if turn.drop:
                assert request.transport is not None
                request.transport.close()
        finally:
            if turn.hang:
                self.disconnected.set()
        return resp

    async def __aenter__(self) -> ScriptedLLM:
        app = web.Application()
        for path in FORMATS:
            app.router.add_post(path, self._handle)
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.base_url = f"http://127.0.0.1:{port}/v1"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


async def collect(stream: AsyncIterator[Any]) -> list[Any]:
    return [item async for item in stream]
