"""The plan a model writes, as ACP plan entries: a markdown checklist.

No extra tool: a model that plans writes `- [ ] step` lines (in its answer, or in a file under
the plan directory in plan mode) and the editor shows them as the session's plan. `[x]` is done,
`[~]` or `[-]` in progress, `[ ]` pending.
"""

from __future__ import annotations

import re

from helexa.acp.events import PlanEntry, PlanStatus

_ITEM = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+\[([ xX~-])\]\s+(.+?)\s*$", re.MULTILINE)
_STATUS: dict[str, PlanStatus] = {" ": "pending", "x": "completed", "~": "in_progress"}
_STATUS["X"] = "completed"
_STATUS["-"] = "in_progress"


def checklist(text: str) -> list[PlanEntry]:
    """Every checklist item in `text`, in order (empty when there is none)."""
    return [PlanEntry(m.group(2), _STATUS[m.group(1)]) for m in _ITEM.finditer(text)]
