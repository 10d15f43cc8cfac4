"""The deadline of one load (or restart): a worker that hangs while loading must not hold the
registry's load queue.

A load fails once it has run `timeout` seconds and nothing has moved for `stall` seconds.
"Moved" is any change of the model record's `progress` (download bytes, the worker's progress
frames, a new phase), so a long download or a big load that keeps reporting is never cut off,
and a short silent phase (starting the interpreter, reading a tokenizer) always gets `timeout`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import Any, TypeVar

from helexa.neuron.errors import load_failed
from helexa.neuron.records import ModelRecord

T = TypeVar("T")


def _mark(progress: dict[str, Any] | None) -> tuple[Any, ...]:
    if progress is None:
        return ()
    return (progress.get("phase"), progress.get("done_bytes"), progress.get("total_bytes"))


async def watched(rec: ModelRecord, work: Awaitable[T], timeout: float, stall: float) -> T:
    """`await work`, or cancel it (which kills a worker being started) and raise
    `load_failed` once the load is past `timeout` and has made no progress for `stall`."""
    task = asyncio.ensure_future(work)
    tick = max(0.01, min(1.0, timeout / 4, stall / 4))
    started = last = time.monotonic()
    mark = _mark(rec.progress)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=tick)
            if done:
                return task.result()
            now = time.monotonic()
            if _mark(rec.progress) != mark:
                mark, last = _mark(rec.progress), now
            if now - started >= timeout and now - last >= stall:
                phase = (rec.progress or {}).get("phase", "load")
                raise load_failed(
                    rec.id,
                    f"the load made no progress for {now - last:.0f}s (phase {phase}) after "
                    f"{now - started:.0f}s: load_timeout_secs {timeout:g}, "
                    f"load_stall_secs {stall:g}",
                )
    finally:
        if not task.done():
            task.cancel()
            await asyncio.wait({task})
