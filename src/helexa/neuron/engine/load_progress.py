"""Progress frames while a harness reads weights, for the daemon's load deadline.

`from_pretrained` gives no callback, so a thread samples how many bytes the weights occupy so
far (device memory, or the process's resident memory on CPU) and reports it every few seconds.
Only a change counts as progress on the daemon's side, so a load that stops growing is seen as
stalled while a slow one that keeps reading never is.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from types import TracebackType

from helexa.neuron.engine.frames import Progress

INTERVAL_SECS = 5.0


class LoadMeter:
    """`with LoadMeter(emit, measure, total): load()` reports `Progress("load", done, total)`
    every `interval` seconds while the block runs (done = measure(), at most `total`)."""

    def __init__(
        self,
        emit: Callable[[Progress], None],
        measure: Callable[[], int | None],
        total: int | None,
        interval: float = INTERVAL_SECS,
    ) -> None:
        self.emit, self.measure, self.total, self.interval = emit, measure, total, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="load-meter", daemon=True)

    def __enter__(self) -> LoadMeter:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        base = self._sample() or 0
        while not self._stop.wait(self.interval):
            now = self._sample()
            if now is None:
                continue
            done = max(0, now - base)
            if self.total:
                done = min(done, self.total)
            try:
                self.emit(Progress("load", done, self.total))
            except OSError:  # the daemon went away: the load will find out
                return

    def _sample(self) -> int | None:
        try:
            return self.measure()
        except Exception:  # a probe that fails must not fail the load
            return None
