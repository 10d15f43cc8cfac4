"""Per-request state that the pipeline stages share (id, principal, route, timings)."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

from helexa.cortex.auth import Principal, Reservation
from helexa.cortex.fleet import NodeState


def new_request_id() -> str:
    # Unique, not secret: the Mersenne Twister is ~20x cheaper than os.urandom per request.
    return f"req_{random.getrandbits(96):024x}"


def request_id_from(header: str | None) -> str:
    """The client's x-request-id when it is printable ASCII, else a fresh one: the id is echoed,
    forwarded and stored in history, and bytes that aren't UTF-8 can't be serialised."""
    if header and header.isascii() and header.isprintable():
        return header
    return new_request_id()


@dataclass(slots=True)
class RequestContext:
    request_id: str
    path: str
    started: float  # perf_counter at arrival
    principal: Principal | None = None
    anthropic: bool = False
    body_read_at: float | None = None
    model: str | None = None
    node: NodeState | None = None
    cold_start: bool = False
    fallback_model: str | None = None  # set once a fallback is tried (§1.18.2)
    strip_usage: bool = False  # cortex asked for the usage chunk; the client did not
    dispatched: bool = False
    reservation: Reservation | None = None
    status: int = 0
    ttft: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    overhead_ms: float | None = None
    finished_at: float | None = None

    def routed(self) -> tuple[str, NodeState]:
        """(model, node): routing sets both before anything goes upstream, so a miss is a bug,
        checked here once rather than at every use."""
        if self.model is None or self.node is None:
            raise RuntimeError(f"request {self.request_id} used before it was routed")
        return self.model, self.node

    def helexa_headers(self) -> dict[str, str]:
        h = {"x-request-id": self.request_id}
        if self.model is not None:
            h["x-helexa-model"] = self.model
        if self.node is not None:
            h["x-helexa-node"] = self.node.name
        if self.overhead_ms is not None:
            h["x-helexa-overhead-ms"] = f"{self.overhead_ms:.3f}"
        if self.cold_start:
            h["x-helexa-cold-start"] = "1"
        if self.fallback_model is not None:
            h["x-helexa-fallback-model"] = self.fallback_model
        return h

    def mark_dispatch(self) -> None:
        if self.body_read_at is not None:
            self.overhead_ms = (time.perf_counter() - self.body_read_at) * 1000.0
