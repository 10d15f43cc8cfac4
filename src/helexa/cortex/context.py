"""Per-request state that the pipeline stages share (id, principal, route, timings)."""

from __future__ import annotations

import random
import re
import time
from dataclasses import dataclass

from helexa.cortex.auth import Principal, Reservation
from helexa.cortex.fleet import NodeState
from helexa.wire.errors import ApiError

SAFE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
MAX_MODEL_ID = 256


def new_request_id() -> str:
    # Unique, not secret: the Mersenne Twister is ~20x cheaper than os.urandom per request.
    return f"req_{random.getrandbits(96):024x}"


def request_id_from(header: str | None) -> str:
    """The client's x-request-id when it is short and of a safe charset, else a fresh one: the
    id is echoed, forwarded, logged and stored in history."""
    if header and SAFE_REQUEST_ID.fullmatch(header):
        return header
    return new_request_id()


def checked_model_id(model: str) -> str:
    """A client's `model` is echoed in x-helexa-model and logged: a control character would
    break the response header (aiohttp drops the connection) or forge a log line."""
    if len(model) > MAX_MODEL_ID or not model.isprintable():
        raise ApiError(
            400,
            "invalid_value",
            f"'model' must be at most {MAX_MODEL_ID} printable characters",
            param="model",
        )
    return model


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
    fallback_model: str | None = None  # set once a fallback is tried
    strip_usage: bool = False  # cortex asked for the usage chunk; the client did not
    dispatched: bool = False
    reservation: Reservation | None = None
    output_cap: int | None = None  # reserved output tokens, written into the forwarded body
    sent: bool = False  # the request went to a node: it may have cost something
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
