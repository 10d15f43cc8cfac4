"""The provider-neutral conversation: what a session stores and every provider renders.

Plain dataclasses that round-trip through JSON as is, so the session store needs no schema of
its own and a history written with one wire API can be continued with another.
"""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, cast

Role = Literal["system", "user", "assistant", "tool"]
ROLES: tuple[Role, ...] = ("system", "user", "assistant", "tool")


@dataclass
class ToolCall:
    """One tool call the model asked for; `arguments` is the JSON text it produced."""

    id: str
    name: str
    arguments: str


def new_call_id() -> str:
    """An id for a call the endpoint gave none (text calls, id-less streams): unique per session,
    as every wire API pairs results by it."""
    return f"call_{uuid.uuid4().hex[:24]}"


@dataclass
class Message:
    """One conversation turn. Tool fields are only meaningful on their own roles."""

    role: Role
    content: str = ""
    reasoning: str = ""  # assistant thinking, replayed as thought chunks
    tool_calls: list[ToolCall] = field(default_factory=list)  # assistant only
    tool_call_id: str | None = None  # tool only
    name: str | None = None  # tool only: the tool's name
    images: list[str] = field(default_factory=list)  # user only: data: URLs
    failed: bool = False  # tool only: the call failed (a replayed card says so)


def to_json(msgs: list[Message]) -> list[dict[str, Any]]:
    """The history as JSON-ready dicts (defaults left out, so stored files stay small)."""
    out: list[dict[str, Any]] = []
    for m in msgs:
        d = {k: v for k, v in asdict(m).items() if v or k == "role"}
        out.append(d)
    return out


def _str(d: dict[str, Any], key: str, where: str) -> str | None:
    v = d.get(key)
    if v is not None and not isinstance(v, str):
        raise ValueError(f"{where}.{key} must be a string")
    return v


def _tool_call(d: object, where: str) -> ToolCall:
    if not isinstance(d, dict):
        raise ValueError(f"{where} must be an object")
    vals = [d.get(k) for k in ("id", "name", "arguments")]
    if not all(isinstance(v, str) for v in vals):
        raise ValueError(f"{where} needs string id, name and arguments")
    return ToolCall(*cast(list[str], vals))


def _message(d: object, where: str) -> Message:
    if not isinstance(d, dict):
        raise ValueError(f"{where} must be an object")
    role = d.get("role")
    if role not in ROLES:
        raise ValueError(f"{where}.role must be one of {', '.join(ROLES)}")
    calls = d.get("tool_calls") or []
    images = d.get("images") or []
    if not isinstance(calls, list):
        raise ValueError(f"{where}.tool_calls must be a list")
    if not isinstance(images, list) or not all(isinstance(i, str) for i in images):
        raise ValueError(f"{where}.images must be a list of strings")
    if not isinstance(d.get("failed", False), bool):
        raise ValueError(f"{where}.failed must be a boolean")
    return Message(
        role=cast(Role, role),
        content=_str(d, "content", where) or "",
        reasoning=_str(d, "reasoning", where) or "",
        tool_calls=[_tool_call(c, f"{where}.tool_calls[{j}]") for j, c in enumerate(calls)],
        tool_call_id=_str(d, "tool_call_id", where),
        name=_str(d, "name", where),
        images=list(images),
        failed=d.get("failed", False),
    )


def from_json(data: object) -> list[Message]:
    """Rebuild a stored history; a bad shape raises ValueError naming the offending entry."""
    if not isinstance(data, list):
        raise ValueError("history must be a list")
    return [_message(d, f"history[{i}]") for i, d in enumerate(data)]
