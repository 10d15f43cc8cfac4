"""A `Workspace` through the editor: its `fs/*` (unsaved buffers), its terminal, its permission
prompt; whatever the client doesn't offer falls back to the local workspace."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

from acp import Client, RequestError
from acp.schema import AllowedOutcome, ClientCapabilities, PermissionOption, ToolCallUpdate
from pydantic import ValidationError

from helexa.acp.events import ToolKind
from helexa.acp.workspace import LocalWorkspace, WorkspaceError

log = logging.getLogger("helexa.acp.client_workspace")
TERMINAL_OUTPUT_LIMIT = 1 << 20
PERMISSION_OPTIONS = [
    PermissionOption(option_id="allow_once", name="Allow once", kind="allow_once"),
    PermissionOption(option_id="allow_always", name="Always allow", kind="allow_always"),
    PermissionOption(option_id="reject_once", name="Reject", kind="reject_once"),
]
KINDS: tuple[ToolKind, ...] = ("read", "edit", "execute", "search", "other")
_STOPPING: set[asyncio.Task[None]] = set()  # kill + release of cancelled commands, still going


@contextlib.contextmanager
def editor(method: str) -> Iterator[None]:
    """The client's error (or a malformed answer) as a tool failure the model reads."""
    try:
        yield
    except RequestError as e:
        raise WorkspaceError(f"the editor's {method} failed: {e}") from None
    except ValidationError as e:
        raise WorkspaceError(f"the editor's {method} answer is malformed: {e}") from None


class ClientWorkspace:
    """`always` holds the tool kinds the user allowed for the rest of the session."""

    def __init__(
        self,
        client: Client,
        session_id: str,
        caps: ClientCapabilities,
        cwd: Path,
        always: set[str],
        on_terminal: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        self.cwd = cwd
        self._client = client
        self._sid = session_id
        self._caps = caps
        self._local = LocalWorkspace(cwd)
        self._always = always
        self._on_terminal = on_terminal

    async def read_text(self, path: Path, line: int | None, limit: int | None) -> str:
        if self._caps.fs is not None and self._caps.fs.read_text_file:
            try:
                r = await self._client.read_text_file(
                    session_id=self._sid, path=str(path), line=line, limit=limit
                )
                return r.content
            except RequestError as e:
                log.info("client fs/read_text_file %s failed (%s); reading it here", path, e)
        return await self._local.read_text(path, line, limit)

    async def write_text(self, path: Path, content: str) -> None:
        if self._caps.fs is not None and self._caps.fs.write_text_file:
            with editor("fs/write_text_file"):
                await self._client.write_text_file(
                    session_id=self._sid, path=str(path), content=content
                )
            return
        await self._local.write_text(path, content)

    async def run(self, command: str, cwd: Path, timeout_s: float) -> tuple[str, int | None]:
        if not self._caps.terminal:
            return await self._local.run(command, cwd, timeout_s)
        with editor("terminal"):
            return await self._terminal(command, cwd, timeout_s)

    async def _terminal(self, command: str, cwd: Path, timeout_s: float) -> tuple[str, int | None]:
        t = await self._client.create_terminal(
            session_id=self._sid,
            command="sh",
            args=["-c", command],
            cwd=str(cwd),
            output_byte_limit=TERMINAL_OUTPUT_LIMIT,
        )
        ids: dict[str, Any] = {"session_id": self._sid, "terminal_id": t.terminal_id}
        try:
            if self._on_terminal is not None:
                await self._on_terminal(t.terminal_id)
            try:
                done = await asyncio.wait_for(self._client.wait_for_terminal_exit(**ids), timeout_s)
                code = done.exit_code
            except TimeoutError:
                await self._client.kill_terminal(**ids)
                code = None
            out = await self._client.terminal_output(**ids)
        except asyncio.CancelledError:  # the command stops too, without holding up the cancel
            task = asyncio.ensure_future(self._stop(ids))
            _STOPPING.add(task)
            task.add_done_callback(_STOPPING.discard)
            raise
        except BaseException:
            await self._release(ids)
            raise
        await self._release(ids)
        return out.output, code

    async def _stop(self, ids: dict[str, Any]) -> None:
        with contextlib.suppress(Exception):
            await self._client.kill_terminal(**ids)
        await self._release(ids)

    async def _release(self, ids: dict[str, Any]) -> None:
        with contextlib.suppress(Exception):
            await self._client.release_terminal(**ids)

    async def allow(self, call_id: str, title: str, kind: str, raw_input: dict[str, Any]) -> bool:
        if kind in self._always:
            return True
        with editor("session/request_permission"):
            r = await self._client.request_permission(
                session_id=self._sid,
                tool_call=ToolCallUpdate(
                    tool_call_id=call_id,
                    title=title,
                    kind=kind if kind in KINDS else "other",
                    status="pending",
                    raw_input=raw_input,
                ),
                options=PERMISSION_OPTIONS,
            )
        outcome = r.outcome
        if not isinstance(outcome, AllowedOutcome):
            return False
        if outcome.option_id == "allow_always":
            self._always.add(kind)
        return outcome.option_id in ("allow_once", "allow_always")
