"""The start-time pre-warm of `[[default_models]]`: what `/health` shows of it,
and the run that awaits each load in order."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from helexa.wire.errors import ApiError

log = logging.getLogger("helexa.neuron.activation")

Job = tuple[str, asyncio.Task[dict[str, Any]]]
JoinFn = Callable[[asyncio.Task[dict[str, Any]], str], Awaitable[dict[str, Any]]]


@dataclass
class Activation:
    state: str = "ready"
    pending: list[str] = field(default_factory=list)
    in_progress: str | None = None
    completed: list[str] = field(default_factory=list)
    failed: list[dict[str, str]] = field(default_factory=list)

    def as_api(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "pending": list(self.pending),
            "in_progress": self.in_progress,
            "completed": list(self.completed),
            "failed": list(self.failed),
        }

    def started(self, ident: str) -> None:
        if ident in self.pending:
            self.pending.remove(ident)
        self.in_progress = ident

    def refused(self, ident: str, message: str) -> None:
        if ident in self.pending:
            self.pending.remove(ident)
        self.failed.append({"model_id": ident, "error": message})

    async def run(self, jobs: list[Job], join: JoinFn) -> None:
        """Await each load in order; a failed one is recorded and the next one goes on."""
        for ident, op in jobs:
            try:
                await join(op, ident)
            except ApiError as e:
                self.failed.append({"model_id": ident, "error": e.message})
            else:
                self.completed.append(ident)
            if ident in self.pending:
                self.pending.remove(ident)
            if self.in_progress == ident:
                self.in_progress = None
        self.state = "ready"
        if jobs:
            log.info("activation done: %d loaded, %d failed", len(self.completed), len(self.failed))
