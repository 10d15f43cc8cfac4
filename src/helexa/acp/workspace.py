"""Where tools act: the `Workspace` protocol and the local implementation.

The loop and the tools only see this protocol, so the same tool code runs against the user's disk
or, when the editor offers `fs`/`terminal`, through the client (unsaved buffers, its terminal).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

Allow = Callable[[str, str, str, dict[str, Any]], Awaitable[bool]]
OUTPUT_KEEP = 1 << 20  # bytes of command output kept in memory; tools cap further


class WorkspaceError(Exception):
    """A workspace operation failed in a way the model should hear about (not a crash)."""


class Workspace(Protocol):
    cwd: Path

    async def read_text(self, path: Path, line: int | None, limit: int | None) -> str:
        """The file's text from 1-based `line`, at most `limit` lines; OSError or
        WorkspaceError when it cannot be read."""
        ...

    async def write_text(self, path: Path, content: str) -> None: ...

    async def run(self, command: str, cwd: Path, timeout_s: float) -> tuple[str, int | None]:
        """Combined output and exit status (None when killed by the timeout)."""
        ...

    async def allow(self, call_id: str, title: str, kind: str, raw_input: dict[str, Any]) -> bool:
        """Ask the user; False means refused."""
        ...


def slice_lines(text: str, line: int | None, limit: int | None) -> str:
    """`line` (1-based) and `limit` applied the way ACP's fs/read_text_file does."""
    if line is None and limit is None:
        return text
    lines = text.splitlines(keepends=True)
    start = max((line or 1) - 1, 0)
    end = None if limit is None else start + max(limit, 0)
    return "".join(lines[start:end])


async def _deny(call_id: str, title: str, kind: str, raw_input: dict[str, Any]) -> bool:
    return False


class LocalWorkspace:
    """Files and `sh -c` on this machine; permission prompts go to `allow` (default: refuse)."""

    def __init__(self, cwd: Path, allow: Allow | None = None) -> None:
        self.cwd = cwd
        self._allow = allow or _deny

    async def read_text(self, path: Path, line: int | None, limit: int | None) -> str:
        text = await asyncio.to_thread(path.read_text, encoding="utf-8", errors="replace")
        return slice_lines(text, line, limit)

    async def write_text(self, path: Path, content: str) -> None:
        def write() -> None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content, encoding="utf-8")

        await asyncio.to_thread(write)

    async def run(self, command: str, cwd: Path, timeout_s: float) -> tuple[str, int | None]:
        proc = await asyncio.create_subprocess_exec(
            "sh",
            "-c",
            command,
            cwd=cwd,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,  # its own process group, so a kill takes its children too
        )
        buf = bytearray()

        async def drain() -> None:
            assert proc.stdout is not None
            while chunk := await proc.stdout.read(65536):
                if len(buf) < OUTPUT_KEEP:
                    buf.extend(chunk[: OUTPUT_KEEP - len(buf)])
            await proc.wait()

        code: int | None
        try:
            await asyncio.wait_for(drain(), timeout_s)
            code = proc.returncode
        except TimeoutError:
            _kill(proc)
            await proc.wait()
            code = None
        except BaseException:  # cancelled: the command must not outlive the turn
            _kill(proc)
            with contextlib.suppress(BaseException):
                await asyncio.shield(proc.wait())
            raise
        return buf.decode("utf-8", errors="replace"), code

    async def allow(self, call_id: str, title: str, kind: str, raw_input: dict[str, Any]) -> bool:
        return await self._allow(call_id, title, kind, raw_input)


def _kill(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
