"""API keys, principals and the token ledger (contract §1.13).

The ledger is touched only from the event loop and never awaits while it holds a ledger, so
reserve/settle/release are atomic without a lock and `spent + reserved <= hard_cap` holds.
"""

from __future__ import annotations

import hmac
import time
from dataclasses import dataclass, field

from helexa.config.cortex import Entitlements, KeyConfig
from helexa.cortex import errors
from helexa.wire.errors import ApiError


@dataclass(frozen=True, slots=True)
class Principal:
    account_id: str
    key_id: str
    admin: bool = False


@dataclass(slots=True)
class BudgetError(Exception):
    kind: str  # "rolling" | "balance"
    requested: int
    available: int
    retry_after_secs: int = 0

    def __str__(self) -> str:
        if self.kind == "rolling":
            return (
                f"rolling-window budget exhausted ({self.requested} requested, "
                f"{self.available} available); resets in {self.retry_after_secs}s"
            )
        return f"hard balance exhausted ({self.requested} requested, {self.available} available)"

    def to_api(self) -> ApiError:
        if self.kind == "rolling":
            return errors.rate_limited(str(self), self.retry_after_secs)
        return errors.quota_exhausted(str(self))


@dataclass(slots=True)
class Ledger:
    hard_cap: int | None
    window_secs: int | None  # None: a balance that never resets
    spent: int = 0
    reserved: int = 0
    window_start: float | None = None

    def _roll(self, now: float) -> None:
        if self.window_secs is None:
            return
        if self.window_start is None or now - self.window_start >= self.window_secs:
            self.window_start = now
            self.spent = 0

    def available(self) -> int | None:
        if self.hard_cap is None:
            return None
        return max(0, self.hard_cap - self.spent - self.reserved)


@dataclass(slots=True)
class Reservation:
    principal: Principal
    tokens: int
    open: bool = True


@dataclass(slots=True)
class Snapshot:
    hard_cap: int | None
    spent: int
    reserved: int


@dataclass
class LocalProvider:
    """Keys from `[[entitlements.keys]]`, ledgers in memory, one per key_id."""

    keys: dict[str, KeyConfig]
    clock: object = field(default=time.monotonic)
    _ledgers: dict[str, Ledger] = field(default_factory=dict)

    @classmethod
    def from_config(cls, ent: Entitlements) -> LocalProvider:
        provider = cls({k.key: k for k in ent.keys})
        for k in ent.keys:
            window = k.window.seconds if k.window.kind == "rolling" else None
            provider._ledgers.setdefault(k.label, Ledger(k.hard_cap, window))
        return provider

    def resolve(self, key: str) -> Principal | None:
        # Constant-time compare against every key: the lookup time leaks nothing.
        found = None
        # aiohttp decodes header bytes that aren't UTF-8 as lone surrogates; a key holding one
        # must compare unequal, not raise.
        raw = key.encode("utf-8", "surrogatepass")
        for secret, cfg in self.keys.items():
            if hmac.compare_digest(secret.encode(), raw):
                found = cfg
        if found is None:
            return None
        return Principal(found.account_id, found.label, found.admin)

    def _now(self) -> float:
        return self.clock()  # type: ignore[operator]

    def reserve(self, principal: Principal, tokens: int) -> Reservation:
        led = self._ledgers.setdefault(principal.key_id, Ledger(None, None))
        now = self._now()
        led._roll(now)
        avail = led.available()
        if avail is not None and tokens > avail:
            if led.window_secs is not None and led.window_start is not None:
                left = led.window_secs - (now - led.window_start)
                raise BudgetError("rolling", tokens, avail, max(1, int(left + 0.999)))
            raise BudgetError("balance", tokens, avail)
        led.reserved += tokens
        return Reservation(principal, tokens)

    def settle(self, res: Reservation, actual: int) -> None:
        if not res.open:
            return
        res.open = False
        led = self._ledgers[res.principal.key_id]
        led.reserved -= res.tokens
        led.spent += actual

    def release(self, res: Reservation) -> None:
        if not res.open:
            return
        res.open = False
        self._ledgers[res.principal.key_id].reserved -= res.tokens

    def snapshot(self, principal: Principal) -> Snapshot:
        led = self._ledgers.setdefault(principal.key_id, Ledger(None, None))
        led._roll(self._now())
        return Snapshot(led.hard_cap, led.spent, led.reserved)


def bearer_token(value: str | None) -> str | None:
    """`Bearer <key>`, scheme case-insensitive, value trimmed; empty counts as absent."""
    if not value:
        return None
    scheme, _, rest = value.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    token = rest.strip()
    return token or None
