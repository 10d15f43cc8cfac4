"""Reusable StaticCaches, so compiled graphs keep their tensor addresses."""

from __future__ import annotations

from typing import Any

MIN_STATIC = 256


def cache_len(n: int, cap: int | None, fixed: bool) -> int:
    """Positions of a static cache for `n` tokens: a power of two (>= MIN_STATIC) up to the
    context cap `cap`, or, `fixed`, the cap itself (past the cap, which the daemon clamps so it
    is rare: exactly n)."""
    if cap is not None and (n >= cap or fixed):
        return max(n, cap)
    size = max(MIN_STATIC, 1 << max(0, n - 1).bit_length())
    return size if cap is None else min(size, cap)


class StaticPool:
    """StaticCaches by size. Sizes are powers of two (>= 256) up to the context cap; with
    `fixed` (the compiled path) every request that fits gets a cache of the full cap, so one
    graph, compiled at load, serves them all instead of a recompile per new size."""

    def __init__(self, config: Any, cap: int | None, *, fixed: bool = False) -> None:
        self.config = config
        self.cap = cap
        self.fixed = fixed and cap is not None
        self.free: dict[int, list[Any]] = {}

    def size_for(self, n: int) -> int:
        return cache_len(n, self.cap, self.fixed)

    def acquire(self, n: int) -> tuple[Any, int]:
        import torch
        from transformers import StaticCache

        size = self.size_for(n)
        spare = self.free.get(size)
        if spare:
            cache = spare.pop()
            cache.reset()
            return cache, size
        # inference tensors wherever it is made: a compiled step guards on their dispatch keys,
        # so one cache made outside inference mode would cost a recompile when it is reused
        with torch.inference_mode():
            return StaticCache(config=self.config, max_cache_len=size), size

    def release(self, cache: Any, size: int) -> None:
        self.free.setdefault(size, []).append(cache)
