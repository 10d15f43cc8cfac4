"""Download progress for hub fetches: a tqdm class that forwards huggingface_hub's aggregated
bytes bar to the load record (`progress(done, total)`) and a log line every few seconds."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger("helexa.neuron.sources")

ProgressFn = Callable[[int | None, int | None], None]
"""`progress(done_bytes, total_bytes)`; called from hub worker threads, so it must be
thread-safe (e.g. assign to a record, or `loop.call_soon_threadsafe`)."""


class Reporter:
    """Forwards byte progress to the caller and logs a line every few seconds."""

    LOG_EVERY_SECS = 5.0

    def __init__(self, label: str, progress: ProgressFn | None) -> None:
        self.label = label
        self.progress = progress
        self.lock = threading.Lock()
        self.last_log = 0.0
        self.seen = False

    def __call__(self, done: int, total: int | None) -> None:
        self.seen = True
        if self.progress is not None:
            self.progress(done, total)
        now = time.monotonic()
        with self.lock:
            if now - self.last_log < self.LOG_EVERY_SECS:
                return
            self.last_log = now
        log.info("downloading %s: %s of %s", self.label, _mb(done), _mb(total))

    def finish(self, total: int) -> None:
        if self.progress is not None:
            self.progress(total, total)
        if self.seen:
            log.info("downloaded %s: %s", self.label, _mb(total))


def _mb(n: int | None) -> str:
    return "?" if n is None else f"{n / 2**20:.1f} MB"


def progress_class(report: Callable[[int, int | None], None]) -> type:
    """A tqdm class for `snapshot_download(tqdm_class=...)` that never draws and reports the
    aggregated bytes bar (huggingface_hub >= 1.0 names it `huggingface_hub.snapshot_download`;
    older versions only give a files-count bar, which is ignored)."""
    from huggingface_hub.utils import tqdm as hf_tqdm

    class _Bar(hf_tqdm):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self._hx_track = kwargs.get("name") == "huggingface_hub.snapshot_download"
            self._hx_done = int(kwargs.get("initial") or 0)
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

        def update(self, n: float | None = 1) -> bool | None:
            if self._hx_track and n:
                self._hx_done += int(n)
                total = getattr(self, "total", None)
                report(self._hx_done, int(total) if total else None)
            return super().update(n)

    return _Bar


def dir_bytes(root: Path, patterns: list[str]) -> int:
    total = 0
    for pat in patterns:
        for f in root.glob(pat):
            if f.is_file():
                total += f.stat().st_size
    return total
