"""The five tools the model may call, their JSON schemas, and how a call becomes a card and a
result.

Every failure a model can cause (bad JSON, missing arguments, an ambiguous edit, a refusal) comes
back as a failed tool result it can read and recover from; nothing here raises into the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from helexa.acp.events import Diff, ToolFinished, ToolKind, ToolStarted, ToolStatus
from helexa.acp.hermes import loads_tolerant
from helexa.acp.history import ToolCall
from helexa.acp.paths import expand
from helexa.acp.policy import Action, Policy, Refused
from helexa.acp.workspace import Workspace, WorkspaceError

BASH_OUTPUT_CAP = 30_000  # characters of command output the model gets back
READ_CAP = 100_000  # characters of a file read_file returns at once
LIST_CAP = 1_000  # entries list_dir returns
BASH_TIMEOUT_S = 120.0


class _Args(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ReadFile(_Args):
    """Read a text file. `line` (1-based) and `limit` select a range of lines."""

    path: str
    line: int | None = Field(None, ge=1)
    limit: int | None = Field(None, ge=1)


class WriteFile(_Args):
    """Create or overwrite a file with `content`."""

    path: str
    content: str


class EditFile(_Args):
    """Replace `old_text`, which must occur exactly once in the file, with `new_text`."""

    path: str
    old_text: str = Field(min_length=1)
    new_text: str


class ListDir(_Args):
    """List a directory; each entry is tagged f (file), d (directory) or l (symlink)."""

    path: str = "."


class Bash(_Args):
    """Run a command with `sh -c`; returns combined stdout/stderr and the exit status."""

    command: str = Field(min_length=1)
    cwd: str | None = None
    timeout_s: float | None = Field(None, gt=0, le=600)


ARGS: dict[str, type[_Args]] = {
    "read_file": ReadFile,
    "write_file": WriteFile,
    "edit_file": EditFile,
    "list_dir": ListDir,
    "bash": Bash,
}
KINDS: dict[str, ToolKind] = {
    "read_file": "read",
    "write_file": "edit",
    "edit_file": "edit",
    "list_dir": "search",
    "bash": "execute",
}

VERBS = {
    "read_file": "Read",
    "write_file": "Write",
    "edit_file": "Edit",
    "list_dir": "List",
    "bash": "Run",
}


@dataclass(frozen=True)
class ToolSpec:
    name: str
    description: str
    parameters: dict[str, Any]


def _schema(model: type[BaseModel]) -> dict[str, Any]:
    """Pydantic's schema without titles, `X | None` shown as X: what small models follow best."""
    schema = model.model_json_schema()
    props: dict[str, Any] = {}
    for name, prop in schema.get("properties", {}).items():
        prop = {k: v for k, v in prop.items() if k != "title"}
        if "anyOf" in prop:
            prop.update(next(a for a in prop.pop("anyOf") if a.get("type") != "null"))
            prop.pop("default", None)
        props[name] = prop
    return {"type": "object", "properties": props, "required": schema.get("required", [])}


SPECS = [ToolSpec(n, (m.__doc__ or "").strip(), _schema(m)) for n, m in ARGS.items()]


class ToolError(Exception):
    """A result the model should see as a failed tool call."""


def _parse(call: ToolCall) -> dict[str, Any]:
    try:
        raw = loads_tolerant(call.arguments) if call.arguments.strip() else {}
    except ValueError as e:
        raise ToolError(f"{call.name}: arguments are not valid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise ToolError(f"{call.name}: arguments must be a JSON object")
    return raw


def _cap(text: str, cap: int) -> str:
    if len(text) <= cap:
        return text
    head = cap // 4
    omitted = len(text) - cap
    return f"{text[:head]}\n… ({omitted} characters omitted) …\n{text[len(text) - (cap - head) :]}"


class Toolbox:
    """Runs tool calls for one turn against a workspace under a mode's policy."""

    def __init__(self, ws: Workspace, policy: Policy) -> None:
        self.ws = ws
        self.policy = policy

    def started(self, call: ToolCall) -> ToolStarted:
        """The card shown before the call runs (best effort when the arguments are broken)."""
        try:
            raw = _parse(call)
        except ToolError:
            raw = {"arguments": call.arguments}
        target = raw.get("command") if call.name == "bash" else raw.get("path")
        title = call.name
        if isinstance(target, str):
            title = f"{VERBS.get(call.name, call.name)} {_one_line(target)}"
        locations = []
        if call.name != "bash" and isinstance(target, str):
            with contextlib.suppress(ValueError):  # a NUL in the path: run() reports it
                locations.append(str(expand(target, self.ws.cwd)))
        kind = KINDS.get(call.name, "other")
        return ToolStarted(call.id, call.name, title, kind, raw, locations)

    async def run(self, call: ToolCall, card: ToolStarted) -> ToolFinished:
        try:
            model = ARGS.get(call.name)
            if model is None:
                raise ToolError(f"unknown tool '{call.name}'; available: {', '.join(ARGS)}")
            try:
                args = model.model_validate(_parse(call))
            except ValidationError as e:
                raise ToolError(f"{call.name}: invalid arguments: {_brief(e)}") from None
            handler: Callable[[Any, ToolStarted], Awaitable[ToolFinished]] = getattr(
                self, f"_{call.name}"
            )
            return await handler(args, card)
        except ToolError as e:
            return ToolFinished(call.id, "failed", str(e))
        except (OSError, ValueError, WorkspaceError) as e:  # ValueError: a NUL in a path
            return ToolFinished(call.id, "failed", f"{call.name}: {e}")

    async def _gate(self, action: Action, path: Path | None, card: ToolStarted) -> None:
        decision = self.policy.decide(action, path)
        if isinstance(decision, Refused):
            raise ToolError(decision.reason)
        if decision == "ask" and not await self.ws.allow(
            card.call_id, card.title, card.kind, card.raw_input
        ):
            raise ToolError(f"{card.name}: permission denied by the user")

    def _path(self, raw: str) -> Path:
        return expand(raw, self.ws.cwd)

    async def _read_file(self, a: ReadFile, card: ToolStarted) -> ToolFinished:
        path = self._path(a.path)
        await self._gate("read", path, card)
        text = await self.ws.read_text(path, a.line, a.limit)
        if len(text) > READ_CAP:
            note = f"\n… (truncated at {READ_CAP} characters; read further with line/limit)"
            text = text[:READ_CAP] + note
        return ToolFinished(card.call_id, "completed", text)

    async def _write_file(self, a: WriteFile, card: ToolStarted) -> ToolFinished:
        path = self._path(a.path)
        await self._gate("write", path, card)
        old = await self.ws.read_text(path, None, None) if path.is_file() else None
        await self.ws.write_text(path, a.content)
        out = f"wrote {len(a.content.encode())} bytes to {path}"
        return ToolFinished(card.call_id, "completed", out, Diff(str(path), old, a.content))

    async def _edit_file(self, a: EditFile, card: ToolStarted) -> ToolFinished:
        path = self._path(a.path)
        await self._gate("write", path, card)
        old = await self.ws.read_text(path, None, None)
        n = old.count(a.old_text)
        if n == 0:
            raise ToolError(
                f"edit_file: old_text not found in {path}; read the file and copy it exactly"
            )
        if n > 1:
            raise ToolError(
                f"edit_file: old_text matches {n} times in {path}; "
                "include more surrounding lines so it matches exactly once"
            )
        new = old.replace(a.old_text, a.new_text, 1)
        await self.ws.write_text(path, new)
        return ToolFinished(card.call_id, "completed", f"edited {path}", Diff(str(path), old, new))

    async def _list_dir(self, a: ListDir, card: ToolStarted) -> ToolFinished:
        path = self._path(a.path)
        await self._gate("read", path, card)
        lines = await asyncio.to_thread(_listing, path)
        return ToolFinished(card.call_id, "completed", "\n".join(lines) or "(empty)")

    async def _bash(self, a: Bash, card: ToolStarted) -> ToolFinished:
        cwd = self._path(a.cwd) if a.cwd else self.ws.cwd
        await self._gate("execute", cwd, card)
        timeout = a.timeout_s or BASH_TIMEOUT_S
        output, code = await self.ws.run(a.command, cwd, timeout)
        output = _cap(output, BASH_OUTPUT_CAP)
        if code is None:
            return ToolFinished(
                card.call_id, "failed", f"{output}\n[timed out after {timeout:g} s; killed]"
            )
        status: ToolStatus = "completed" if code == 0 else "failed"
        return ToolFinished(card.call_id, status, f"{output}\n[exit status {code}]")


def _one_line(text: str, width: int = 80) -> str:
    """A card title's worth of `text`: its first line, at most `width` characters."""
    line = text.strip().split("\n", 1)[0]
    cut = len(line) > width or "\n" in text.strip()
    return line[:width] + ("…" if cut else "")


def _listing(path: Path) -> list[str]:
    out = []
    with os.scandir(path) as it:
        entries = sorted(it, key=lambda e: e.name)
    for e in entries[:LIST_CAP]:
        tag = "l" if e.is_symlink() else "d" if e.is_dir() else "f"
        out.append(f"{tag} {e.name}")
    if len(entries) > LIST_CAP:
        out.append(f"… ({len(entries) - LIST_CAP} more entries)")
    return out


def _brief(e: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or 'arguments'}: {err['msg']}" for err in e.errors()
    )
