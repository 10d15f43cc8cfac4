"""What the neuron records per model and per device; the registry changes them, the views
(views.py) read them."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from helexa.neuron.admission import Admission
from helexa.neuron.engine.frames import ReadyInfo
from helexa.neuron.gguf_placement import Placement
from helexa.neuron.supervisor import WorkerHandle
from helexa.wire.neuron import ModelSpec

LOADED, LOADING, RECOVERING, UNLOADED, FAILED = (
    "loaded",
    "loading",
    "recovering",
    "unloaded",
    "failed",
)

# The legal status moves of a model on this node; anything else is a bug in the registry.
MOVES: dict[str, frozenset[str]] = {
    LOADING: frozenset({LOADED, FAILED, UNLOADED}),  # unloaded: cancelled or rolled back
    LOADED: frozenset({RECOVERING, UNLOADED}),
    RECOVERING: frozenset({LOADED, FAILED, UNLOADED}),
    FAILED: frozenset({LOADING, UNLOADED}),
    UNLOADED: frozenset({LOADING, UNLOADED}),
}


_SNAPSHOT = ("status", "spec", "source", "error", "progress", "harness", "quant", "devices")


class IllegalMove(RuntimeError):
    """A status change the table does not allow."""


@dataclass(slots=True)
class DeviceView:
    """One device's identity and free memory right now (from discovery / health)."""

    index: int
    kind: str  # "cuda" | "cpu"
    total_mb: int | None = None
    free_mb: int | None = None
    compute_capability: str | None = None


@dataclass
class ModelRecord:
    id: str
    source: str
    spec: ModelSpec
    admission: Admission
    status: str = UNLOADED  # a new record is moved to loading by the load that made it
    info: ReadyInfo = field(default_factory=ReadyInfo)
    restarts: int = 0
    error: str | None = None
    progress: dict[str, Any] | None = None
    loaded_at: int | None = None
    last_used_at: int | None = None
    harness: str = "torch"
    quant: str | None = None
    devices: list[int] = field(default_factory=list)
    kind: str = "cpu"
    path: Path | None = None
    placement: Placement | None = None  # llamacpp: the layer split decided before loading
    tokenizer: Any = None
    handle: WorkerHandle | None = None
    draining: bool = False
    test_faults: Any = None
    op: asyncio.Task[dict[str, Any]] | None = None
    unload_op: asyncio.Task[dict[str, Any]] | None = None

    def snapshot(self) -> dict[str, Any]:
        """What a load may change, put back by `restore` when that load fails cleanly."""
        return {k: getattr(self, k) for k in _SNAPSHOT}

    def restore(self, snap: dict[str, Any]) -> None:
        for k, v in snap.items():
            if k == "status":
                self.move(v)
            else:
                setattr(self, k, v)

    def move(self, to: str) -> None:
        """The one way a model's status changes (MOVES says which changes are legal)."""
        if to not in MOVES[self.status]:
            raise IllegalMove(f"model {self.id}: {self.status} -> {to} is not a legal move")
        self.status = to

    @property
    def serving(self) -> bool:
        return self.status == LOADED and not self.draining and self.handle is not None

    def memory_mb(self) -> int | None:
        """Measured memory: the worker's RSS on CPU, what the worker reported on CUDA."""
        if self.status != LOADED or self.handle is None:
            return None
        if self.kind == "cpu":
            rss = self.handle.rss_mb()
            if rss is not None:
                return rss
        return self.info.vram_used_mb
