"""A bound on concurrent tokenizations: each runs in a thread, at most `limit` at once, and at
most `queue` wait for a turn; past that a request gets 429 at once, so a burst of huge prompts
can neither starve the event loop's threads nor pile up behind one another."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import Any, TypeVar

from helexa.wire.errors import ApiError

T = TypeVar("T")


def tokenizer_busy(waiting: int) -> ApiError:
    return ApiError(
        429,
        "rate_limit_exceeded",
        f"the tokenizer is busy ({waiting} prompts waiting); retry shortly",
        type="rate_limit_error",
        retry_after=1,
    )


class TokenizeGate:
    def __init__(self, limit: int, queue: int) -> None:
        self._sem = asyncio.Semaphore(max(1, limit))
        self._queue = max(0, queue)
        self.waiting = 0
        self.running = 0

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`fn(*args, **kwargs)` in a thread. A cancelled caller stops waiting, but the slot is
        held until the thread really finishes (a thread can't be stopped)."""
        if self._sem.locked() and self.waiting >= self._queue:
            raise tokenizer_busy(self.waiting)
        self.waiting += 1
        try:
            await self._sem.acquire()
        finally:
            self.waiting -= 1
        self.running += 1
        fut = asyncio.get_running_loop().run_in_executor(
            None, functools.partial(fn, *args, **kwargs)
        )
        fut.add_done_callback(self._done)
        return await asyncio.shield(fut)

    def _done(self, _: asyncio.Future[Any]) -> None:
        self.running -= 1
        self._sem.release()
