"""What a turn emits, in order; the agent maps each to one `session/update`.

Kept free of ACP types so the loop can be tested without a client and the mapping lives in one
place on the agent side.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

ToolKind = Literal["read", "edit", "execute", "search", "other"]
ToolStatus = Literal["completed", "failed"]
PlanStatus = Literal["pending", "in_progress", "completed"]
PlanPriority = Literal["high", "medium", "low"]


@dataclass
class TextChunk:
    text: str


@dataclass
class ThoughtChunk:
    text: str


@dataclass
class ToolStarted:
    call_id: str
    name: str
    title: str
    kind: ToolKind
    raw_input: dict[str, Any]
    locations: list[str] = field(default_factory=list)


@dataclass
class Diff:
    """A file change for the tool card: `old_text` is None for a new file."""

    path: str
    old_text: str | None
    new_text: str


@dataclass
class ToolFinished:
    call_id: str
    status: ToolStatus
    output: str
    diff: Diff | None = None


@dataclass
class PlanEntry:
    content: str
    status: PlanStatus = "pending"
    priority: PlanPriority = "medium"


@dataclass
class PlanUpdate:
    entries: list[PlanEntry]


Event = TextChunk | ThoughtChunk | ToolStarted | ToolFinished | PlanUpdate
