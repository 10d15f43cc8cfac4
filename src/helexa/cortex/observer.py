"""Watches a response go by (never buffering it) for TTFT, throughput and token usage (§1.7)."""

from __future__ import annotations

import time
from collections.abc import Callable

TAIL_CAP = 64 * 1024
_DIGITS = b"0123456789"


def last_count_for(tail: bytes | bytearray, key: bytes) -> int | None:
    """The last `"key" : <digits>` in the tail. `"key_details"` never matches; `null` is no
    value. Scans backwards with rfind: cheaper than a regex over 64 KiB."""
    quoted = b'"' + key + b'"'
    end = len(tail)
    while True:
        pos = tail.rfind(quoted, 0, end)
        if pos < 0:
            return None
        i = pos + len(quoted)
        n = len(tail)
        while i < n and tail[i] in b" \t\r\n":
            i += 1
        if i < n and tail[i] == 0x3A:  # ':'
            i += 1
            while i < n and tail[i] in b" \t\r\n":
                i += 1
            j = i
            while j < n and tail[j] in _DIGITS:
                j += 1
            if j > i:
                return int(tail[i:j])
        end = pos


class TokenObserver:
    """Fed every body chunk; emits once, at end of stream or when the client goes away."""

    __slots__ = (
        "_done",
        "_on_finish",
        "completion_key",
        "first_at",
        "last_at",
        "prompt_key",
        "started",
        "streaming",
        "tail",
    )

    def __init__(
        self,
        started: float,
        streaming: bool,
        on_finish: Callable[[TokenObserver, int, int], None],
        *,
        responses_keys: bool = False,
    ) -> None:
        self.started = started
        self.streaming = streaming
        self.tail = bytearray()
        self.first_at: float | None = None
        self.last_at: float | None = None
        self._on_finish = on_finish
        self._done = False
        self.prompt_key = b"input_tokens" if responses_keys else b"prompt_tokens"
        self.completion_key = b"output_tokens" if responses_keys else b"completion_tokens"

    def feed(self, chunk: bytes) -> None:
        now = time.perf_counter()
        if self.first_at is None:
            self.first_at = now
        self.last_at = now
        tail = self.tail
        tail += chunk
        if len(tail) > TAIL_CAP:
            del tail[: len(tail) - TAIL_CAP // 2]

    def ttft(self) -> float | None:
        return None if self.first_at is None else self.first_at - self.started

    def tokens_per_second(self, completion: int) -> float | None:
        if completion <= 0 or self.last_at is None or self.first_at is None:
            return None
        window = self.last_at - self.first_at
        if window < 0.1:
            window = self.last_at - self.started
        return completion / window if window > 0 else None

    def finish(self) -> None:
        if self._done:
            return
        self._done = True
        prompt = last_count_for(self.tail, self.prompt_key) or 0
        completion = last_count_for(self.tail, self.completion_key) or 0
        self._on_finish(self, prompt, completion)
