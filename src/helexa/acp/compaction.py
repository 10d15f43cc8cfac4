"""Fitting a long session into the model's context window by eliding old payloads (§4).

Only payloads are replaced, never messages removed, so every tool result still follows its
call. The stored history stays whole; each request gets a compacted view.
"""

from __future__ import annotations

from dataclasses import replace

from helexa.acp.history import Message

RESERVE = 512  # tokens kept free beyond max_tokens
PER_MESSAGE = 8
PER_IMAGE = 512
CHARS_PER_TOKEN = 3.5
MIN_ELIDE = 256  # characters; shorter payloads are not worth a placeholder
KEEP_LAST = 4


def estimate(m: Message) -> float:
    """Tokens ≈ chars ÷ 3.5, plus 8 per message, plus 512 per image."""
    chars = len(m.content) + sum(len(c.name) + len(c.arguments) for c in m.tool_calls)
    return chars / CHARS_PER_TOKEN + PER_MESSAGE + PER_IMAGE * len(m.images)


def budget(context_window: int, max_tokens: int | None) -> int:
    return context_window - (max_tokens or 0) - RESERVE


def compact(history: list[Message], context_window: int, max_tokens: int | None) -> list[Message]:
    """`history` if it fits the budget, else a copy with the oldest tool results, then the
    oldest assistant prose, elided until it fits (or nothing elidable is left)."""
    limit = budget(context_window, max_tokens)
    total = sum(estimate(m) for m in history)
    if total <= limit:
        return history
    out = list(history)
    last = len(out) - KEEP_LAST
    for role, what in (("tool", "tool result"), ("assistant", "assistant prose")):
        for i in range(last):
            m = out[i]
            if total <= limit:
                return out
            if m.role != role or len(m.content) < MIN_ELIDE:
                continue
            size = len(m.content.encode())
            out[i] = replace(m, content=f"(elided: {size} bytes of {what})")
            total += estimate(out[i]) - estimate(m)
    return out
