"""The real Claude Code CLI against a real cortex in front of a scripted neuron: a full tool
loop (the model asks for Bash, Claude Code runs it and sends the result, the model answers)."""

from __future__ import annotations

import asyncio
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from rig.cortex_rig import CortexFactory
from rig.fake_neuron import (
    FakeNeuron,
    JsonDict,
    content_delta,
    finish_chunk,
    reasoning_delta,
    tool_call_args,
    tool_call_head,
)
from rig.recorder import Recorder
from rig.require import require_missing

VERSION = "2.1.332"  # keep in step with .ci/run
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "helexa-ci"
CLAUDE = CACHE / "claude-code" / "node_modules" / ".bin" / "claude"
KEY = "sk-ant-helexa-test"
MODEL = "test-model"


def claude_binary() -> Path:
    if not CLAUDE.exists():
        require_missing(
            f"Claude Code {VERSION}",
            f"npm install --prefix {CLAUDE.parents[2]} @anthropic-ai/claude-code@{VERSION}",
        )
    return CLAUDE


def tool_results(body: JsonDict) -> list[str]:
    return [str(m.get("content")) for m in body.get("messages", []) if m.get("role") == "tool"]


class ScriptedModel:
    """First turn of the main loop: thinking, then a Bash tool call (as Qwen3 answers); once
    its result is back: the answer."""

    def __init__(self, marker: str) -> None:
        self.command = f"echo {marker}"
        self.call_id = "call_" + secrets.token_hex(8)

    def __call__(self, body: JsonDict) -> list[JsonDict | str] | None:
        if not any(t.get("function", {}).get("name") == "Bash" for t in body.get("tools", [])):
            return [content_delta("Helexa test"), finish_chunk("stop")]  # side requests
        results = tool_results(body)
        if results:
            return [content_delta(f"The command printed: {results[-1].strip()}"), finish_chunk()]
        args = orjson.dumps({"command": self.command, "description": "Print a marker"})
        return [
            reasoning_delta("The user wants the marker; run it."),
            tool_call_head(0, "Bash", self.call_id),
            tool_call_args(0, args.decode()),
            finish_chunk("tool_calls"),
        ]


def claude_env(home: Path, base_url: str, key_var: str) -> dict[str, str]:
    keep = {k: os.environ[k] for k in ("PATH", "LANG", "TERM") if k in os.environ}
    return {
        **keep,
        "HOME": str(home),
        "ANTHROPIC_BASE_URL": base_url,
        key_var: KEY,  # x-api-key, or Authorization: Bearer
        "ANTHROPIC_MODEL": MODEL,
        "ANTHROPIC_SMALL_FAST_MODEL": MODEL,
        "ANTHROPIC_DEFAULT_HAIKU_MODEL": MODEL,
        "DISABLE_TELEMETRY": "1",
        "DISABLE_AUTOUPDATER": "1",
        "DISABLE_ERROR_REPORTING": "1",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "NO_PROXY": "*",
    }


@dataclass
class Run:
    """One finished `claude -p` run: its exit, its stream-json events, what it sent."""

    returncode: int | None
    events: list[Any]
    recorder: Recorder
    report: str  # for assertion messages: exit, stderr and every request

    def result(self) -> dict[str, Any]:
        final = [e for e in self.events if e.get("type") == "result"]
        assert final, self.report
        return dict(final[-1])


async def run_claude(
    start_cortex: CortexFactory,
    fake: FakeNeuron,
    tmp_path: Path,
    prompt: str,
    tools: str,
    key_var: str = "ANTHROPIC_API_KEY",
) -> Run:
    claude = claude_binary()
    recorder = Recorder()
    cortex = await start_cortex(
        {"mock-node": fake},
        entitlements={"keys": [{"key": KEY, "account_id": "acct"}]},
        middlewares=[recorder.middleware],
    )
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    proc = await asyncio.create_subprocess_exec(
        str(claude),
        "-p",
        prompt,
        "--allowedTools",
        tools,
        "--output-format",
        "stream-json",
        "--verbose",
        cwd=work,
        env=claude_env(home, cortex.url, key_var),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(120):
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    report = f"exit {proc.returncode}\nstderr: {err.decode()[-4000:]}\nrequests:\n{recorder.dump()}"
    events = [orjson.loads(line) for line in out.splitlines() if line.strip()]
    return Run(proc.returncode, events, recorder, report)


@pytest.mark.parametrize("key_var", ["ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN"])
async def test_claude_code_runs_a_bash_tool_loop(
    start_cortex: CortexFactory, fake: FakeNeuron, tmp_path: Path, key_var: str
) -> None:
    marker = f"helexa-{secrets.token_hex(4)}-marker"
    model = fake.stream_responder = ScriptedModel(marker)
    run = await run_claude(
        start_cortex,
        fake,
        tmp_path,
        "Run the marker command and tell me what it printed.",
        "Bash",
        key_var,
    )
    report = run.report
    assert run.returncode == 0, report
    bash_results = [r for c in fake.calls("/v1/chat/completions") for r in tool_results(c.json)]
    assert any(marker in r for r in bash_results), report
    final = run.result()
    assert final.get("is_error") is False, report
    assert f"The command printed: {marker}" in final["result"], report
    assert all(s.status == 200 for s in run.recorder.seen), report
    # What Claude Code sends beyond the basics, and what the neuron got for it.
    first = orjson.loads(run.recorder.seen[0].body)
    assert [m["role"] for m in first["messages"]][:2] == ["user", "system"], report
    assert first["max_tokens"] >= 32000  # Claude Code's default for a model it doesn't know
    chat = fake.calls("/v1/chat/completions")[0].json
    assert [m["role"] for m in chat["messages"]][:3] == ["system", "user", "system"]
    assert not chat["messages"][0]["content"].startswith("x-anthropic-billing-header")
    # cortex never refuses it: it reserves and forwards at most the node's output limit
    assert chat["max_tokens"] == min(first["max_tokens"], fake.discovery["max_output_tokens"])
    assert chat["chat_template_kwargs"] == {"enable_thinking": True}  # effort "high"
    # The thinking went back with the tool call, as the chat template expects it.
    second = fake.calls("/v1/chat/completions")[1].json
    assistant = next(m for m in second["messages"] if m["role"] == "assistant")
    assert assistant["reasoning_content"] == "The user wants the marker; run it."
    assert assistant["tool_calls"][0]["id"] == model.call_id


async def test_claude_code_tool_search_loads_a_deferred_tool(
    start_cortex: CortexFactory, fake: FakeNeuron, tmp_path: Path
) -> None:
    """Claude Code sends rarely used tools only once ToolSearch has loaded them (the prompt
    stays smaller, which a small context needs); its result carries `tool_reference` blocks.
    Refusing those would make it retry and then give tool search up."""

    def model(body: JsonDict) -> list[JsonDict | str]:
        results = tool_results(body)
        if results:
            return [content_delta(f"search said: {results[-1]}"), finish_chunk()]
        args = orjson.dumps({"query": "select:WebFetch", "max_results": 5}).decode()
        return [
            tool_call_head(0, "ToolSearch", "call_search"),
            tool_call_args(0, args),
            finish_chunk("tool_calls"),
        ]

    fake.stream_responder = model
    run = await run_claude(
        start_cortex, fake, tmp_path, "Load the web fetch tool.", "ToolSearch,WebFetch"
    )
    assert run.returncode == 0, run.report
    assert [s.status for s in run.recorder.seen] == [200, 200], run.report
    assert run.result()["result"] == "search said: Tool loaded: WebFetch", run.report
    names = [t["function"]["name"] for t in fake.calls("/v1/chat/completions")[1].json["tools"]]
    assert "WebFetch" in names, run.report
