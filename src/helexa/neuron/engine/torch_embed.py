"""Embeddings from a torch model's hidden states: the pooling modes, and inputs grouped by
length, so no padding ever touches the numbers and the same request always gives the same
vectors (a different batch mix may move the last bits)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

BATCH_TOKENS = 16384  # tokens one forward embeds at most


def pool_hidden(h: torch.Tensor, mode: str) -> torch.Tensor:
    """Pool hidden states (batch, seq, dim) of unpadded sequences."""
    if mode == "lasttoken":
        return h[:, -1]
    if mode == "cls":
        return h[:, 0]
    if mode == "mean":
        return h.mean(dim=1)
    if mode == "max":
        return h.max(dim=1).values
    if mode == "mean_sqrt_len_tokens":
        return h.sum(dim=1) / math.sqrt(h.shape[1])
    if mode == "weightedmean":
        w = torch.arange(1, h.shape[1] + 1, device=h.device, dtype=h.dtype)
        return (h * w[None, :, None]).sum(dim=1) / w.sum()
    raise ValueError(f"pooling mode '{mode}' is not supported")


def by_length(
    seqs: list[list[int]], run: Callable[[list[list[int]]], list[list[float]]]
) -> list[list[float]]:
    """`run`'s vector for each sequence, in order: duplicates computed once, sequences of one
    length batched together (at most BATCH_TOKENS tokens a batch)."""
    unique = list(dict.fromkeys(tuple(s) for s in seqs))
    groups: dict[int, list[tuple[int, ...]]] = {}
    for u in unique:
        groups.setdefault(len(u), []).append(u)
    found: dict[tuple[int, ...], list[float]] = {}
    for n, group in sorted(groups.items()):
        per = max(1, BATCH_TOKENS // n)
        for j in range(0, len(group), per):
            chunk = group[j : j + per]
            for u, v in zip(chunk, run([list(c) for c in chunk]), strict=True):
                found[u] = v
    return [found[tuple(s)] for s in seqs]
