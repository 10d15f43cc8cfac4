"""helexa-acp for real: the SDK's client drives a `helexa-acp` process against a real cortex in
front of a scripted fake neuron (tests/acp/conftest.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from acp import RequestError, text_block
from acp.client.connection import ClientSideConnection
from acp.schema import (
    AgentMessageChunk,
    EmbeddedResourceContentBlock,
    ImageContentBlock,
    TextResourceContents,
    ToolCallProgress,
)
from scripted_llm import Turn

from conftest import ENDPOINTS, MODEL, AcpStack
from rig.acp_client import RecordingClient, capabilities, helexa_acp, say

pytestmark = pytest.mark.slow


@contextlib.asynccontextmanager
async def session(
    stack: AcpStack, client: RecordingClient, **kw: Any
) -> AsyncIterator[tuple[ClientSideConnection, str]]:
    """A helexa-acp process and a new session in the stack's project directory."""
    async with helexa_acp(client, stack.env, stack.stderr, **kw) as conn:
        s = await conn.new_session(cwd=str(stack.project))
        yield conn, s.session_id


async def test_a_prompt_streams_thoughts_and_text(acp_stack: AcpStack) -> None:
    acp_stack.script.append(Turn(text="Hello from the fleet", reasoning="I should greet"))
    client = RecordingClient()
    async with session(acp_stack, client) as (conn, sid):
        assert await say(conn, sid, "hi there") == "end_turn"
    assert client.thoughts() == "I should greet"
    assert client.text() == "Hello from the fleet"
    (body,) = acp_stack.seen("/v1/chat/completions")
    assert body["model"] == MODEL and body["stream"] is True
    roles = [m["role"] for m in body["messages"]]
    assert roles == ["system", "user"] and body["messages"][1]["content"] == "hi there"


async def test_read_then_edit_with_permission_then_bash_refused_in_plan_mode(
    acp_stack: AcpStack,
) -> None:
    target = acp_stack.project / "greet.py"
    target.write_text('print("hello world")\n')
    edit = {"path": "greet.py", "old_text": "hello world", "new_text": "hello fleet"}
    acp_stack.script += [
        Turn(calls=[("c1", "read_file", {"path": "greet.py"})]),
        Turn(calls=[("c2", "edit_file", edit)]),
        Turn(text="Changed the greeting."),
        Turn(calls=[("c3", "bash", {"command": "echo should-not-run"})]),
        Turn(text="Shell is off in plan mode."),
    ]
    client = RecordingClient(answers=["allow_once"])
    async with session(acp_stack, client) as (conn, sid):
        assert await say(conn, sid, "say hello to the fleet") == "end_turn"
        assert target.read_text() == 'print("hello fleet")\n'
        # The read was free (inside cwd); the edit asked once.
        (asked,) = client.permission_requests
        assert asked.tool_call_id == "c2" and asked.kind == "edit"
        done = {u.tool_call_id: u for u in client.finished()}
        assert done["c1"].status == "completed" and done["c2"].status == "completed"
        diff = next(c for c in done["c2"].content or [] if c.type == "diff")
        assert diff.old_text == 'print("hello world")\n' and diff.new_text == target.read_text()
        # The model saw the file it asked for.
        second = acp_stack.seen("/v1/chat/completions")[1]
        tool_msg = next(m for m in second["messages"] if m["role"] == "tool")
        assert 'print("hello world")' in tool_msg["content"]

        await conn.set_session_mode(session_id=sid, mode_id="plan")
        shown = await client.wait_until(  # the `mode` config option follows
            lambda u: getattr(u, "session_update", "") == "config_option_update"
        )
        assert shown.config_options[1].current_value == "plan"
        assert await say(conn, sid, "run it") == "end_turn"
        bash = {u.tool_call_id: u for u in client.finished()}["c3"]
        assert bash.status == "failed"
        assert "plan mode: shell execution is disabled" in str(bash.content)
        assert len(client.permission_requests) == 1  # refused outright, never asked
    assert "Shell is off in plan mode." in client.text()


async def test_a_rejected_edit_leaves_the_file_and_tells_the_model(acp_stack: AcpStack) -> None:
    target = acp_stack.project / "a.txt"
    target.write_text("one\n")
    acp_stack.script += [
        Turn(calls=[("c1", "write_file", {"path": "a.txt", "content": "two\n"})]),
        Turn(text="Understood."),
    ]
    client = RecordingClient(answers=["reject_once"])
    async with session(acp_stack, client) as (conn, sid):
        assert await say(conn, sid, "overwrite it") == "end_turn"
    assert target.read_text() == "one\n"
    (done,) = client.finished()
    assert done.status == "failed" and "permission denied" in str(done.content)


async def test_cancel_mid_stream_answers_cancelled(acp_stack: AcpStack) -> None:
    acp_stack.script.append(Turn(text="word " * 400))
    acp_stack.fake.stream_delay = 0.02  # the neuron paces its frames; the test waits on events
    client = RecordingClient()
    async with session(acp_stack, client) as (conn, sid):
        turn = asyncio.ensure_future(conn.prompt(session_id=sid, prompt=[text_block("talk a lot")]))
        await client.wait_until(lambda u: isinstance(u, AgentMessageChunk))
        with pytest.raises(RequestError, match="a prompt is already running in this session"):
            await say(conn, sid, "and another thing")
        await conn.cancel(session_id=sid)
        assert (await turn).stop_reason == "cancelled"
        await asyncio.wait_for(acp_stack.fake.cancel_event.wait(), 10)  # the stream was closed
        # The session still works afterwards.
        acp_stack.fake.stream_delay = 0
        acp_stack.script.append(Turn(text="still here"))
        assert await say(conn, sid, "again") == "end_turn"
    assert client.text().endswith("still here")
    assert not any(isinstance(u, ToolCallProgress) for u in client.updates)


async def test_sessions_are_listed_and_replayed_after_a_restart(acp_stack: AcpStack) -> None:
    (acp_stack.project / "notes.md").write_text("remember the milk\n")
    acp_stack.script += [
        Turn(
            reasoning="look first",
            calls=[("c1", "read_file", {"path": "notes.md"}), ("c0", "read_file", {"path": "no"})],
        ),
        Turn(text="It says: remember the milk."),
    ]
    async with session(acp_stack, RecordingClient()) as (conn, sid):
        await say(conn, sid, "what do my notes say?")
    client = RecordingClient()
    async with helexa_acp(client, acp_stack.env, acp_stack.stderr) as conn:  # a new process
        listed = await conn.list_sessions(cwd=str(acp_stack.project))
        assert [s.session_id for s in listed.sessions] == [sid]
        assert listed.sessions[0].title == "what do my notes say?"
        assert (await conn.list_sessions(cwd=str(acp_stack.project / "elsewhere"))).sessions == []
        loaded = await conn.load_session(cwd=str(acp_stack.project), session_id=sid)
        assert loaded is not None and loaded.modes is not None
        kinds = [u.session_update for u in client.updates]
        assert kinds == [
            "user_message_chunk",
            "agent_thought_chunk",
            "tool_call",
            "tool_call",
            "agent_message_chunk",
        ]
        card, missing = client.cards()
        assert (card.tool_call_id, card.kind, card.status) == ("c1", "read", "completed")
        assert "remember the milk" in str(card.content)
        assert (missing.tool_call_id, missing.status) == ("c0", "failed")
        assert client.text() == "It says: remember the milk."
        # ... and the conversation goes on with the whole history sent to the model.
        acp_stack.script.append(Turn(text="You're welcome."))
        assert await say(conn, sid, "thanks") == "end_turn"
    last = acp_stack.seen("/v1/chat/completions")[-1]
    assert [m["role"] for m in last["messages"]] == [
        "system",
        "user",
        "assistant",
        "tool",
        "tool",
        "assistant",
        "user",
    ]


async def test_model_switch_by_config_option_and_by_legacy_set_model(acp_stack: AcpStack) -> None:
    client = RecordingClient()
    async with session(acp_stack, client) as (conn, sid):
        acp_stack.script += [Turn(text="via responses"), Turn(text="via messages")]
        r = await conn.set_config_option(config_id="model", session_id=sid, value=f"resp:{MODEL}")
        assert r is not None
        model = next(o for o in r.config_options if o.id == "model")
        assert model.current_value == f"resp:{MODEL}"
        assert {o.value for o in model.options} >= {f"{n}:{MODEL}" for n in ENDPOINTS}
        await say(conn, sid, "one")
        assert len(acp_stack.seen("/v1/responses")) == 1
        assert acp_stack.seen("/v1/responses")[0]["model"] == MODEL

        # Older Zed builds: session/set_model, which the SDK no longer routes.
        assert (
            await conn._conn.send_request(
                "session/set_model", {"sessionId": sid, "modelId": f"anth:{MODEL}"}
            )
            == {}
        )
        shown = await client.wait_until(  # the editor's model menu follows
            lambda u: getattr(u, "session_update", "") == "config_option_update"
        )
        assert shown.config_options[0].current_value == f"anth:{MODEL}"
        await say(conn, sid, "two")
        messages = [r for r in acp_stack.recorded if r.path == "/v1/messages"]
        assert len(messages) == 1
        with pytest.raises(RequestError, match="unknown model 'nope:x'"):
            await conn.set_config_option(config_id="model", session_id=sid, value="nope:x")
    assert client.text() == "via responsesvia messages"


@pytest.mark.parametrize("endpoint", list(ENDPOINTS))
async def test_each_wire_api_runs_a_tool_call(acp_stack: AcpStack, endpoint: str) -> None:
    (acp_stack.project / "x.txt").write_text("forty-two\n")
    acp_stack.script += [
        Turn(calls=[(f"{endpoint}1", "read_file", {"path": "x.txt"})]),
        Turn(text="The answer is forty-two.", reasoning="easy"),
    ]
    client = RecordingClient()
    async with session(acp_stack, client) as (conn, sid):
        await conn.set_config_option(config_id="model", session_id=sid, value=f"{endpoint}:{MODEL}")
        assert await say(conn, sid, "read x.txt") == "end_turn"
    (done,) = client.finished()
    assert done.status == "completed" and "forty-two" in str(done.content)
    assert client.text() == "The answer is forty-two."
    assert client.thoughts() == "easy"
    route = {"chat": "/v1/chat/completions", "resp": "/v1/responses", "anth": "/v1/messages"}
    posts = [r.path for r in acp_stack.recorded if r.method == "POST"]
    assert posts == [route[endpoint]] * 2


async def test_files_and_commands_go_through_the_client_when_it_offers_them(
    acp_stack: AcpStack,
) -> None:
    p = acp_stack.project
    (p / "x.txt").write_text("from disk\n")
    acp_stack.script += [
        Turn(calls=[("c1", "read_file", {"path": "x.txt"})]),
        Turn(calls=[("c2", "write_file", {"path": "y.txt", "content": "new\n"})]),
        Turn(calls=[("c3", "bash", {"command": "echo hi; exit 3"})]),
        Turn(text="done"),
        Turn(calls=[("c4", "write_file", {"path": "z.txt", "content": "more\n"})]),
        Turn(text="done again"),
    ]
    client = RecordingClient(answers=["allow_always", "allow_once"])
    async with session(acp_stack, client, caps=capabilities(fs=True, terminal=True)) as (conn, sid):
        assert await say(conn, sid, "go") == "end_turn"
        assert [k for k, _ in client.calls] == [
            "fs/read_text_file",
            "fs/write_text_file",
            "terminal/create",
            "terminal/release",
        ]
        assert client.calls[0][1]["path"] == str(p / "x.txt")
        assert client.calls[2][1] == {
            "command": "sh",
            "args": ["-c", "echo hi; exit 3"],
            "cwd": str(p),
        }
        assert (p / "y.txt").read_text() == "new\n"
        bash = {u.tool_call_id: u for u in client.finished()}["c3"]
        assert (
            bash.status == "failed"
            and "hi" in str(bash.content)
            and "exit status 3" in str(bash.content)
        )
        # The card showed the editor's terminal while it ran, and keeps it.
        live = [
            u
            for u in client.updates
            if isinstance(u, ToolCallProgress) and u.tool_call_id == "c3" and u.status is None
        ]
        assert [[c.type for c in u.content or []] for u in live] == [["terminal"]]
        assert bash.content is not None and bash.content[0].type == "terminal"
        assert bash.content[0].terminal_id == live[0].content[0].terminal_id  # type: ignore[index]
        assert [r.kind for r in client.permission_requests] == ["edit", "execute"]
        # "Always allow" for edits holds for the rest of the session.
        assert await say(conn, sid, "once more") == "end_turn"
        assert (p / "z.txt").read_text() == "more\n"
        assert len(client.permission_requests) == 2


async def test_cancel_kills_a_command_running_in_the_client_terminal(acp_stack: AcpStack) -> None:
    acp_stack.script.append(Turn(calls=[("c1", "bash", {"command": "sleep 60"})]))
    client = RecordingClient()
    async with session(acp_stack, client, caps=capabilities(terminal=True)) as (conn, sid):
        await conn.set_session_mode(session_id=sid, mode_id="bypassPermissions")
        turn = asyncio.ensure_future(conn.prompt(session_id=sid, prompt=[text_block("wait")]))
        await client.wait_for(lambda: bool(client.terminals))  # sleep 60 is running
        await conn.cancel(session_id=sid)
        assert (await turn).stop_reason == "cancelled"
        # The answer doesn't wait for the editor; the kill and release follow it.
        await client.wait_for(lambda: not client.terminals)
    assert [k for k, _ in client.calls] == ["terminal/create", "terminal/kill", "terminal/release"]


async def test_invalid_tool_arguments_are_a_tool_error_the_model_sees(acp_stack: AcpStack) -> None:
    acp_stack.script += [
        Turn(calls=[("c1", "read_file", {"file": "x.txt"})]),
        Turn(text="Let me fix that."),
    ]
    client = RecordingClient()
    async with session(acp_stack, client) as (conn, sid):
        assert await say(conn, sid, "read it") == "end_turn"
    (done,) = client.finished()
    assert done.status == "failed" and "invalid arguments" in str(done.content)
    tool_msg = next(
        m for m in acp_stack.seen("/v1/chat/completions")[1]["messages"] if m["role"] == "tool"
    )
    assert "invalid arguments" in tool_msg["content"]


def sequence(wire: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """The JSON-RPC messages as `→ method` (client to agent), `← method` (agent to client),
    `← result`/`→ result` for answers, with session/update kinds spelled out."""
    out = []
    for direction, m in wire:
        arrow = "→" if direction == "outgoing" else "←"
        if m.get("method") == "session/update":
            out.append(f"{arrow} session/update {m['params']['update']['sessionUpdate']}")
        elif "method" in m:
            out.append(f"{arrow} {m['method']}")
        else:
            out.append(f"{arrow} {'error' if 'error' in m else 'result'}")
    return out


async def test_the_json_rpc_sequence_of_an_edit(acp_stack: AcpStack, tmp_path: Path) -> None:
    """prompt → tool call → permission → edit → answer, on the wire (kept as transcript.jsonl)."""
    (acp_stack.project / "README.md").write_text("# demo\nTODO: describe\n")
    edit = {"path": "README.md", "old_text": "TODO: describe", "new_text": "A demo project."}
    acp_stack.script += [
        Turn(reasoning="The README has a TODO.", calls=[("call_1", "edit_file", edit)]),
        Turn(text="I replaced the TODO in README.md with a description."),
    ]
    client = RecordingClient(answers=["allow_once"])
    async with session(acp_stack, client, caps=capabilities(fs=True)) as (conn, sid):
        assert await say(conn, sid, "Fill in the README description.") == "end_turn"
    with (tmp_path / "transcript.jsonl").open("w") as f:
        for direction, m in client.wire:
            f.write(json.dumps({"dir": direction, "msg": m}) + "\n")
    seq = sequence(client.wire)
    start = seq.index("→ session/prompt")
    assert seq[start:] == [
        "→ session/prompt",
        "← session/update agent_thought_chunk",
        "← session/update agent_thought_chunk",
        "← session/update tool_call",
        "← session/request_permission",
        "→ result",
        "← fs/read_text_file",
        "→ result",
        "← fs/write_text_file",
        "→ result",
        "← session/update tool_call_update",
        "← session/update agent_message_chunk",
        "← session/update agent_message_chunk",
        "← result",
    ]
    assert (acp_stack.project / "README.md").read_text() == "# demo\nA demo project.\n"


async def test_an_editor_error_is_a_tool_error_not_a_failed_prompt(acp_stack: AcpStack) -> None:
    acp_stack.script += [
        Turn(calls=[("c1", "write_file", {"path": "a.txt", "content": "x"})]),
        Turn(calls=[("c2", "write_file", {"path": "b.txt", "content": "y"})]),
        Turn(text="Both writes failed."),
    ]
    client = RecordingClient()
    async with session(acp_stack, client, caps=capabilities(fs=True)) as (conn, sid):
        client.failing = {"fs/write_text_file"}
        turn = asyncio.ensure_future(say(conn, sid, "write two files"))
        await client.wait_until(
            lambda u: isinstance(u, ToolCallProgress) and u.tool_call_id == "c1"
        )
        client.failing = {"session/request_permission"}
        assert await turn == "end_turn"
    done = {u.tool_call_id: u for u in client.finished()}
    assert done["c1"].status == "failed"
    assert "the editor's fs/write_text_file failed: fs/write_text_file refused" in str(
        done["c1"].content
    )
    assert done["c2"].status == "failed"
    assert "the editor's session/request_permission failed" in str(done["c2"].content)
    assert not (acp_stack.project / "a.txt").exists() and not (acp_stack.project / "b.txt").exists()


async def test_images_and_embedded_files_reach_the_model(acp_stack: AcpStack) -> None:
    acp_stack.script.append(Turn(text="A red dot."))
    blocks: list[Any] = [
        text_block("what is this?"),
        ImageContentBlock(type="image", data="iVBORw0KGgo=", mime_type="image/png"),
        EmbeddedResourceContentBlock(
            type="resource",
            resource=TextResourceContents(uri="file:///p/notes.txt", text="context here"),
        ),
    ]
    async with session(acp_stack, RecordingClient()) as (conn, sid):
        r = await conn.prompt(session_id=sid, prompt=blocks)
        assert r.stop_reason == "end_turn"
    (body,) = acp_stack.seen("/v1/chat/completions")
    parts = body["messages"][-1]["content"]
    assert {
        "type": "image_url",
        "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="},
    } in parts
    text = " ".join(p.get("text", "") for p in parts)
    assert "what is this?" in text and '<context uri="file:///p/notes.txt">' in text


async def test_a_granted_command_runs_locally_without_a_client_terminal(
    acp_stack: AcpStack,
) -> None:
    acp_stack.script += [
        Turn(calls=[("c1", "bash", {"command": "echo $((6 * 7)) > out.txt; cat out.txt"})]),
        Turn(text="It printed 42."),
    ]
    client = RecordingClient(answers=["allow_once"])
    async with session(acp_stack, client) as (conn, sid):
        assert await say(conn, sid, "compute") == "end_turn"
    (asked,) = client.permission_requests
    assert asked.kind == "execute"
    (done,) = client.finished()
    assert done.status == "completed" and "42" in str(done.content)
    assert (acp_stack.project / "out.txt").read_text() == "42\n"  # ran in the session's cwd
    assert client.calls == []  # nothing went through the client
