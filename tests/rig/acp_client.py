"""An ACP client for tests: drives a real `helexa-acp` process through the SDK's
`spawn_agent_process`, records every `session/update`, answers permission prompts from a script,
and (when asked to offer them) serves `fs/*` and `terminal/*` from this machine."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from acp import PROTOCOL_VERSION, RequestError, text_block
from acp.client.connection import ClientSideConnection
from acp.connection import StreamEvent
from acp.schema import (
    AgentMessageChunk,
    AgentThoughtChunk,
    AllowedOutcome,
    ClientCapabilities,
    CreateTerminalResponse,
    DeniedOutcome,
    EnvVariable,
    FileSystemCapabilities,
    PermissionOption,
    ReadTextFileResponse,
    RequestPermissionResponse,
    TerminalOutputResponse,
    ToolCallProgress,
    ToolCallStart,
    ToolCallUpdate,
    WaitForTerminalExitResponse,
)
from acp.stdio import spawn_agent_process


@dataclass
class Terminal:
    proc: asyncio.subprocess.Process
    output: bytearray = field(default_factory=bytearray)
    reader: asyncio.Task[None] | None = None


class RecordingClient:
    def __init__(self, answers: list[str] | None = None) -> None:
        self.updates: list[Any] = []
        self.permission_requests: list[ToolCallUpdate] = []
        self.answers = list(answers or [])  # option ids, in order; empty → allow_once
        self.calls: list[tuple[str, dict[str, Any]]] = []  # fs/terminal calls the agent made
        self.terminals: dict[str, Terminal] = {}
        self.wire: list[tuple[str, dict[str, Any]]] = []  # ("incoming"/"outgoing", raw JSON-RPC)
        self.failing: set[str] = set()  # methods answered with a JSON-RPC error
        self._arrived = asyncio.Event()

    # ---- what the agent calls ---------------------------------------------------------------

    async def session_update(self, session_id: str, update: Any, **kwargs: Any) -> None:
        self.updates.append(update)
        self._arrived.set()

    async def request_permission(
        self, session_id: str, tool_call: ToolCallUpdate, options: list[PermissionOption], **kw: Any
    ) -> RequestPermissionResponse:
        self.permission_requests.append(tool_call)
        self._maybe_fail("session/request_permission")
        choice = self.answers.pop(0) if self.answers else "allow_once"
        if choice == "cancelled":
            return RequestPermissionResponse(outcome=DeniedOutcome(outcome="cancelled"))
        assert choice in {o.option_id for o in options}, options
        return RequestPermissionResponse(
            outcome=AllowedOutcome(outcome="selected", option_id=choice)
        )

    async def read_text_file(
        self,
        session_id: str,
        path: str,
        line: int | None = None,
        limit: int | None = None,
        **kw: Any,
    ) -> ReadTextFileResponse:
        self._note("fs/read_text_file", {"path": path, "line": line, "limit": limit})
        return ReadTextFileResponse(content=await asyncio.to_thread(Path(path).read_text))

    async def write_text_file(self, session_id: str, path: str, content: str, **kw: Any) -> None:
        self._note("fs/write_text_file", {"path": path})
        self._maybe_fail("fs/write_text_file")
        await asyncio.to_thread(Path(path).write_text, content)

    async def create_terminal(
        self,
        session_id: str,
        command: str,
        args: list[str] | None = None,
        env: list[EnvVariable] | None = None,
        cwd: str | None = None,
        output_byte_limit: int | None = None,
        **kw: Any,
    ) -> CreateTerminalResponse:
        proc = await asyncio.create_subprocess_exec(
            command,
            *(args or []),
            cwd=cwd,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,  # a kill takes the command's children too, as editors do
        )
        t = Terminal(proc)

        async def drain() -> None:
            assert proc.stdout is not None
            while chunk := await proc.stdout.read(4096):
                t.output.extend(chunk)

        t.reader = asyncio.ensure_future(drain())
        tid = f"term-{len(self.terminals)}"
        self.terminals[tid] = t
        self._note("terminal/create", {"command": command, "args": args, "cwd": cwd})
        return CreateTerminalResponse(terminal_id=tid)

    async def wait_for_terminal_exit(
        self, session_id: str, terminal_id: str, **kw: Any
    ) -> WaitForTerminalExitResponse:
        t = self.terminals[terminal_id]
        code = await t.proc.wait()
        assert t.reader is not None
        await t.reader
        return WaitForTerminalExitResponse(exit_code=code if code >= 0 else None)

    async def terminal_output(
        self, session_id: str, terminal_id: str, **kw: Any
    ) -> TerminalOutputResponse:
        t = self.terminals[terminal_id]
        return TerminalOutputResponse(output=t.output.decode(), truncated=False)

    async def kill_terminal(self, session_id: str, terminal_id: str, **kw: Any) -> None:
        self._note("terminal/kill", {"terminal_id": terminal_id})
        _kill(self.terminals[terminal_id].proc)

    async def release_terminal(self, session_id: str, terminal_id: str, **kw: Any) -> None:
        self._note("terminal/release", {"terminal_id": terminal_id})
        t = self.terminals.pop(terminal_id)
        _kill(t.proc)
        await t.proc.wait()
        assert t.reader is not None
        await t.reader  # its pipe closed: nothing is left for the garbage collector

    async def create_elicitation(self, message: str, mode: Any, **kw: Any) -> Any:
        raise NotImplementedError("elicitation")

    async def complete_elicitation(self, elicitation_id: str, **kw: Any) -> None:
        return None

    async def ext_method(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError(method)

    async def ext_notification(self, method: str, params: dict[str, Any]) -> None:
        return None

    def on_connect(self, conn: Any) -> None:
        return None

    def observe(self, event: StreamEvent) -> None:
        self.wire.append((event.direction.value, event.message))

    # ---- what tests read --------------------------------------------------------------------

    async def wait_for(self, cond: Callable[[], bool], within: float = 30.0) -> None:
        """Until `cond()` holds; rechecked on every update or fs/terminal call that arrives."""
        async with asyncio.timeout(within):
            while not cond():
                self._arrived.clear()
                await self._arrived.wait()

    async def wait_until(self, pred: Callable[[Any], bool], within: float = 30.0) -> Any:
        """The first recorded update matching `pred`, waiting for it to arrive."""
        await self.wait_for(lambda: any(pred(u) for u in self.updates), within)
        return next(u for u in self.updates if pred(u))

    def _maybe_fail(self, method: str) -> None:
        if method in self.failing:
            raise RequestError(-32603, f"{method} refused by the test")

    def _note(self, call: str, params: dict[str, Any]) -> None:
        self.calls.append((call, params))
        self._arrived.set()

    def text(self) -> str:
        return "".join(u.content.text for u in self.updates if isinstance(u, AgentMessageChunk))

    def thoughts(self) -> str:
        return "".join(u.content.text for u in self.updates if isinstance(u, AgentThoughtChunk))

    def cards(self) -> list[ToolCallStart]:
        return [u for u in self.updates if isinstance(u, ToolCallStart)]

    def finished(self) -> list[ToolCallProgress]:
        return [u for u in self.updates if isinstance(u, ToolCallProgress) and u.status]


def _kill(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def capabilities(fs: bool = False, terminal: bool = False) -> ClientCapabilities:
    return ClientCapabilities(
        fs=FileSystemCapabilities(read_text_file=fs, write_text_file=fs), terminal=terminal
    )


@contextlib.asynccontextmanager
async def helexa_acp(
    client: RecordingClient,
    env: dict[str, str],
    stderr: TextIO,
    *,
    caps: ClientCapabilities | None = None,
) -> AsyncIterator[ClientSideConnection]:
    """A real `helexa-acp` process (this interpreter, `-m helexa.acp`), initialized."""
    async with spawn_agent_process(
        client,
        sys.executable,
        "-m",
        "helexa.acp",
        env=env,
        transport_kwargs={"stderr": stderr},
        observers=[client.observe],
    ) as (conn, _proc):
        await conn.initialize(
            protocol_version=PROTOCOL_VERSION, client_capabilities=caps or capabilities()
        )
        yield conn


async def say(conn: ClientSideConnection, session_id: str, text: str) -> str:
    """Prompt with one text block; the stop reason."""
    r = await conn.prompt(session_id=session_id, prompt=[text_block(text)])
    return str(r.stop_reason)
