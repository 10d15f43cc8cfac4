"""A cap on each key's concurrent requests, so one tenant (or one runaway agent) can't take
every generation slot and connection a fleet has, whatever its token budget."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from helexa.cortex import errors
from helexa.cortex.auth import Principal


class KeyLimits:
    def __init__(self, per_key: int) -> None:
        self.per_key = per_key
        self.in_flight: dict[str, int] = {}

    @contextmanager
    def hold(self, principal: Principal | None) -> Iterator[None]:
        """One of the key's slots for the block; over the cap, 429 with Retry-After. Requests
        without a key (auth not required) are not capped per key."""
        if principal is None:
            yield
            return
        key = principal.key_id
        n = self.in_flight.get(key, 0)
        if n >= self.per_key:
            raise errors.rate_limited(
                f"too many concurrent requests for this key (limit {self.per_key})", 1
            )
        self.in_flight[key] = n + 1
        try:
            yield
        finally:
            left = self.in_flight[key] - 1
            if left:
                self.in_flight[key] = left
            else:
                del self.in_flight[key]
