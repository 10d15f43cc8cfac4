"""Turn events and stored history as session/update payloads; prompt blocks as a user turn."""

from __future__ import annotations

from pathlib import Path

from acp import text_block
from acp.schema import (
    EmbeddedResourceContentBlock,
    ImageContentBlock,
    ResourceContentBlock,
    TextResourceContents,
)

from helexa.acp.events import (
    Diff,
    PlanEntry,
    PlanUpdate,
    TextChunk,
    ThoughtChunk,
    ToolFinished,
    ToolStarted,
)
from helexa.acp.history import Message, ToolCall
from helexa.acp.loop import CANCELLED
from helexa.acp.policy import Policy
from helexa.acp.prompt import user_message
from helexa.acp.tools import Toolbox
from helexa.acp.updates import event_update, replay
from helexa.acp.workspace import LocalWorkspace


def dump(u: object) -> dict[str, object]:
    return u.model_dump(mode="json", by_alias=True, exclude_none=True)  # type: ignore[attr-defined]


def test_events_map_to_their_updates() -> None:
    assert dump(event_update(TextChunk("hi"))) == {
        "sessionUpdate": "agent_message_chunk",
        "content": {"type": "text", "text": "hi"},
    }
    assert dump(event_update(ThoughtChunk("hm")))["sessionUpdate"] == "agent_thought_chunk"
    start = dump(
        event_update(
            ToolStarted("c1", "read_file", "Read a.py", "read", {"path": "a.py"}, ["/p/a.py"])
        )
    )
    assert start == {
        "sessionUpdate": "tool_call",
        "toolCallId": "c1",
        "title": "Read a.py",
        "kind": "read",
        "status": "in_progress",
        "locations": [{"path": "/p/a.py"}],
        "rawInput": {"path": "a.py"},
    }
    done = dump(event_update(ToolFinished("c1", "completed", "edited", Diff("/p/a.py", "x", "y"))))
    assert done["status"] == "completed"
    assert done["content"] == [
        {"type": "diff", "path": "/p/a.py", "oldText": "x", "newText": "y"},
        {"type": "content", "content": {"type": "text", "text": "edited"}},
    ]
    plan = dump(event_update(PlanUpdate([PlanEntry("write tests", "in_progress", "high")])))
    assert plan == {
        "sessionUpdate": "plan",
        "entries": [{"content": "write tests", "status": "in_progress", "priority": "high"}],
    }


def test_replay_rebuilds_what_the_turn_showed() -> None:
    history = [
        Message("system", "secret system prompt"),
        Message("user", "fix it"),
        Message(
            "assistant",
            "Looking.",
            reasoning="where is it",
            tool_calls=[
                ToolCall("c1", "bash", '{"command": "make"}'),
                ToolCall("c2", "read_file", "{bad"),
                ToolCall("c3", "edit_file", '{"path": "a"}'),
                ToolCall("c4", "bash", '{"command": "test"}'),
            ],
        ),
        Message("tool", "ok\n[exit status 0]", tool_call_id="c1", name="bash"),
        Message("tool", "edit_file: old_text not found", tool_call_id="c3", failed=True),
        Message("tool", CANCELLED, tool_call_id="c4", name="bash"),
    ]
    cwd = Path("/proj")
    cards = Toolbox(LocalWorkspace(cwd), Policy("default", cwd, cwd)).started
    out = [dump(u) for u in replay(history, cards)]
    assert [u["sessionUpdate"] for u in out] == [
        "user_message_chunk",
        "agent_thought_chunk",
        "agent_message_chunk",
        "tool_call",
        "tool_call",
        "tool_call",
        "tool_call",
    ]
    assert "secret" not in str(out)
    assert [u["status"] for u in out[3:]] == ["completed", "failed", "failed", "failed"]
    bash, broken = out[3], out[4]
    assert (bash["kind"], bash["status"], bash["rawInput"]) == (
        "execute",
        "completed",
        {"command": "make"},
    )
    assert "exit status 0" in str(bash["content"])
    assert broken["status"] == "failed"  # no result was stored: the turn never finished it
    assert broken["rawInput"] == {"arguments": "{bad"}


def test_prompt_blocks_become_one_user_message() -> None:
    msg = user_message(
        [
            text_block("explain"),
            EmbeddedResourceContentBlock(
                type="resource", resource=TextResourceContents(uri="file:///p/a.py", text="x = 1")
            ),
            ResourceContentBlock(type="resource_link", name="b.py", uri="file:///p/b.py"),
            ImageContentBlock(type="image", data="AAAA", mime_type="image/png"),
        ]
    )
    assert msg.role == "user"
    assert (
        msg.content
        == 'explain\n\n<context uri="file:///p/a.py">\nx = 1\n</context>\n\n[b.py](file:///p/b.py)'
    )
    assert msg.images == ["data:image/png;base64,AAAA"]
