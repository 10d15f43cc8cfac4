"""Watches a response go by (never buffering it) for TTFT, throughput and token usage."""

from __future__ import annotations

import time
from collections.abc import Callable

TAIL_CAP = 64 * 1024
PROMPT_HEADER = "x-helexa-prompt-tokens"
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


def prompt_header(value: str | None) -> int | None:
    """The neuron's `x-helexa-prompt-tokens`, when it is a count."""
    return int(value) if value is not None and value.isdigit() else None


class TokenObserver:
    """Fed every body chunk; emits once, at end of stream or when the client goes away. A
    stream also counts its SSE frames: what a reply cut before its usage is charged by."""

    __slots__ = (
        "_done",
        "_newline",
        "_on_finish",
        "completion_key",
        "first_at",
        "frames",
        "last_at",
        "ok",
        "prompt_hint",
        "prompt_key",
        "started",
        "streaming",
        "tail",
    )

    def __init__(
        self,
        started: float,
        streaming: bool,
        on_finish: Callable[[TokenObserver, int | None, int | None], None],
        *,
        responses_keys: bool = False,
        prompt_hint: int | None = None,
        ok: bool = True,
    ) -> None:
        self.started = started
        self.streaming = streaming
        self.prompt_hint = prompt_hint  # the neuron's x-helexa-prompt-tokens
        self.ok = ok  # a 2xx reply: one that may have generated
        self.frames = 0
        self._newline = False
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
        if self.streaming and chunk:
            # Frames end in a blank line; one split across reads is counted once.
            self.frames += chunk.count(b"\n\n") + (self._newline and chunk[0] == 0x0A)
            self._newline = chunk[-1] == 0x0A and not chunk.endswith(b"\n\n")
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
        prompt = last_count_for(self.tail, self.prompt_key)
        completion = last_count_for(self.tail, self.completion_key)
        self._on_finish(self, prompt, completion)
