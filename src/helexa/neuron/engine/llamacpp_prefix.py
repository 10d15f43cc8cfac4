"""The prefix cache of a llama.cpp worker: which KV sequence a new prompt should reuse.

Each of the context's sequences remembers the tokens its KV cells hold. A new request takes the
idle sequence sharing the longest prefix with its prompt (least recently used on a tie), keeps
that prefix and prefills only the rest; the KV memory is one unified budget, and when it is full
the least recently used idle sequences are dropped first. Pure bookkeeping, no llama_cpp here.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field


@dataclass(slots=True)
class Slot:
    seq: int
    tokens: list[int] = field(default_factory=list)  # what the KV cells of `seq` hold
    busy: bool = False
    used: int = 0  # LRU clock


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


class PrefixCache:
    """`n` KV sequences and what each holds."""

    def __init__(self, n: int) -> None:
        self.slots = [Slot(i) for i in range(n)]
        self._clock = itertools.count(1)

    def take(self, prompt: list[int]) -> tuple[Slot, int] | None:
        """The idle slot to prefill `prompt` in and how many of its tokens to keep (always
        leaving at least one prompt token to feed, for the logits); None if all are busy."""
        idle = [s for s in self.slots if not s.busy]
        if not idle:
            return None
        best = max(idle, key=lambda s: (common_prefix(s.tokens, prompt), -s.used))
        keep = min(common_prefix(best.tokens, prompt), max(0, len(prompt) - 1))
        best.busy = True
        best.used = next(self._clock)
        return best, keep

    def give_back(self, slot: Slot) -> None:
        slot.busy = False
        slot.used = next(self._clock)

    def victims(self) -> list[Slot]:
        """Idle slots holding tokens, least recently used first: what to drop for room."""
        return sorted((s for s in self.slots if not s.busy and s.tokens), key=lambda s: s.used)
