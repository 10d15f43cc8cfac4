"""Per-request sampling: penalties, temperature, top-k, top-p, min-p, seeded draws.

The filters follow transformers' logits processors exactly (same order, same tie rules), so a
request means the same thing here as in `generate`: repetition penalty over prompt + output,
then the OpenAI presence/frequency penalties over the output, temperature, top-k, top-p, min-p.
Temperature 0 is greedy (argmax after the penalties).
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Mapping
from typing import Any

import torch

from helexa.neuron.engine.constraint import Constrained
from helexa.neuron.engine.errors import Fault
from helexa.neuron.engine.logit_bias import LogitBias
from helexa.neuron.engine.sampling_params import SamplingParams

# What generation_config.json may set; OpenAI-style penalties are not part of it.
_GENCFG_FIELDS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")


def defaults_from_generation_config(gencfg: Mapping[str, Any]) -> dict[str, Any]:
    """The model's own defaults. An explicit `do_sample: false` means greedy by default."""
    out = {k: gencfg[k] for k in _GENCFG_FIELDS if gencfg.get(k) is not None}
    if gencfg.get("do_sample") is False:
        out["temperature"] = 0.0
    return out


def apply_top_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """transformers TopKLogitsWarper: keep the k best (ties at the k-th value kept too)."""
    k = min(k, scores.shape[-1])
    kth = torch.topk(scores, k)[0][..., -1, None]
    return scores.masked_fill(scores < kth, -math.inf)


def apply_top_p(scores: torch.Tensor, p: float) -> torch.Tensor:
    """transformers TopPLogitsWarper: drop the low tail whose mass is <= 1 - p; keep >= 1."""
    sorted_logits, sorted_idx = torch.sort(scores, descending=False)
    cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    remove_sorted = cum <= (1 - p)
    remove_sorted[..., -1:] = False
    remove = remove_sorted.scatter(-1, sorted_idx, remove_sorted)
    return scores.masked_fill(remove, -math.inf)


def apply_min_p(scores: torch.Tensor, min_p: float) -> torch.Tensor:
    """transformers MinPLogitsWarper: drop tokens below min_p x the top probability."""
    probs = torch.softmax(scores, dim=-1)
    threshold = min_p * probs.amax(dim=-1, keepdim=True)
    return scores.masked_fill(probs < threshold, -math.inf)


class Sampler:
    """One request's sampler: its penalty state and its own RNG (so seeds are per request)."""

    def __init__(
        self,
        params: SamplingParams,
        *,
        vocab_size: int,
        device: torch.device,
        prompt_ids: list[int],
    ) -> None:
        self.params = params
        self.seed = params.seed if params.seed is not None else secrets.randbits(63)
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(self.seed)
        self.seen: torch.Tensor | None = None
        self.counts: torch.Tensor | None = None
        if params.repetition_penalty != 1.0:
            self.seen = torch.zeros(vocab_size, dtype=torch.bool, device=device)
            ids = [i for i in prompt_ids if 0 <= i < vocab_size]
            if ids:
                self.seen[torch.tensor(ids, device=device)] = True
        if params.presence_penalty != 0.0 or params.frequency_penalty != 0.0:
            self.counts = torch.zeros(vocab_size, dtype=torch.float32, device=device)

    def process(self, logits: torch.Tensor) -> torch.Tensor:
        """Penalties and filters applied to fp32 logits of shape (vocab,); returns new scores."""
        p = self.params
        scores = logits
        if self.seen is not None:
            penalised = torch.where(
                scores > 0, scores / p.repetition_penalty, scores * p.repetition_penalty
            )
            scores = torch.where(self.seen, penalised, scores)
        if self.counts is not None:
            scores = (
                scores
                - p.frequency_penalty * self.counts
                - p.presence_penalty * (self.counts > 0).to(scores.dtype)
            )
        if p.greedy:
            return scores
        if p.temperature != 1.0:
            scores = scores / p.temperature
        if p.top_k > 0:
            scores = apply_top_k(scores, p.top_k)
        if p.top_p < 1.0:
            scores = apply_top_p(scores, p.top_p)
        if p.min_p > 0.0:
            scores = apply_min_p(scores, p.min_p)
        return scores

    def sample(self, logits: torch.Tensor) -> torch.Tensor:
        """The next token as a 0-d int64 tensor (no host sync here)."""
        scores = self.process(logits)
        if self.params.greedy:
            return torch.argmax(scores)
        probs = torch.softmax(scores, dim=-1)
        return torch.multinomial(probs, 1, generator=self.generator)[0]

    def observe(self, token: int) -> None:
        """Record a generated token for the penalties."""
        if self.seen is not None and 0 <= token < self.seen.shape[0]:
            self.seen[token] = True
        if self.counts is not None and 0 <= token < self.counts.shape[0]:
            self.counts[token] += 1


def steer(logits: torch.Tensor, bias: LogitBias | None, constraint: Constrained | None) -> None:
    """A request's logit_bias, then its grammar's mask, on fp32 logits (vocab,), in place."""
    if logits.device.type == "cpu":  # numpy on the same memory: one thread, no dispatch
        row = logits.numpy()
        if bias is not None:
            bias.apply(row)
        if constraint is not None:
            constraint.mask(row)
        return
    if bias is not None:
        ids = torch.from_numpy(bias.ids).to(logits.device)
        logits.index_add_(0, ids, torch.from_numpy(bias.values).to(logits.device))
    if constraint is not None:
        banned = torch.from_numpy(constraint.banned()).to(logits.device)
        logits.masked_fill_(banned, -math.inf)


def pick_checked(
    sampler: Sampler,
    logits: torch.Tensor,
    where: str,
    bias: LogitBias | None = None,
    constraint: Constrained | None = None,
) -> int:
    """Sample from fp32 logits of shape (vocab,) with one host sync; a Fault when any raw score
    is non-finite (`where` names the step and request). The bias and the grammar's mask are
    applied to `logits` in place."""
    finite = torch.isfinite(logits).all()
    steer(logits, bias, constraint)
    picked = sampler.sample(logits)
    tok, ok = torch.stack([picked.to(torch.int64), finite.to(torch.int64)]).tolist()
    if not ok:
        raise Fault("non_finite", f"non-finite logits at {where}")
    return int(tok)
