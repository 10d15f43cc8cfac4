"""How many generations one worker runs at once: a batch-size cap and a KV-memory budget.

A generation's KV can grow to its prompt plus `max_tokens`; rows of a left-padded batch each
take as many positions as the longest row (padding is cut when rows leave, so the batch is never
wider than its longest row's end); a static batch holds its whole block, slots x columns, from
the first row (`shape`). A newcomer that would push that bound over the budget waits
in the worker until another generation leaves; one alone is always started, as before batching.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from helexa.neuron.engine.generation import GenerationState


def need(state: GenerationState) -> int:
    """The most positions a generation's KV can reach."""
    return len(state.prompt) + state.max_tokens


@dataclass(slots=True)
class KvBudget:
    per_token: int  # KV bytes per cached token, all layers
    per_row: int  # fixed bytes per sequence (linear-attention states)
    budget: int | None  # bytes for every generation's KV; None: not bounded
    max_batch: int  # generations stepped at once
    padded: bool  # rows share one left-padded cache
    # a static batch: (rows, longest need) -> the (slots, columns) it holds, all allocated
    shape: Callable[[int, int], tuple[int, int]] | None = None

    def bytes_for(self, needs: list[int]) -> int:
        """The most KV these generations (each needing that many positions) can hold."""
        if not needs:
            return 0
        if self.shape is not None:
            slots, columns = self.shape(len(needs), max(needs))
            positions = slots * columns
        else:
            positions = len(needs) * max(needs) if self.padded else sum(needs)
        return positions * self.per_token + len(needs) * self.per_row

    def admits(self, state: GenerationState, running: list[GenerationState]) -> bool:
        """Whether `state` may start beside the `running` generations."""
        if not running:
            return True
        if len(running) >= self.max_batch:
            return False
        needs = [need(s) for s in (*running, state)]
        return self.budget is None or self.bytes_for(needs) <= self.budget
