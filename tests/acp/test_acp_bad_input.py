"""Whatever a client sends, helexa-acp answers with JSON-RPC (the error the spec names, or one
that says what was wrong), keeps running, and writes nothing but protocol to stdout: checked on
the raw bytes of a real process."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from rig.net import free_port

pytestmark = pytest.mark.slow


class Raw:
    """A helexa-acp process spoken to line by line."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[bytes] = []

    async def send(self, line: str | dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        text = line if isinstance(line, str) else json.dumps(line)
        self.proc.stdin.write(text.encode() + b"\n")
        await self.proc.stdin.drain()

    async def next(self) -> dict[str, Any]:
        """The next message on stdout; every line must be one JSON-RPC object."""
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), 30)
        assert line.endswith(b"\n"), f"stdout ended or broke a line: {line!r}"
        self.lines.append(line)
        msg = json.loads(line)
        assert isinstance(msg, dict) and msg.get("jsonrpc") == "2.0", line
        return msg

    async def answer(self, rid: int) -> dict[str, Any]:
        """The response to request `rid` (notifications before it are kept in `lines`)."""
        while True:
            msg = await self.next()
            if msg.get("id") == rid and "method" not in msg:
                return msg


def request(rid: int, method: str, params: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": rid, "method": method, "params": params}


async def test_bad_input_gets_json_rpc_errors_and_stdout_stays_clean(tmp_path: Path) -> None:
    down = f"http://127.0.0.1:{free_port()}/v1"
    env = {
        "HELEXA_ACP_BASE_URL": down,
        "HELEXA_ACP_MODEL": "m",
        "XDG_CONFIG_HOME": str(tmp_path / "cfg"),
        "XDG_DATA_HOME": str(tmp_path / "data"),
        "HOME": str(tmp_path),
    }
    with (tmp_path / "stderr").open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "helexa.acp",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=err,
            env=env,
        )
    raw = Raw(proc)
    try:
        await raw.send(request(1, "initialize", {"protocolVersion": 7}))  # from the future
        init = (await raw.answer(1))["result"]
        assert init["protocolVersion"] == 1 and init["agentCapabilities"]["loadSession"] is True

        await raw.send("this is not json")
        assert (await raw.next())["error"]["code"] == -32700
        await raw.send("[1, 2]")
        assert (await raw.next())["error"]["code"] == -32600
        await raw.send('{"jsonrpc": "2.0", "id": 2}')
        assert (await raw.next()) == {
            "jsonrpc": "2.0",
            "id": 2,
            "error": {
                "code": -32600,
                "message": "Invalid request",
                "data": {"message": "expected a JSON-RPC request, notification or response object"},
            },
        }

        await raw.send(request(3, "session/teleport", {}))
        assert (await raw.answer(3))["error"]["code"] == -32601
        prompt = {"sessionId": "ghost", "prompt": [{"type": "text", "text": "hi"}]}
        await raw.send(request(4, "session/prompt", prompt))
        e = (await raw.answer(4))["error"]
        assert (e["code"], e["message"]) == (-32602, "unknown session 'ghost'")
        await raw.send(request(5, "session/prompt", {"sessionId": 7}))
        assert (await raw.answer(5))["error"]["code"] == -32602
        await raw.send(request(6, "session/new", {"cwd": "relative/dir", "mcpServers": []}))
        e = (await raw.answer(6))["error"]
        assert e["message"] == "cwd must be an absolute path, got 'relative/dir'"
        await raw.send({"jsonrpc": "2.0", "method": "session/cancel", "params": {"sessionId": "x"}})
        await raw.send({"jsonrpc": "2.0", "method": "$/cancel_request", "params": {"id": 3}})
        await raw.send({"jsonrpc": "2.0", "method": "session/cancel", "params": "junk"})

        # An endpoint that is down: the prompt fails with a sentence naming it.
        await raw.send(request(7, "session/new", {"cwd": str(tmp_path), "mcpServers": []}))
        sid = (await raw.answer(7))["result"]["sessionId"]
        await raw.send(request(8, "session/prompt", prompt | {"sessionId": sid}))
        e = (await raw.answer(8))["error"]
        assert e["code"] == -32603
        assert e["message"].startswith(f"endpoint 'default' ({down}): ")
        stored = json.loads((tmp_path / f"data/helexa-acp/sessions/{sid}.json").read_text())
        assert [m["role"] for m in stored["history"]] == ["system"]  # a retry starts clean
        await raw.send(request(9, "session/set_mode", {"sessionId": sid, "modeId": "yolo"}))
        e = (await raw.answer(9))["error"]
        assert e["message"] == "unknown mode 'yolo' (bypassPermissions, default, plan)"

        # A stored session whose file is corrupt: a clear error, and the list skips it.
        (tmp_path / "data/helexa-acp/sessions/broken.json").write_text('{"session_id": "bro')
        load = {"sessionId": "broken", "cwd": str(tmp_path), "mcpServers": []}
        await raw.send(request(10, "session/load", load))
        e = (await raw.answer(10))["error"]
        assert e["code"] == -32603 and "broken.json is corrupt" in e["message"]

        # Still alive and answering.
        await raw.send(request(11, "session/list", {"cwd": str(tmp_path)}))
        assert [s["sessionId"] for s in (await raw.answer(11))["result"]["sessions"]] == [sid]
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        rc = await asyncio.wait_for(proc.wait(), 30)
    assert rc == 0
    assert proc.stdout is not None
    assert await proc.stdout.read() == b""  # nothing after the last answer
    assert b"Traceback" not in (tmp_path / "stderr").read_bytes()  # handled, not crashed into
