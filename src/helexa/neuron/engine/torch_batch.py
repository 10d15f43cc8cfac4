"""The decode-phase generations of one worker in one KV cache: one forward per step for all.

A request is prefilled alone (its own `DynamicCache`); at the next step boundary it joins the
batch: the shorter side is left-padded so every row ends at the same cache position, and a 2D
attention mask (zeros on the padding) with per-row position ids keeps each row's numbers its own
(as HF `generate` does for a padded batch). A row that ends leaves by index selection, and the
padding all remaining rows share is cut off. Full-attention layers are padded; linear-attention
layers (Qwen3-Next, Qwen3.5) hold one fixed-size state per row with no sequence axis, so rows are
stacked, and a one-token step never reads the mask there. A pooled static cache joins as a
dynamic copy (`as_dynamic`). Any other cache layer (a sliding window) can't be padded this way:
`refusal` says why, and the engine then steps such rows one at a time.
"""

from __future__ import annotations

import abc
import copy
from collections.abc import Callable
from typing import Any

import torch
from transformers.cache_utils import DynamicLayer, LinearAttentionLayer

from helexa.neuron.engine.generation import GenerationState

Forward = Callable[..., Any]


def refusal(cache: Any) -> str | None:
    """Why rows of a model with this (fresh) cache can't share a batch; None when they can."""
    for layer in getattr(cache, "layers", None) or []:
        if type(layer) not in (DynamicLayer, LinearAttentionLayer):
            return f"its {type(layer).__name__} cache layers can't be left-padded"
    return None


def fed(state: GenerationState) -> int:
    """Tokens a generation's cache holds: the prompt and every sampled token but the last."""
    return len(state.prompt) + max(0, len(state.token_ids) - 1)


def _wants(state: GenerationState) -> bool:
    return len(state.token_ids) < state.max_tokens


def _attn(layer: Any) -> bool:
    return isinstance(layer, DynamicLayer) and layer.is_initialized


def _linear(layer: Any) -> bool:
    return isinstance(layer, LinearAttentionLayer)


def _states(layer: Any) -> list[dict[int, torch.Tensor | None]]:
    return [layer.conv_states, layer.recurrent_states]


def _pad_left(t: torch.Tensor, n: int) -> torch.Tensor:
    """(batch, heads, seq, dim) with `n` zero positions in front of seq."""
    return t if n == 0 else torch.nn.functional.pad(t, (0, 0, n, 0))


class Batch(abc.ABC):
    """What the engine drives on a batch: `step` and `release`, over the rows a kind of batch
    holds (`rows` in the order `forward` returns their logits) and how it joins, decodes,
    drops and gives up on them."""

    rows: list[GenerationState]

    def __len__(self) -> int:
        return len(self.rows)

    @abc.abstractmethod
    def join(self, state: GenerationState, cache: Any, n_tokens: int) -> None: ...

    @abc.abstractmethod
    def forward(self, model: Forward, tokens: list[int], **kw: Any) -> torch.Tensor: ...

    @abc.abstractmethod
    def leave(self, state: GenerationState, *, keep: bool = False) -> Any: ...

    @abc.abstractmethod
    def reset(self) -> None:
        """Drop every row (after a failed join or forward left the cache half-updated)."""

    @torch.inference_mode()
    def step(
        self,
        model: Forward,
        active: list[GenerationState],
        *,
        keep: bool,
        own: Callable[[GenerationState], Any],
        solo: bool,
        **kw: Any,
    ) -> dict[GenerationState, torch.Tensor | Exception]:
        """Rows that need no token leave (their own cache, with `keep`, goes back on
        `state.cache`), the newly prefilled join (`own(state)`: the cache the batch takes),
        then one forward for all: each row's logits, or, for every row and newcomer, the
        exception a join or the forward raised (the cache may be half-updated, so the batch is
        given up). With `solo`, a generation alone stays out (it decodes on its own, compiled)."""
        todo = [s for s in active if s.token_ids and not s.finished and _wants(s)]
        wanted = set(todo)
        try:
            for s in [r for r in self.rows if r not in wanted]:
                s.cache = self.leave(s, keep=keep)
            newcomers = [s for s in todo if s.cache is not self]
            if solo and not self.rows and len(newcomers) < 2:
                return {}
            for s in newcomers:
                self.join(s, own(s), fed(s))
                s.cache = self
            if not self.rows:
                return {}
            logits = self.forward(model, [s.token_ids[-1] for s in self.rows], **kw)
        except Exception as e:
            failed: dict[GenerationState, torch.Tensor | Exception] = dict.fromkeys(todo, e)
            self.reset()
            return failed
        return dict(zip(self.rows, logits, strict=True))

    def release(self, state: GenerationState, *, keep: bool) -> Any:
        """A member's end: its own cache with `keep` (else None); nothing if it already left."""
        return self.leave(state, keep=keep) if state in self.rows else None


class DecodeBatch(Batch):
    """Rows past their prefill, in one left-padded cache; `forward` decodes them together."""

    def __init__(self, device: torch.device, cache_kw: str = "cache") -> None:
        self.device = device
        self.cache_kw = cache_kw
        self.rows: list[GenerationState] = []
        self.lengths: list[int] = []  # real (unpadded) tokens each row holds in the cache
        self.cache: Any = None
        self.mask: torch.Tensor | None = None  # (rows, width): 1 on real tokens, 0 on padding

    @property
    def width(self) -> int:
        return 0 if self.mask is None else int(self.mask.shape[1])

    def join(self, state: GenerationState, cache: Any, n_tokens: int) -> None:
        """Take a prefilled request's own cache (holding `n_tokens`) into the batch."""
        row_mask = torch.ones((1, n_tokens), dtype=torch.long, device=self.device)
        if self.cache is None:
            self.cache, self.mask = cache, row_mask
        else:
            assert self.mask is not None
            width = max(self.width, n_tokens)
            grow, pad = width - self.width, width - n_tokens
            for mine, theirs in zip(self.cache.layers, cache.layers, strict=True):
                if _attn(mine):
                    mine.keys = torch.cat([_pad_left(mine.keys, grow), _pad_left(theirs.keys, pad)])
                    mine.values = torch.cat(
                        [_pad_left(mine.values, grow), _pad_left(theirs.values, pad)]
                    )
                if _linear(mine):
                    for ours, new in zip(_states(mine), _states(theirs), strict=True):
                        for k, t in ours.items():
                            n = new[k]
                            if t is not None and n is not None:
                                ours[k] = torch.cat([t, n])
            self.mask = torch.cat(
                [
                    torch.nn.functional.pad(self.mask, (grow, 0)),
                    torch.nn.functional.pad(row_mask, (pad, 0)),
                ]
            )
        self.rows.append(state)
        self.lengths.append(n_tokens)

    def forward(self, model: Forward, tokens: list[int], **kw: Any) -> torch.Tensor:
        """One decode step for every row (`tokens` in row order); fp32 logits (rows, vocab)."""
        assert self.mask is not None
        ids = torch.tensor(tokens, device=self.device).unsqueeze(1)
        mask = torch.nn.functional.pad(self.mask, (0, 1), value=1)
        pos = torch.tensor(self.lengths, device=self.device).unsqueeze(1)
        kw[self.cache_kw] = self.cache
        out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, **kw)
        self.mask = mask
        self.lengths = [n + 1 for n in self.lengths]
        return out.logits[:, -1].to(torch.float32)

    def reset(self) -> None:
        self.rows, self.lengths, self.cache, self.mask = [], [], None, None

    @torch.inference_mode()
    def leave(self, state: GenerationState, *, keep: bool = False) -> Any:
        """Drop a row; with `keep`, its unpadded cache on its own (for a prefix cache)."""
        i = self.rows.index(state)
        own = self._extract(i) if keep else None
        del self.rows[i], self.lengths[i]
        if not self.rows:
            self.cache = self.mask = None
            return own
        assert self.mask is not None
        rest = torch.tensor([j for j in range(len(self.rows) + 1) if j != i], device=self.device)
        cut = self.width - max(self.lengths)  # padding every remaining row has
        for layer in self.cache.layers:
            if _attn(layer):
                layer.keys = layer.keys.index_select(0, rest)[:, :, cut:]
                layer.values = layer.values.index_select(0, rest)[:, :, cut:]
            if _linear(layer):
                for states in _states(layer):
                    for k, t in states.items():
                        if t is not None:
                            states[k] = t.index_select(0, rest)
        self.mask = self.mask.index_select(0, rest)[:, cut:]
        return own

    def _extract(self, i: int) -> Any:
        """Row `i` as a standalone cache of batch size one, without its padding."""
        pad = self.width - self.lengths[i]
        out = copy.copy(self.cache)
        out.layers = [_row_copy(layer, i, self.lengths[i], pad) for layer in self.cache.layers]
        return out


def _row_copy(layer: Any, i: int, n: int, pad: int = 0) -> Any:
    """Row `i` of a dynamic or linear-attention layer (holding `n` tokens after `pad`) as a
    layer of its own, with copies of the tensors."""
    mine = copy.copy(layer)
    for name, value in vars(layer).items():
        if isinstance(value, dict):
            setattr(mine, name, dict(value))
    if _attn(layer):
        mine.keys = layer.keys[i : i + 1, :, pad:].clone()
        mine.values = layer.values[i : i + 1, :, pad:].clone()
    if _linear(layer):
        for states in _states(mine):
            for k, t in states.items():
                if t is not None:
                    states[k] = t[i : i + 1].clone()
        mine.cumulative_length_linear = torch.tensor(
            n, device=layer.cumulative_length_linear.device
        )
    return mine


def as_dynamic(cache: Any, n: int, config: Any, *, row: int = 0, start: int = 0) -> Any:
    """Row `row` of a cache of another kind (a pooled `StaticCache`, a static batch) as a
    one-sequence `DynamicCache` holding copies of its `n` positions from `start`, which a
    batch can pad and a prefix cache keep."""
    from transformers import DynamicCache

    out = DynamicCache(config=config)
    for j, (src, dst) in enumerate(zip(cache.layers, out.layers, strict=True)):
        if _linear(src):
            out.layers[j] = _row_copy(src, row, n)
        elif isinstance(dst, DynamicLayer) and getattr(src, "is_initialized", False):
            dst.lazy_initialization(src.keys, src.values)
            dst.keys = src.keys[row : row + 1, :, start : start + n].clone()
            dst.values = src.values[row : row + 1, :, start : start + n].clone()
    return out


def kv_cost(cache: Any) -> tuple[int, int]:
    """KV bytes per cached token (all layers) and fixed state bytes per row, measured on a
    one-sequence cache after a forward."""
    per_token = per_row = 0
    for layer in cache.layers:
        keys = getattr(layer, "keys", None)
        if isinstance(keys, torch.Tensor) and keys.dim() == 4 and keys.shape[-2] > 0:
            per_token += (keys.nbytes + layer.values.nbytes) // keys.shape[-2]
        if _linear(layer):
            per_row += sum(t.nbytes for d in _states(layer) for t in d.values() if t is not None)
    return per_token, per_row
