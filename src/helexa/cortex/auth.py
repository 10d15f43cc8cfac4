"""API keys, principals and the token ledger.

The ledger is touched only from the event loop and never awaits while it holds a ledger, so
reserve/settle/release are atomic without a lock; a settlement never charges more than was
reserved, so `spent + reserved <= hard_cap` holds under any concurrency.
"""

from __future__ import annotations

import hmac
import time
from dataclasses import dataclass, field

from helexa.config.cortex import Entitlements, KeyConfig
from helexa.cortex import errors
from helexa.cortex.ledger_store import LedgerStore
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

    def _roll(self, now: float) -> bool:
        """Start a new window when the last one is over; whether it did."""
        if self.window_secs is None:
            return False
        if self.window_start is None or now - self.window_start >= self.window_secs:
            self.window_start = now
            self.spent = 0
            return True
        return False

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
    """Keys from `[[entitlements.keys]]`, ledgers in memory, one per key_id, written through to
    `store` when there is one. Windows run on the wall clock: they outlive a restart."""

    keys: dict[str, KeyConfig]
    clock: object = field(default=time.time)
    store: LedgerStore | None = None
    _ledgers: dict[str, Ledger] = field(default_factory=dict)

    @classmethod
    def from_config(cls, ent: Entitlements, store: LedgerStore | None = None) -> LocalProvider:
        provider = cls({k.key: k for k in ent.keys}, store=store)
        for k in ent.keys:
            window = k.window.seconds if k.window.kind == "rolling" else None
            led = provider._ledgers.setdefault(k.label, Ledger(k.hard_cap, window))
            if store is not None and k.label in store.loaded:
                led.spent, led.window_start = store.loaded[k.label]
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

    def _ledger(self, key_id: str) -> Ledger:
        """The key's ledger, its window rolled to now (and the reset saved)."""
        led = self._ledgers.setdefault(key_id, Ledger(None, None))
        if led._roll(self._now()):
            self._save(key_id, led)
        return led

    def _save(self, key_id: str, led: Ledger) -> None:
        if self.store is not None:
            self.store.save(key_id, led.spent, led.window_start)

    def reserve(self, principal: Principal, tokens: int) -> Reservation:
        led = self._ledger(principal.key_id)
        now = self._now()
        avail = led.available()
        if avail is not None and tokens > avail:
            if led.window_secs is not None and led.window_start is not None:
                left = led.window_secs - (now - led.window_start)
                raise BudgetError("rolling", tokens, avail, max(1, int(left + 0.999)))
            raise BudgetError("balance", tokens, avail)
        led.reserved += tokens
        return Reservation(principal, tokens)

    def settle(self, res: Reservation, actual: int) -> int:
        """Charge `actual`, but never more than was reserved; what was charged."""
        if not res.open:
            return 0
        res.open = False
        charged = min(max(actual, 0), res.tokens)
        key_id = res.principal.key_id
        led = self._ledgers[key_id]
        led.reserved -= res.tokens
        led.spent += charged
        self._save(key_id, led)
        return charged

    def release(self, res: Reservation) -> None:
        if not res.open:
            return
        res.open = False
        self._ledgers[res.principal.key_id].reserved -= res.tokens

    def snapshot(self, principal: Principal) -> Snapshot:
        led = self._ledger(principal.key_id)
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
