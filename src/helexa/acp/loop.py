"""The agent loop: stream a reply, run the tools it asks for, feed the results back, repeat.

One `run_turn` per `session/prompt`. It appends to the history as it goes (the session is saved
between rounds) and keeps every tool call paired with a result, even when cancelled, so the
next request is valid on every wire API.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from helexa.acp import hermes
from helexa.acp.compaction import compact
from helexa.acp.events import Event, PlanUpdate, TextChunk, ThoughtChunk, ToolFinished
from helexa.acp.history import Message, ToolCall
from helexa.acp.paths import is_within, plan_dir
from helexa.acp.plan import checklist
from helexa.acp.policy import Policy
from helexa.acp.providers.base import Done, Provider, ProviderError
from helexa.acp.tools import SPECS, Toolbox
from helexa.acp.workspace import Workspace

MAX_ROUNDS = 64  # model requests per prompt before "max_turn_requests"
CANCELLED = "cancelled by the user"
StopReason = Literal["end_turn", "max_tokens", "cancelled", "refusal", "max_turn_requests"]
Emit = Callable[[Event], Awaitable[None]]
T = TypeVar("T")


@dataclass
class TurnSettings:
    model: str
    max_tokens: int | None
    context_window: int | None
    mode: str  # "default" | "bypassPermissions" | "plan"


async def run_turn(
    history: list[Message],
    provider: Provider,
    ws: Workspace,
    settings: TurnSettings,
    emit: Emit,
    cancelled: asyncio.Event,
) -> StopReason:
    """Run one prompt to its end; ProviderError when the endpoint fails."""
    plans = plan_dir(ws.cwd)
    toolbox = Toolbox(ws, Policy(settings.mode, ws.cwd, plans))
    for _ in range(MAX_ROUNDS):
        view = history
        if settings.context_window is not None:
            view = compact(history, settings.context_window, settings.max_tokens)
        shown: list[str] = []
        done = await _unless(cancelled, _round(view, provider, settings, emit, shown))
        if done is None:
            if "".join(shown):
                history.append(Message("assistant", "".join(shown)))
            return "cancelled"
        msg = done.message
        history.append(msg)
        if entries := checklist(msg.content):
            await emit(PlanUpdate(entries))
        if not msg.tool_calls:
            return "end_turn" if done.stop == "tool_use" else done.stop
        for i, call in enumerate(msg.tool_calls):
            card = toolbox.started(call)
            await emit(card)
            result = await _unless(cancelled, toolbox.run(call, card))
            if result is None:
                for c in msg.tool_calls[i:]:
                    history.append(_result(c, CANCELLED))
                await emit(ToolFinished(call.id, "failed", CANCELLED))
                return "cancelled"
            history.append(_result(call, result.output))
            await emit(result)
            diff = result.diff
            in_plans = diff is not None and is_within(Path(diff.path), plans)
            if diff is not None and in_plans and (entries := checklist(diff.new_text)):
                await emit(PlanUpdate(entries))
    return "max_turn_requests"


def _result(call: ToolCall, output: str) -> Message:
    return Message("tool", output, tool_call_id=call.id, name=call.name)


async def _round(
    view: list[Message], provider: Provider, settings: TurnSettings, emit: Emit, shown: list[str]
) -> Done:
    """One model request, streamed to the client; Hermes text calls become real calls."""
    held = hermes.StreamFilter()
    done: Done | None = None
    async for item in provider.stream(view, SPECS, settings.model, settings.max_tokens):
        if isinstance(item, Done):
            done = item
        elif item.thought:
            await emit(ThoughtChunk(item.text))
        elif text := held.feed(item.text):
            shown.append(text)
            await emit(TextChunk(text))
    if done is None:
        raise ProviderError("the stream ended before the reply was complete")
    return await _fallback(done, held, emit)


async def _fallback(done: Done, held: hermes.StreamFilter, emit: Emit) -> Done:
    """Tool calls written as `<tool_call>` text, when the endpoint gave no native ones."""
    tail = held.finish()
    captured = held.captured
    prose, calls = hermes.parse(captured) if captured and not done.message.tool_calls else ("", [])
    if not calls:
        if rest := captured + tail:
            await emit(TextChunk(rest))
        return done
    msg = done.message
    before = msg.content[: len(msg.content) - len(captured) - len(tail)]
    msg.content = (before + prose).strip()
    msg.tool_calls = calls
    if prose:
        await emit(TextChunk(prose))
    return Done(msg, "tool_use")


async def _unless(cancelled: asyncio.Event, work: Coroutine[Any, Any, T]) -> T | None:
    """`work`'s result, or None when `cancelled` is set first (then `work` is cancelled and
    awaited, so an HTTP stream is closed and a running command killed before returning)."""
    if cancelled.is_set():
        work.close()
        return None
    task = asyncio.ensure_future(work)
    waiter = asyncio.ensure_future(cancelled.wait())
    try:
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
        if not task.done():
            task.cancel()
            await asyncio.wait({task})  # the stream closed, the command killed
    if task.cancelled():
        return None
    if task.exception() is not None and cancelled.is_set():
        return None  # a failure while being stopped is not news
    return task.result()
