"""The per-principal cap: how many inference requests one caller (the key cortex names in
`x-helexa-key-id`, else its account) may have running or queued on this neuron at once, so one
key can't take every model's slots and queue. A request without either header comes from a
node-token holder directly and is not capped here."""

from __future__ import annotations

from collections.abc import Mapping

from helexa.wire.errors import ApiError

PRINCIPAL_HEADERS = ("x-helexa-key-id", "x-helexa-account-id")


def principal_of(headers: Mapping[str, str]) -> str | None:
    for h in PRINCIPAL_HEADERS:
        v = headers.get(h)
        if v:
            return f"{h}:{v[:128]}"
    return None


def too_many(limit: int) -> ApiError:
    return ApiError(
        429,
        "rate_limit_exceeded",
        f"this key already has {limit} requests running or queued on this node; retry shortly",
        type="rate_limit_error",
        retry_after=1,
    )


class PrincipalCap:
    def __init__(self, limit: int) -> None:
        self.limit = limit  # 0: no cap
        self.counts: dict[str, int] = {}

    def enter(self, principal: str) -> None:
        n = self.counts.get(principal, 0)
        if self.limit and n >= self.limit:
            raise too_many(self.limit)
        self.counts[principal] = n + 1

    def leave(self, principal: str) -> None:
        n = self.counts[principal] - 1
        if n:
            self.counts[principal] = n
        else:
            del self.counts[principal]  # no entry per idle principal: the map can't grow
