"""The decode batch over a preallocated cache, so its forward keeps one shape and can be compiled.

Per layer, K/V of shape (slots, kv_heads, cap, head_dim) in a `StaticCache`. Every live row ends
at the same column `w` (left padding, as in `DecodeBatch`); a step writes each row's K/V in place
at column `w` with its own position id, under a 4D mask (slots, 1, 1, cap) kept in place (each
step only sets column `w`). No per-step `torch.cat` of the whole cache, and for a bucket the
forward's shapes never change: `slots` is a power of two from 2 up to `max_batch` rounded up
(more rows: the next bucket, one copy; rows <= slots / 4: half, so a batch doesn't thrash), and
the cap grows by powers of two on the CPU (one symbolic graph for all of them) or is the
context cap on CUDA (CUDA graphs: one graph per bucket, every bucket a view of one storage so
their addresses never change). Free slots attend only to the column being written (no all-masked
row, no NaN). When `w` reaches the cap, the padding all rows share is cut first, else the cap
grows.

Only for models whose fresh cache is all full-attention layers under SDPA (`static_refusal`): a
linear-attention layer (Qwen3-Next, Qwen3.5) keeps one recurrent state per row with no sequence
axis, and a sliding window keeps only its last positions, so neither has columns to align; those
keep `DecodeBatch` (or decode one at a time).

Eager (`exact`), a step attends over the columns in use only (views of [0, w]), not the whole
cap: so it is also the CPU's eager batch (EAGER_CPU; on CUDA eager models keep `DecodeBatch`,
unmeasured). Measured on the bench's ~100M Qwen3 (768 x 12 layers), fp32, one thread, same
tokens, interleaved in one process, ms of CPU a step, `DecodeBatch` against this: 4 rows at
~300 tokens 25.4-26.6 vs 24.2-25.1; 8 rows at ~300, 33.2-43.4 vs 31.0-31.2; 4 rows at ~1,000,
33.4-35.1 vs 31.5-31.7 (attending over the whole power-of-two cap instead: 25.5 vs 25.2 at 4 x
300, no gain). Compiled there: 29.4, 31.0, 41 ms a step for 2, 4, 8 rows against 32.6, 33.0,
43 for the same model's eager `DecodeBatch` (stock linears in both; batch-1 compiled: 11 ms).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from transformers.cache_utils import DynamicLayer

from helexa.neuron.engine.generation import GenerationState
from helexa.neuron.engine.static_pool import cache_len
from helexa.neuron.engine.torch_batch import Batch, Forward, as_dynamic

log = logging.getLogger("helexa.neuron.engine")

MIN_SLOTS = 2
EAGER_CPU = True  # uncompiled on the CPU: a static batch instead of DecodeBatch (see above)


def static_refusal(cache: Any, config: Any) -> str | None:
    """Why a model with this fresh `DynamicCache` can't use a static batch; None if it can."""
    for layer in getattr(cache, "layers", None) or []:
        if type(layer) is not DynamicLayer:
            return f"its {type(layer).__name__} cache layers have no columns to align"
    impl = getattr(config, "_attn_implementation", None)
    return None if impl == "sdpa" else f"its attention ({impl}) takes no boolean 4D mask"


def bucket(rows: int, top: int) -> int:
    """The slots for `rows` rows: a power of two, at least MIN_SLOTS, at most `top`."""
    return min(top, max(MIN_SLOTS, 1 << max(0, rows - 1).bit_length()))


class StaticBatch(Batch):
    """Decode-phase rows in the slots of one static cache (see the module docstring)."""

    def __init__(
        self,
        device: torch.device,
        config: Any,
        cache_kw: str,
        max_batch: int,
        context_cap: int | None,
        fixed: bool,
        exact: bool = False,
    ) -> None:
        self.device = device
        self.exact = exact  # eager: attend over the columns in use only, not the whole cap
        self.config = config
        self.cache_kw = cache_kw
        self.top = bucket(max_batch, 1 << 30)
        self.context_cap = context_cap
        self.fixed = fixed and context_cap is not None  # one cap, buckets view one storage
        self.rows: list[GenerationState] = []  # the live rows, in slot order
        self.slots: list[GenerationState | None] = []
        self.lengths: list[int] = []  # per slot: the row's tokens in the cache (0: free)
        self.w = 0  # the column the next step writes, where every live row ends
        self.cache: Any = None
        self.mask: torch.Tensor | None = None  # (slots, 1, 1, cap): True where a slot attends
        self._store: Any = None  # fixed: the `top`-slot cache every bucket is a view of

    @property
    def cap(self) -> int:
        return 0 if self.mask is None else int(self.mask.shape[-1])

    def held(self, rows: int, longest: int) -> tuple[int, int]:
        """The slots and columns this batch holds with `rows` rows, the longest reaching
        `longest` positions (the KV budget counts slots x columns)."""
        if self.fixed:
            return self.top, cache_len(longest, self.context_cap, True)
        slots = max(len(self.slots), bucket(rows, self.top))
        return slots, max(self.cap, cache_len(longest, self.context_cap, False))

    # ---- the cache's layout -----------------------------------------------------------------

    def _block(self, slots: int, cap: int, like: Any) -> Any:
        """A StaticCache of `slots` rows and `cap` columns, laid out like `like`'s layers;
        fixed, a view of the first `slots` rows of the one storage."""
        from transformers import StaticCache

        if self.fixed:
            if self._store is None:
                self._store = self._alloc(self.top, cap, like)
            out: Any = StaticCache(config=self.config, max_cache_len=cap)
            for mine, whole in zip(out.layers, self._store.layers, strict=True):
                vars(mine).update(vars(whole))
                mine.keys, mine.values = whole.keys[:slots], whole.values[:slots]
                mine.batch_size = slots
                torch._dynamo.mark_static_address(mine.keys)
                torch._dynamo.mark_static_address(mine.values)
            return out
        return self._alloc(slots, cap, like)

    def _alloc(self, slots: int, cap: int, like: Any) -> Any:
        from transformers import StaticCache

        out: Any = StaticCache(config=self.config, max_cache_len=cap)
        for mine, src in zip(out.layers, like.layers, strict=True):
            k, v = src.keys, src.values
            mine.lazy_initialization(
                k.new_empty((slots, k.shape[1], 1, k.shape[-1])),
                v.new_empty((slots, v.shape[1], 1, v.shape[-1])),
            )
        return out

    def _resize(self, slots: int, cap: int, like: Any) -> None:
        """Into a block of `slots` x `cap`: rows keep their slot where it still exists, others
        take a free one; columns [0, w) are copied (fixed: only rows that move)."""
        live = [i for i, r in enumerate(self.slots) if r is not None]
        place = {i: i for i in live if i < slots}
        free = iter(j for j in range(slots) if j not in place.values())
        place.update({i: next(free) for i in live if i not in place})
        old, self.cache = self.cache, self._block(slots, cap, like)
        moves = [(i, j) for i, j in place.items() if not (self.fixed and i == j)]
        if old is not None and moves and self.w:
            src = torch.tensor([i for i, _ in moves], device=self.device)
            dst = torch.tensor([j for _, j in moves], device=self.device)
            for theirs, mine in zip(old.layers, self.cache.layers, strict=True):
                mine.keys[dst, :, : self.w] = theirs.keys[src, :, : self.w]
                mine.values[dst, :, : self.w] = theirs.values[src, :, : self.w]
        rows: list[GenerationState | None] = [None] * slots
        lengths = [0] * slots
        for i, j in place.items():
            rows[j], lengths[j] = self.slots[i], self.lengths[i]
        self.slots, self.lengths = rows, lengths
        self.mask = torch.zeros((slots, 1, 1, cap), dtype=torch.bool, device=self.device)
        self._settle()

    def _shift(self, by: int) -> None:
        """Move every row's columns [0, w) by `by` (right > 0, left < 0: cutting shared
        padding); `w` moves with them."""
        lo, hi = max(0, -by), self.w
        for layer in self.cache.layers:
            for t in (layer.keys, layer.values):
                t[:, :, lo + by : hi + by] = t[:, :, lo:hi].clone()
        self.w += by
        self._settle()

    def _settle(self) -> None:
        """The mask from the rows' lengths, and the write column into every layer."""
        assert self.mask is not None
        self.mask.zero_()
        for i, n in enumerate(self.lengths):
            if self.slots[i] is not None:
                self.mask[i, :, :, self.w - n : self.w] = True
        for layer in self.cache.layers:
            layer.cumulative_length.fill_(self.w)
        self.rows = [r for r in self.slots if r is not None]

    def _room(self, n: int, like: Any) -> None:
        """Make columns up to max(w, n) writable: cut the padding every row shares, else grow
        the cap (fixed, the cap is the context: a row can't reach it, the daemon clamps)."""
        if max(self.w, n) < self.cap:
            return
        shared = self.w - max(self.lengths, default=0)
        if shared > 0:
            self._shift(-shared)
        if max(self.w, n) >= self.cap:
            if self.fixed:
                raise RuntimeError(f"a batch row reached the context cap ({self.cap})")
            cap = cache_len(max(self.w, n) + 1, self.context_cap, False)
            self._resize(len(self.slots), cap, like)

    # ---- rows ---------------------------------------------------------------------------------

    def join(self, state: GenerationState, cache: Any, n_tokens: int) -> None:
        """Copy a prefilled request's cache (its first `n_tokens` columns, a dynamic or a pooled
        static one) into a free slot, ending at column `w`."""
        if self.cache is None:
            self.w = 0
            grown = cache_len(n_tokens + 1, self.context_cap, False)
            cap = self.context_cap if self.fixed and self.context_cap else grown
            self._resize(MIN_SLOTS, cap, cache)
        elif len(self.rows) == len(self.slots):
            self._resize(bucket(len(self.rows) + 1, self.top), self.cap, cache)
        self._room(n_tokens, cache)
        if n_tokens > self.w:
            self._shift(n_tokens - self.w)
        j = self.slots.index(None)
        w, n = self.w, n_tokens
        for mine, theirs in zip(self.cache.layers, cache.layers, strict=True):
            mine.keys[j, :, w - n : w] = theirs.keys[0, :, :n]
            mine.values[j, :, w - n : w] = theirs.values[0, :, :n]
        self.slots[j], self.lengths[j] = state, n
        self._settle()

    def forward(self, model: Forward, tokens: list[int], **kw: Any) -> torch.Tensor:
        """One step for every slot (`tokens` for the live rows in order); their fp32 logits."""
        self._room(0, self.cache)
        assert self.mask is not None
        it = iter(tokens)
        ids = [next(it) if r is not None else 0 for r in self.slots]
        live = [i for i, r in enumerate(self.slots) if r is not None]
        pos = torch.tensor(self.lengths, device=self.device).unsqueeze(1)
        tokens_in = torch.tensor(ids, device=self.device).unsqueeze(1)
        self.mask[:, :, :, self.w] = True
        if not (self.fixed or self.exact):  # compiled: one graph for every bucket, not two
            for t in (tokens_in, pos, self.mask):
                torch._dynamo.maybe_mark_dynamic(t, 0)
        kw[self.cache_kw] = self.cache
        mask, full = self.mask, [(x.keys, x.values) for x in self.cache.layers]
        if self.exact:  # views: a layer writes column w through them, attention reads [0, w]
            mask = mask[..., : self.w + 1]
            for x in self.cache.layers:
                x.keys, x.values = x.keys[:, :, : self.w + 1], x.values[:, :, : self.w + 1]
        try:
            out = model(
                input_ids=tokens_in, attention_mask=mask, position_ids=pos, use_cache=True, **kw
            )
        finally:
            for x, (k, v) in zip(self.cache.layers, full, strict=True):
                x.keys, x.values = k, v
        self.w += 1
        self.lengths = [n + (r is not None) for n, r in zip(self.lengths, self.slots, strict=True)]
        # a copy: a CUDA graph's output is overwritten by its next replay
        logits = out.logits[:, -1].to(torch.float32, copy=True)
        return logits[torch.tensor(live, device=self.device)]

    @torch.inference_mode()
    def leave(self, state: GenerationState, *, keep: bool = False) -> Any:
        """Free a row's slot (no copy); with `keep`, its own unpadded cache, a DynamicCache."""
        i = self.slots.index(state)
        n = self.lengths[i]
        own = as_dynamic(self.cache, n, self.config, row=i, start=self.w - n) if keep else None
        self.slots[i], self.lengths[i] = None, 0
        self.rows = [r for r in self.slots if r is not None]
        if not self.rows:
            self.reset()
        elif len(self.slots) > MIN_SLOTS and len(self.rows) <= len(self.slots) // 4:
            self._resize(len(self.slots) // 2, self.cap, self.cache)
        return own

    @torch.inference_mode()
    def last_out(
        self, active: list[GenerationState], fresh: Callable[[GenerationState], Any]
    ) -> None:
        """With one row left and no one else open, it leaves into `fresh(row)` (a pooled
        static cache for the batch-1 compiled step), or, None, with its own dynamic one: one
        row decodes faster alone (~100M Qwen3 on the CPU, ms a step alone vs as one row of a
        2-slot batch: compiled 11 vs 29, eager 18.3 vs 23)."""
        if len(self.rows) != 1 or sum(not s.finished for s in active) != 1:
            return
        row = self.rows[0]
        cache, i = fresh(row), self.slots.index(row)
        if cache is None:
            row.cache = self.leave(row, keep=True)
            return
        start = self.w - self.lengths[i]
        for src, dst in zip(self.cache.layers, cache.layers, strict=True):
            dst.update(
                src.keys[i : i + 1, :, start : self.w], src.values[i : i + 1, :, start : self.w]
            )
        self.leave(row)
        row.cache = cache

    def reset(self) -> None:
        """Every row gone: the cache is freed (fixed: its storage stays, for the graphs)."""
        self.rows, self.slots, self.lengths, self.w = [], [], [], 0
        self.cache = self.mask = None

    def nbytes(self) -> int:
        """Bytes of the storage kept across batches (fixed); 0 otherwise."""
        if self._store is None:
            return 0
        return sum(t.nbytes for x in self._store.layers for t in (x.keys, x.values))

    @torch.inference_mode()
    def warm(self, model: Forward, cache: Any, tok: int, steps: int = 3, **kw: Any) -> bool:
        """Build every bucket's graph: rows copied from a prefilled `cache`, `steps` steps
        each (a CUDA graph is recorded on the second), then they all leave. False, warned, on
        any failure (the storage of the largest bucket over the whole context may not fit)."""
        n = int(cache.layers[0].get_seq_length())
        slots = MIN_SLOTS
        try:
            while slots <= self.top:
                rows = [
                    GenerationState(f"warm{i}", [tok] * n, n + steps + 1, None, None)  # type: ignore[arg-type]
                    for i in range(slots)
                ]
                for r in rows:
                    r.token_ids = [tok]
                for _ in range(steps):
                    got = self.step(model, rows, keep=False, own=lambda _s: cache, solo=False, **kw)
                    failed = [e for e in got.values() if isinstance(e, Exception)]
                    if failed:
                        raise failed[0]
                self.step(model, [], keep=False, own=lambda _s: cache, solo=False)
                slots *= 2
        except Exception as e:
            log.warning(
                "compiling the batch step failed, batching eagerly: %s: %s", type(e).__name__, e
            )
            self.reset()
            self._store = None
            return False
        return True
