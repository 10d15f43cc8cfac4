"""What a worker can do to a request besides answering it: the exceptions a `Stream` raises.

Kept apart from the supervisor so routes can tell the outcomes apart (crash, stop, refusal)
without reaching into process management.
"""

from __future__ import annotations


class WorkerError(Exception):
    """Base of everything a worker can do to a request besides answering it."""


class WorkerCrashed(WorkerError):
    """The worker died or faulted; `reason` is crash | non_finite | cuda_error | hang."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class WorkerStopped(WorkerError):
    """The worker was stopped on purpose (unload, shutdown) while the request ran."""


class RequestFailed(WorkerError):
    """The worker refused or failed one request (`error` frame) but is itself fine."""

    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param
