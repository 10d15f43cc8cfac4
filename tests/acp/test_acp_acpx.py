"""A second, independent ACP client: `acpx` (npm, on Node 22) drives a real `helexa-acp` against
a real cortex in front of a scripted fake neuron, and its `--format json` transcript (every
JSON-RPC message both ways) is checked message by message."""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any

import pytest
from scripted_llm import Turn

from conftest import ENDPOINTS, MODEL, AcpStack
from rig.require import CI_CACHE, require_missing

pytestmark = pytest.mark.slow

VERSIONS = "node@22.23.3 acpx@0.19.1"  # keep in step with .ci/run
BIN = CI_CACHE / "acpx" / "node_modules" / ".bin"


def acpx() -> Path:
    if not (BIN / "acpx").exists() or not (BIN / "node").exists():
        require_missing("acpx", f"npm install --prefix {CI_CACHE / 'acpx'} {VERSIONS}")
    return BIN / "acpx"


async def run_acpx(stack: AcpStack, prompt: str, *flags: str) -> list[dict[str, Any]]:
    """`acpx --agent helexa-acp --format json --approve-all exec PROMPT`: the transcript."""
    agent = shlex.join([sys.executable, "-m", "helexa.acp"])
    env = {**os.environ, **stack.env, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = await asyncio.create_subprocess_exec(
        str(acpx()),
        "--agent",
        agent,
        "--cwd",
        str(stack.project),
        "--format",
        "json",
        "--approve-all",
        *flags,
        "exec",
        prompt,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    (stack.log.parent / "acpx-transcript.jsonl").write_bytes(out)  # kept for a failure's reader
    assert proc.returncode == 0, err.decode()[-2000:]
    lines = [json.loads(line) for line in out.decode().splitlines() if line.strip()]
    assert all(m.get("jsonrpc") == "2.0" for m in lines), lines
    return lines


def trace(messages: list[dict[str, Any]]) -> list[str]:
    """Each message as a word: its method (`session/update` as `update:<kind>`), or `result`
    / `error` for a reply; consecutive chunks of one kind collapse to one."""
    out: list[str] = []
    for m in messages:
        if m.get("method") == "session/update":
            word = "update:" + m["params"]["update"]["sessionUpdate"]
        else:
            word = m.get("method") or ("error" if "error" in m else "result")
        if not (word.endswith("_chunk") and out and out[-1] == word):
            out.append(word)
    return out


@pytest.mark.parametrize("endpoint", list(ENDPOINTS))
async def test_acpx_read_edit_answer(acp_stack: AcpStack, endpoint: str) -> None:
    target = acp_stack.project / "greet.py"
    target.write_text('print("hello world")\n')
    edit = {"path": "greet.py", "old_text": "hello world", "new_text": "hello fleet"}
    acp_stack.script += [
        Turn(
            text="Let me look.",
            reasoning="Read it first.",
            calls=[("c1", "read_file", {"path": "greet.py"})],
        ),
        Turn(calls=[("c2", "edit_file", edit)]),
        Turn(text="It now greets the fleet."),
    ]
    messages = await run_acpx(
        acp_stack, "make greet.py greet the fleet", "--model", f"{endpoint}:{MODEL}"
    )
    assert target.read_text() == 'print("hello fleet")\n'
    t = trace(messages)
    prompt_at = t.index("session/prompt")
    assert t[:2] == ["initialize", "result"] and "session/new" in t[:prompt_at]
    assert t[prompt_at:] == [
        "session/prompt",
        "update:agent_thought_chunk",
        "update:agent_message_chunk",
        "update:tool_call",  # read_file: free inside the cwd, read through the client
        "fs/read_text_file",
        "result",
        "update:tool_call_update",
        "update:tool_call",  # edit_file: asks, then reads and writes through the client
        "session/request_permission",
        "result",
        "fs/read_text_file",
        "result",
        "fs/write_text_file",
        "result",
        "update:tool_call_update",
        "update:agent_message_chunk",
        "result",
    ]
    updates = [m["params"]["update"] for m in messages if m.get("method") == "session/update"]
    chunks = {"agent_thought_chunk": "", "agent_message_chunk": ""}
    for u in updates:
        if u["sessionUpdate"] in chunks:
            chunks[u["sessionUpdate"]] += u["content"]["text"]
    assert chunks == {
        "agent_thought_chunk": "Read it first.",
        "agent_message_chunk": "Let me look.It now greets the fleet.",
    }
    cards = [u for u in updates if u["sessionUpdate"] == "tool_call"]
    assert [(c["toolCallId"], c["kind"], c["title"]) for c in cards] == [
        ("c1", "read", "Read greet.py"),
        ("c2", "edit", "Edit greet.py"),
    ]
    at = next(i for i, m in enumerate(messages) if m.get("method") == "session/request_permission")
    ask, answer = messages[at], messages[at + 1]  # ids repeat across directions: go by order
    assert ask["params"]["toolCall"]["toolCallId"] == "c2" and answer["id"] == ask["id"]
    assert answer["result"]["outcome"]["outcome"] == "selected"
    done = [u for u in updates if u["sessionUpdate"] == "tool_call_update"]
    assert [u["status"] for u in done] == ["completed", "completed"]
    diff = next(c for c in done[1]["content"] if c["type"] == "diff")
    assert (diff["oldText"], diff["newText"]) == (
        'print("hello world")\n',
        'print("hello fleet")\n',
    )
    assert messages[-1]["result"] == {"stopReason": "end_turn"}
    # The endpoint chosen with --model carried all three model requests, through cortex.
    path = {"chat": "/v1/chat/completions", "resp": "/v1/responses", "anth": "/v1/chat/completions"}
    assert len(acp_stack.seen(path[endpoint])) == 3
