"""The torch harness's prefix cache: KV states of recent sequences, so a prompt that starts like
an earlier one (an agent re-sending its conversation) prefills only what is new.

The contract with whoever drives the model (the engine's prefill and release, a batched decode):
- `take(prompt) -> (cache, n)`: a private `DynamicCache` holding the first `n` prompt tokens,
  `n < len(prompt)` so at least one token is left to prefill for the logits; or `(None, 0)`.
  The caller owns it and grows it like a fresh one. `take(prompt, into=fresh)` writes the prefix
  into a fresh preallocated cache (a pooled `StaticCache`) instead and returns it.
- `put(tokens, cache)`: a finished sequence's cache, handed over (ownership passes here; a
  `StaticCache` is copied out instead, and its pool keeps it). It must be standalone (batch 1,
  one sequence's own cache, not a row of a batch cache), and `tokens` exactly what its KV
  holds: the prompt and every generated token that was fed back, i.e. all but the last sampled
  one. A cache whose layers don't all hold `len(tokens)` positions (a forward that failed
  half-way) is dropped, never stored.
- Pure attention caches (every layer a plain `DynamicLayer` or `StaticLayer`) are cut anywhere:
  the entry with the longest common prefix serves, as views of its tensors. That is safe because
  a `DynamicLayer` only ever replaces its tensors (`torch.cat`), never writes into them, so one
  entry can serve several requests at once without a copy.
- Any other layer (Gated-DeltaNet conv/recurrent state in Qwen3-Next and Qwen3.5, sliding
  windows) cannot be cut back: only an exact snapshot whose tokens are a whole prefix of the
  prompt serves, as a deep copy; never a wrong state. So that the next turn finds one, the
  engine's prefill pauses at each `next_snapshot` (where the prompt leaves the stored sequences,
  and before its last token) and `keep`s a copy there, besides `put` at the end.

Entries live within a byte budget (`prefix_cache_mb`), least recently used dropped first; their
bytes are part of the worker's measured memory.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from transformers.cache_utils import DummyLayer, DynamicCache, DynamicLayer, StaticLayer

from helexa.neuron.engine.llamacpp_prefix import common_prefix

# The budget when the load spec sets none, by device kind: agents re-send prompts of tens of
# thousands of tokens, whose KV is gigabytes on a GPU model; CPU hosts serve small models.
DEFAULT_MB = {"cuda": 1024, "cpu": 512}
# A hybrid prefill pauses for a snapshot only when at least this many new tokens precede it.
MIN_SNAPSHOT_TOKENS = 64


def cuttable(cache: Any) -> bool:
    """Whether every layer of this (fresh) cache can be cut at any position."""
    return all(type(layer) in (DynamicLayer, StaticLayer, DummyLayer) for layer in cache.layers)


@dataclass(slots=True, eq=False)
class Entry:
    tokens: list[int]
    cache: Any
    nbytes: int
    used: int  # LRU clock


class PrefixCache:
    """Recent sequences' KV states within `budget_bytes`; `exact` for caches `cuttable` refuses."""

    def __init__(self, budget_bytes: int, *, exact: bool) -> None:
        self.budget = budget_bytes
        self.exact = exact
        self.entries: list[Entry] = []
        self._clock = itertools.count(1)

    @property
    def nbytes(self) -> int:
        return sum(e.nbytes for e in self.entries)

    def take(self, prompt: list[int], into: Any = None) -> tuple[Any, int]:
        """A private cache of the longest usable prefix of `prompt` (written into `into` when
        given, which is returned even on a miss), and its length."""
        best: Entry | None = None
        n = 0
        for e in self.entries:
            k = self._usable(e.tokens, prompt)
            if k > n or (k == n and best is not None and e.used > best.used):
                best, n = e, k
        if best is None or n == 0:
            return into, 0
        best.used = next(self._clock)
        if into is not None:
            return _write_prefix(best.cache, n, into), n
        return (copy.deepcopy(best.cache) if self.exact else _prefix_view(best.cache, n)), n

    def _usable(self, held: list[int], prompt: list[int]) -> int:
        limit = len(prompt) - 1
        if not self.exact:
            return min(common_prefix(held, prompt), limit)
        whole = len(held) <= limit and prompt[: len(held)] == held
        return len(held) if whole else 0

    def snapshots_at(self, prompt: list[int], done: int) -> list[int]:
        """Where an exact-only prefill now at `done` should still pause to `keep` a snapshot:
        where it leaves the stored sequences (the next prompt sharing, say, the same system
        prompt and tools finds one there) and before its last token (the next turn extends the
        prompt). None for a cache that can be cut anyway, and none within MIN_SNAPSHOT_TOKENS
        of the one before (or of a stored snapshot the prompt starts with)."""
        if not self.exact:
            return []
        last = len(prompt) - 1
        branch = base = 0
        for e in self.entries:
            k = common_prefix(e.tokens, prompt)
            branch = max(branch, k)
            if k == len(e.tokens):
                base = max(base, k)
        cuts: list[int] = []
        for cut in (min(branch, last), last):
            if cut > done and cut - (cuts[-1] if cuts else base) >= MIN_SNAPSHOT_TOKENS:
                cuts.append(cut)
        return cuts

    def next_snapshot(self, prompt: list[int], done: int) -> int | None:
        """The first of `snapshots_at`: where a prefill at `done` pauses next to `keep` one."""
        cuts = self.snapshots_at(prompt, done)
        return cuts[0] if cuts else None

    def keep(self, tokens: list[int], cache: Any) -> None:
        """`put` a copy of a cache that stays in use."""
        if _held(cache) == len(tokens) and _nbytes(cache) <= self.budget:
            self.put(list(tokens), copy.deepcopy(cache))

    def put(self, tokens: list[int], cache: Any) -> None:
        """Store a finished sequence's cache (see the module docstring for the contract)."""
        if not tokens or _held(cache) != len(tokens):
            return
        if any(isinstance(layer, StaticLayer) for layer in cache.layers):
            cache = _write_prefix(cache, len(tokens), _dynamic_like(cache))
        size = _nbytes(cache)
        if size > self.budget:
            return
        self.entries = [e for e in self.entries if not self._covers(tokens, e.tokens)]
        self.entries.append(Entry(tokens, cache, size, next(self._clock)))
        self.entries.sort(key=lambda e: e.used)
        total = self.nbytes
        while total > self.budget:
            total -= self.entries.pop(0).nbytes

    def _covers(self, tokens: list[int], held: list[int]) -> bool:
        """Whether an entry holding `tokens` makes one holding `held` useless."""
        if self.exact:
            return tokens == held
        return len(held) <= len(tokens) and tokens[: len(held)] == held

    def clear(self) -> None:
        self.entries.clear()


def _layer_tensors(layer: Any) -> Iterator[torch.Tensor]:
    for v in vars(layer).values():
        if isinstance(v, torch.Tensor):
            yield v
        elif isinstance(v, dict):
            yield from (t for t in v.values() if isinstance(t, torch.Tensor))


def _nbytes(cache: Any) -> int:
    """Bytes of the storages the cache's tensors use, each counted once."""
    seen: dict[int, int] = {}
    for layer in cache.layers:
        for t in _layer_tensors(layer):
            s = t.untyped_storage()
            seen[s.data_ptr()] = s.nbytes()
    return sum(seen.values())


def _held(cache: Any) -> int:
    """The positions every layer holds, or -1 when they disagree or it is not one sequence."""
    lengths = set()
    for layer in cache.layers:
        if isinstance(layer, DummyLayer):
            continue
        keys = getattr(layer, "keys", None)
        if isinstance(keys, torch.Tensor) and keys.dim() == 4 and keys.shape[0] != 1:
            return -1
        lengths.add(int(layer.get_seq_length()))
    return lengths.pop() if len(lengths) == 1 else -1


def _write_prefix(cache: Any, n: int, into: Any) -> Any:
    """`into` (fresh) given a copy of the first `n` positions of `cache`'s attention layers."""
    for layer, dst in zip(cache.layers, into.layers, strict=True):
        if not isinstance(layer, DummyLayer):
            dst.update(layer.keys[..., :n, :], layer.values[..., :n, :])
    return into


def _dynamic_like(cache: Any) -> Any:
    """An empty DynamicCache with `cache`'s layout."""
    out = DynamicCache()
    out.layers = [
        DummyLayer() if isinstance(x, DummyLayer) else DynamicLayer() for x in cache.layers
    ]
    return out


def _prefix_view(cache: Any, n: int) -> Any:
    """A new cache whose layers see the first `n` positions of `cache`'s (no copy)."""
    out = copy.copy(cache)
    out.layers = []
    for layer in cache.layers:
        view = copy.copy(layer)
        k, v = getattr(layer, "keys", None), getattr(layer, "values", None)
        if isinstance(k, torch.Tensor) and isinstance(v, torch.Tensor):
            view.keys, view.values = k[..., :n, :], v[..., :n, :]
        out.layers.append(view)
    return out
