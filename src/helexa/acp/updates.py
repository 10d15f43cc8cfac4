"""Turn events and stored history as ACP `session/update` payloads.

The one place that knows both the loop's events and the protocol's update types, so a live turn
and a replayed one (session/load) look the same to the editor.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from acp import (
    plan_entry,
    start_tool_call,
    text_block,
    tool_content,
    tool_diff_content,
    tool_terminal_ref,
    update_agent_message_text,
    update_agent_thought_text,
    update_plan,
    update_tool_call,
    update_user_message_text,
)
from acp.schema import (
    AgentMessageChunk,
    AgentPlanUpdate,
    AgentThoughtChunk,
    ToolCallLocation,
    ToolCallProgress,
    ToolCallStart,
    ToolCallStatus,
    UserMessageChunk,
)

from helexa.acp.events import (
    Event,
    PlanUpdate,
    TextChunk,
    ThoughtChunk,
    ToolFinished,
    ToolStarted,
)
from helexa.acp.history import Message, ToolCall
from helexa.acp.loop import CANCELLED

Update = (
    UserMessageChunk
    | AgentMessageChunk
    | AgentThoughtChunk
    | ToolCallStart
    | ToolCallProgress
    | AgentPlanUpdate
)


def event_update(ev: Event, terminal: str | None = None) -> Update:
    """`terminal`: the editor's terminal the call ran in, kept on its finished card."""
    match ev:
        case TextChunk(text=text):
            return update_agent_message_text(text)
        case ThoughtChunk(text=text):
            return update_agent_thought_text(text)
        case ToolStarted():
            return _card(ev, "in_progress", None)
        case ToolFinished():
            content: list[Any] = [tool_terminal_ref(terminal)] if terminal else []
            if ev.diff is not None:
                content.append(tool_diff_content(ev.diff.path, ev.diff.new_text, ev.diff.old_text))
            if ev.output:
                content.append(tool_content(text_block(ev.output)))
            return update_tool_call(
                ev.call_id, status=ev.status, content=content, raw_output={"output": ev.output}
            )
        case PlanUpdate(entries=entries):
            return update_plan(
                plan_entry(e.content, priority=e.priority, status=e.status) for e in entries
            )


def terminal_shown(call_id: str, terminal_id: str) -> ToolCallProgress:
    """The running call's card shows the editor's terminal (live output)."""
    return update_tool_call(call_id, content=[tool_terminal_ref(terminal_id)])


def replay(history: list[Message], describe: Callable[[ToolCall], ToolStarted]) -> Iterator[Update]:
    """The stored conversation as the updates a live turn sent (system prompt left out); tool
    cards, titled by `describe` as when they ran, carry their final status and output."""
    results = {m.tool_call_id: m for m in history if m.role == "tool"}
    for m in history:
        if m.role == "user" and m.content:
            yield update_user_message_text(m.content)
        elif m.role == "assistant":
            if m.reasoning:
                yield update_agent_thought_text(m.reasoning)
            if m.content:
                yield update_agent_message_text(m.content)
            for call in m.tool_calls:
                result = results.get(call.id)
                output = result.content if result is not None else ""
                ok = result is not None and not result.failed and result.content != CANCELLED
                status: ToolCallStatus = "completed" if ok else "failed"
                content = [tool_content(text_block(output))] if output else None
                yield _card(describe(call), status, content)


def _card(ev: ToolStarted, status: ToolCallStatus, content: list[Any] | None) -> ToolCallStart:
    return start_tool_call(
        ev.call_id,
        ev.title,
        kind=ev.kind,
        status=status,
        content=content,
        locations=[ToolCallLocation(path=p) for p in ev.locations],
        raw_input=ev.raw_input,
    )
