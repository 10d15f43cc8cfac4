"""The permission policy of the three session modes, as one pure decision per tool action.

Kept apart from the tools so the rules (what is free, what asks, what plan mode refuses) read
in one place and are tested without touching a disk.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from helexa.acp.paths import is_within

Action = Literal["read", "write", "execute"]
MODES = ("default", "bypassPermissions", "plan")
SHELL_DISABLED = "plan mode: shell execution is disabled"


@dataclass(frozen=True)
class Refused:
    reason: str


Decision = Literal["allow", "ask"] | Refused


@dataclass(frozen=True)
class Policy:
    mode: str
    cwd: Path
    plan_root: Path

    def decide(self, action: Action, path: Path | None) -> Decision:
        """`allow`, `ask` (the user decides) or Refused. `path` is resolved already."""
        if self.mode == "bypassPermissions":
            return "allow"
        if action == "read":
            inside = path is None or is_within(path, self.cwd)
            return "allow" if inside or self._in_plan(path) else "ask"
        if self.mode == "plan":
            if action == "execute":
                return Refused(SHELL_DISABLED)
            if self._in_plan(path):
                return "allow"
            return Refused(f"plan mode: writes are allowed only under {self.plan_root}")
        return "ask"

    def _in_plan(self, path: Path | None) -> bool:
        return self.mode == "plan" and path is not None and is_within(path, self.plan_root)
