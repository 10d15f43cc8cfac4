"""The three ways a worker can fail, none of which needs torch to name.

`LoadError` ends a load (`load_failed` frame, then the worker exits); `RequestError` ends one
request (`error` frame, the worker carries on); `Fault` means the model or device can't be
trusted any more (`fault` frame, the worker exits at once).
"""

from __future__ import annotations

from typing import Any


class LoadError(Exception):
    """A load failure with the status and code the client sees (docs/reference.md, errors)."""

    def __init__(
        self, status: int, code: str, message: str, extras: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.extras = extras or {}


def load_failed(served_id: str, exc: BaseException) -> LoadError:
    """The catch-all 500: the exception's type and first line, nothing more."""
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    msg = f"loading '{served_id}' failed: {type(exc).__name__}: {detail}"
    return LoadError(500, "load_failed", msg)


class RequestError(Exception):
    """This request can't run; the worker answers with an `error` frame and carries on."""

    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param


class Fault(Exception):
    """The model or device is broken (non-finite logits, CUDA error): the worker must exit."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail
