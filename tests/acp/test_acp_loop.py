"""run_turn end to end against a scripted SSE endpoint and a LocalWorkspace in a tmp dir:
streaming, tool rounds on each wire API, permissions, the Hermes fallback, plans, compaction,
cancellation of the stream and of a running command, the round cap, endpoint failures."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest
from scripted_llm import ScriptedLLM, Turn

from helexa.acp import loop
from helexa.acp.events import Event, PlanUpdate, TextChunk, ThoughtChunk, ToolFinished, ToolStarted
from helexa.acp.history import Message, ToolCall
from helexa.acp.loop import TurnSettings, run_turn
from helexa.acp.providers import WIRE_APIS, ProviderError, make_provider
from helexa.acp.workspace import LocalWorkspace


@pytest.fixture
def cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    (tmp_path / "proj").mkdir()
    return (tmp_path / "proj").resolve()


class Run:
    """One run_turn with its recorded events and permission prompts."""

    def __init__(self, cwd: Path, grant: bool = True, mode: str = "default") -> None:
        self.events: list[Event] = []
        self.asked: list[str] = []
        self.grant = grant
        self.ws = LocalWorkspace(cwd, self._allow)
        self.cancelled = asyncio.Event()
        self.history = [Message("system", "sys"), Message("user", "go")]
        self.settings = TurnSettings("m", None, None, mode)

    async def _allow(self, call_id: str, title: str, kind: str, raw: dict[str, Any]) -> bool:
        self.asked.append(title)
        return self.grant

    async def emit(self, ev: Event) -> None:
        self.events.append(ev)

    async def __call__(self, llm: ScriptedLLM, wire: str = "openai-chat") -> str:
        provider = make_provider(wire, llm.base_url)
        return await run_turn(
            self.history, provider, self.ws, self.settings, self.emit, self.cancelled
        )

    def of(self, kind: type) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]


async def test_text_turn(cwd: Path) -> None:
    r = Run(cwd)
    async with ScriptedLLM([Turn(text="Hi there", reasoning="hmm")]) as llm:
        assert await r(llm) == "end_turn"
    assert "".join(e.text for e in r.of(ThoughtChunk)) == "hmm"
    assert "".join(e.text for e in r.of(TextChunk)) == "Hi there"
    assert r.history[-1] == Message("assistant", "Hi there", "hmm")


@pytest.mark.parametrize("wire", list(WIRE_APIS))
async def test_tool_round_then_answer(cwd: Path, wire: str) -> None:
    (cwd / "notes.txt").write_text("the answer is 42\n")
    r = Run(cwd)
    script = [
        Turn(text="Reading.", calls=[("call_1", "read_file", {"path": "notes.txt"})]),
        Turn(text="It says 42."),
    ]
    async with ScriptedLLM(script) as llm:
        assert await r(llm, wire) == "end_turn"
    started, finished = r.of(ToolStarted), r.of(ToolFinished)
    assert [(s.call_id, s.kind, s.title) for s in started] == [("call_1", "read", "Read notes.txt")]
    assert [(f.status, f.output) for f in finished] == [("completed", "the answer is 42\n")]
    assert [m.role for m in r.history] == ["system", "user", "assistant", "tool", "assistant"]
    assert r.history[3].tool_call_id == "call_1" and r.history[3].name == "read_file"
    assert "the answer is 42" in str(llm.seen[1].body)  # the result went back to the model
    assert r.asked == []


async def test_edit_after_permission(cwd: Path) -> None:
    (cwd / "app.py").write_text("x = 1\n")
    args = {"path": "app.py", "old_text": "x = 1", "new_text": "x = 2"}
    r = Run(cwd)
    async with ScriptedLLM([Turn(calls=[("e1", "edit_file", args)]), Turn(text="done")]) as llm:
        assert await r(llm) == "end_turn"
    assert r.asked == ["Edit app.py"]
    assert (cwd / "app.py").read_text() == "x = 2\n"
    diff = r.of(ToolFinished)[0].diff
    assert diff is not None and (diff.old_text, diff.new_text) == ("x = 1\n", "x = 2\n")


async def test_refused_permission_is_reported_to_the_model(cwd: Path) -> None:
    r = Run(cwd, grant=False)
    script = [
        Turn(calls=[("b1", "bash", {"command": "touch made"})]),
        Turn(text="ok, not running it"),
    ]
    async with ScriptedLLM(script) as llm:
        assert await r(llm) == "end_turn"
    assert not (cwd / "made").exists()
    assert "permission denied" in r.history[3].content


async def test_plan_mode_refuses_bash(cwd: Path) -> None:
    r = Run(cwd, mode="plan")
    script = [Turn(calls=[("b1", "bash", {"command": "touch made"})]), Turn(text="fine")]
    async with ScriptedLLM(script) as llm:
        assert await r(llm) == "end_turn"
    assert r.of(ToolFinished)[0].output == "plan mode: shell execution is disabled"
    assert r.asked == [] and not (cwd / "made").exists()


async def test_hermes_text_calls_are_run(cwd: Path) -> None:
    (cwd / "a.txt").write_text("AAA")
    text = 'Looking.<tool_call>{"name": "read_file", "arguments": {"path": "a.txt",}}</tool_call>'
    r = Run(cwd)
    async with ScriptedLLM([Turn(text=text), Turn(text="Done.")]) as llm:
        assert await r(llm) == "end_turn"
    assert "".join(e.text for e in r.of(TextChunk)) == "Looking.Done."
    assert r.of(ToolFinished)[0].output == "AAA"
    assert r.history[2].content == "Looking." and r.history[2].tool_calls[0].name == "read_file"


async def test_plan_checklist_becomes_a_plan_update(cwd: Path) -> None:
    r = Run(cwd)
    async with ScriptedLLM([Turn(text="Plan:\n- [x] read\n- [ ] edit\n- [~] test")]) as llm:
        await r(llm)
    [plan] = r.of(PlanUpdate)
    assert [(e.content, e.status) for e in plan.entries] == [
        ("read", "completed"),
        ("edit", "pending"),
        ("test", "in_progress"),
    ]


async def test_compaction_applies_to_the_request_only(cwd: Path) -> None:
    r = Run(cwd)
    big = "z" * 3500
    r.history += [
        Message("assistant", "", tool_calls=[ToolCall("old", "read_file", "{}")]),
        Message("tool", big, tool_call_id="old", name="read_file"),
        Message("user", "u"),
        Message("assistant", "a"),
        Message("user", "b"),
        Message("user", "c"),
    ]
    r.settings = TurnSettings("m", 100, 900, "default")
    async with ScriptedLLM([Turn(text="ok")]) as llm:
        await r(llm)
    sent = llm.seen[0].body["messages"]
    assert sent[3]["content"] == "(elided: 3500 bytes of tool result)"
    assert r.history[3].content == big


async def test_max_tokens_and_refusal_stop(cwd: Path) -> None:
    async with ScriptedLLM([Turn(text="cut", stop="max_tokens"), Turn(stop="refusal")]) as llm:
        assert await Run(cwd)(llm) == "max_tokens"
        assert await Run(cwd)(llm, "anthropic-messages") == "refusal"


async def test_round_cap(cwd: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loop, "MAX_ROUNDS", 2)
    calls = [("l1", "list_dir", {"path": "."})]
    async with ScriptedLLM([Turn(calls=calls), Turn(calls=calls), Turn(text="never")]) as llm:
        assert await Run(cwd)(llm) == "max_turn_requests"
        assert len(llm.seen) == 2


async def test_endpoint_failure_raises_provider_error(cwd: Path) -> None:
    async with ScriptedLLM([Turn(status=503)]) as llm:
        with pytest.raises(ProviderError, match="HTTP 503"):
            await Run(cwd)(llm)


async def test_cancel_mid_stream_closes_the_connection(cwd: Path) -> None:
    r = Run(cwd)
    async with ScriptedLLM([Turn(text="a long answer that never ends", hang=True)]) as llm:
        task = asyncio.create_task(r(llm))
        await llm.streaming.wait()
        r.cancelled.set()
        assert await task == "cancelled"
        await llm.disconnected.wait()  # the model call was stopped, not left running
    assert r.history[-1].role == "assistant"  # what the user saw is kept


async def test_cancel_kills_a_running_command(cwd: Path) -> None:
    fifo = cwd / "started"
    os.mkfifo(fifo)
    r = Run(cwd, mode="bypassPermissions")
    cmd = {"command": "echo $$ > started; exec sleep 60"}
    script = [Turn(calls=[("s1", "bash", cmd), ("s2", "list_dir", {})]), Turn(text="x")]
    async with ScriptedLLM(script) as llm:
        task = asyncio.create_task(r(llm))
        pid = int(await asyncio.to_thread(fifo.read_text))  # the command is running
        r.cancelled.set()
        assert await task == "cancelled"
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert r.of(ToolFinished)[-1].status == "failed"
    tools = [m for m in r.history if m.role == "tool"]
    assert [(m.tool_call_id, m.content) for m in tools] == [
        ("s1", "cancelled by the user"),
        ("s2", "cancelled by the user"),
    ]
