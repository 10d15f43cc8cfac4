"""The real Claude Code CLI against a real cortex in front of a scripted neuron: a full tool
loop (the model asks for Bash, Claude Code runs it and sends the result, the model answers)."""

from __future__ import annotations

import asyncio
import os
import secrets
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


@pytest.mark.parametrize("key_var", ["ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN"])
async def test_claude_code_runs_a_bash_tool_loop(
    start_cortex: CortexFactory, fake: FakeNeuron, tmp_path: Path, key_var: str
) -> None:
    claude = claude_binary()
    marker = f"helexa-{secrets.token_hex(4)}-marker"
    model = fake.stream_responder = ScriptedModel(marker)
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
        "Run the marker command and tell me what it printed.",
        "--allowedTools",
        "Bash",
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
    sent = recorder.dump()
    report = f"exit {proc.returncode}\nstderr: {err.decode()[-4000:]}\nrequests:\n{sent}"
    assert proc.returncode == 0, report
    events: list[Any] = [orjson.loads(line) for line in out.splitlines() if line.strip()]
    bash_results = [r for c in fake.calls("/v1/chat/completions") for r in tool_results(c.json)]
    assert any(marker in r for r in bash_results), report
    final = [e for e in events if e.get("type") == "result"]
    assert final and final[-1].get("is_error") is False, report
    assert f"The command printed: {marker}" in final[-1]["result"], report
    assert all(s.status == 200 for s in recorder.seen), report
    # What Claude Code sends beyond the basics, and what the neuron got for it.
    first = orjson.loads(recorder.seen[0].body)
    assert [m["role"] for m in first["messages"]][:2] == ["user", "system"], report
    assert first["max_tokens"] >= 32000  # Claude Code's default for a model it doesn't know
    chat = fake.calls("/v1/chat/completions")[0].json
    assert [m["role"] for m in chat["messages"]][:3] == ["system", "user", "system"]
    assert not chat["messages"][0]["content"].startswith("x-anthropic-billing-header")
    assert chat["max_tokens"] == first["max_tokens"]  # the neuron clamps, cortex never refuses
    assert chat["chat_template_kwargs"] == {"enable_thinking": True}  # effort "high"
    # The thinking went back with the tool call, as the chat template expects it.
    second = fake.calls("/v1/chat/completions")[1].json
    assistant = next(m for m in second["messages"] if m["role"] == "assistant")
    assert assistant["reasoning_content"] == "The user wants the marker; run it."
    assert assistant["tool_calls"][0]["id"] == model.call_id
