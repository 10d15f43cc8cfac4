"""Per-model admission: slots, a FIFO queue with a depth limit, a wait limit.

A freed slot is handed straight to the oldest waiter, so a newcomer can never overtake the
queue. While a model recovers the gate is paused: queued requests keep waiting (their
`max_wait_secs` still running) and are admitted only once the worker serves again.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from helexa.wire.errors import ApiError

RATE_LIMIT = "rate_limit_error"


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def queue_full(model: str, in_flight: int, queue_depth: int) -> ApiError:
    return ApiError(
        429,
        "rate_limit_exceeded",
        f"model '{model}' is at capacity ({in_flight} running, {queue_depth} queued); "
        "retry shortly",
        type=RATE_LIMIT,
        retry_after=2,
    )


def wait_timeout(model: str, waited: float) -> ApiError:
    return ApiError(
        503,
        "service_unavailable",
        f"request for model '{model}' waited {_num(waited)}s in the queue without starting",
        retry_after=5,
    )


class Admission:
    """The gate in front of one model's worker. Single event loop; no locks needed."""

    __slots__ = (
        "_idle",
        "_on_reject",
        "_paused",
        "_waiters",
        "in_flight",
        "max_in_flight",
        "max_queue_depth",
        "max_wait_secs",
        "model",
    )

    def __init__(
        self,
        model: str,
        max_in_flight: int = 8,
        max_queue_depth: int = 16,
        max_wait_secs: float = 120,
        on_reject: Callable[[str], None] | None = None,
    ) -> None:
        self.model = model
        self.max_in_flight = max(1, max_in_flight)
        self.max_queue_depth = max(0, max_queue_depth)
        self.max_wait_secs = max_wait_secs
        self.in_flight = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._paused = False
        self._on_reject = on_reject
        self._idle: list[asyncio.Future[None]] = []

    @property
    def queue_depth(self) -> int:
        return len(self._waiters)

    @property
    def paused(self) -> bool:
        return self._paused

    def _reject(self, reason: str) -> None:
        if self._on_reject is not None:
            self._on_reject(reason)

    async def acquire(self) -> None:
        """Take a slot, waiting in line if needed; raises the admission 429 or 503."""
        if not self._paused and not self._waiters and self.in_flight < self.max_in_flight:
            self.in_flight += 1
            return
        if len(self._waiters) >= self.max_queue_depth:
            self._reject("queue_full")
            raise queue_full(self.model, self.in_flight, len(self._waiters))
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await asyncio.wait_for(asyncio.shield(fut), self.max_wait_secs)
        except TimeoutError:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                return  # granted in the same tick the timer fired: keep the slot
            self._drop(fut)
            self._reject("wait_timeout")
            raise wait_timeout(self.model, self.max_wait_secs) from None
        except asyncio.CancelledError:
            # The client went away while queued; a slot handed to it must be passed on.
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                self.release()
            else:
                self._drop(fut)
            raise

    def _drop(self, fut: asyncio.Future[None]) -> None:
        try:
            self._waiters.remove(fut)
        except ValueError:
            pass
        if not fut.done():
            fut.cancel()

    def release(self) -> None:
        """Give a slot back: straight to the oldest waiter, unless paused."""
        self.in_flight -= 1
        self._grant()
        if self.in_flight == 0:
            for fut in self._idle:
                if not fut.done():
                    fut.set_result(None)
            self._idle.clear()

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until nothing is generating (a graceful unload); False on timeout."""
        if self.in_flight == 0:
            return True
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._idle.append(fut)
        try:
            await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            return False
        return True

    def _grant(self) -> None:
        while not self._paused and self._waiters and self.in_flight < self.max_in_flight:
            fut = self._waiters.popleft()
            if fut.done():
                continue
            self.in_flight += 1
            fut.set_result(None)

    async def hold(self) -> Held:
        """Take a slot as a `Held`, which can be given back early (once) by its owner."""
        await self.acquire()
        return Held(self)

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        await self.acquire()
        try:
            yield
        finally:
            self.release()

    def pause(self) -> None:
        """Stop admitting from the queue (the worker is being restarted)."""
        self._paused = True

    def resume(self) -> None:
        self._paused = False
        self._grant()

    def fail_waiters(self, err: ApiError) -> None:
        """Every queued request gets `err` (the model failed or is being unloaded)."""
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_exception(err)

    def configure(self, max_in_flight: int, max_queue_depth: int, max_wait_secs: float) -> None:
        self.max_in_flight = max(1, max_in_flight)
        self.max_queue_depth = max(0, max_queue_depth)
        self.max_wait_secs = max_wait_secs
        self._grant()


class Held:
    """A taken slot, given back exactly once: when the worker is done generating (so a client
    still reading the tail doesn't hold the model), or when the request ends, whichever is
    first."""

    __slots__ = ("_adm",)

    def __init__(self, adm: Admission) -> None:
        self._adm: Admission | None = adm

    def free(self) -> None:
        if self._adm is not None:
            adm, self._adm = self._adm, None
            adm.release()
