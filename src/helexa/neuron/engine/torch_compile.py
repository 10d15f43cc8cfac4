"""The compiled decode step: `torch.compile` of the model's one-token forward over a static cache.

A lone generation decodes with it in a pooled `StaticCache`; once others open, they decode
together through the same compiled function in a static batch (torch_static_batch: buckets by
batch size, warmed at load), or, for models it refuses, in the eager padded batch (torch_batch).
On CUDA the mode is "reduce-overhead" (CUDA graphs, one shape per bucket: every cache is the
whole context). On the CPU it is inductor's C++ with the cache length
symbolic (caches grow by powers of two, one graph for all), one-row matmuls as its own
reductions and SDPA's own GQA.
Measured on a 76M Qwen3, fp32, one thread, same greedy tokens as eager: 80-87 tokens per
CPU-second against eager's 45-48 with a 256-token cache, 66 vs 49 at 1,024, 43 vs 31 at ~2,400.
`auto` still leaves the CPU eager: the compile adds 25-70 s to every load on 2 cores (CPU_AUTO
changes that).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from typing import Any

import torch

log = logging.getLogger("helexa.neuron.engine")

CPU_AUTO = False  # `auto` on the CPU: off (the load time), see the module docstring


def wanted(mode: str, device: torch.device) -> bool:
    """Whether to compile: `on`, or `auto` on CUDA (and on the CPU only with CPU_AUTO)."""
    if mode == "auto":
        return device.type == "cuda" or CPU_AUTO
    return mode == "on"


def one_size(device: torch.device) -> bool:
    """Whether every request gets a cache of the whole context: CUDA graphs replay one shape;
    the CPU graph takes the cache's length as a symbol, so its caches grow by powers of two."""
    return device.type == "cuda"


def compile_step(model: Any, device: torch.device) -> Callable[..., Any]:
    """The compiled forward (lazy: the graph is built by its first calls, at warm-up)."""
    if device.type == "cuda":
        import triton  # noqa: F401  (inductor needs it on CUDA)
    with contextlib.suppress(Exception):
        dyn = torch._dynamo.config
        name = "recompile_limit" if hasattr(dyn, "recompile_limit") else "cache_size_limit"
        setattr(dyn, name, max(getattr(dyn, name), 64))
    if device.type == "cpu":
        # one-row matmuls as inductor reductions (~1.8x less CPU than the BLAS GEMV call), and
        # SDPA's own GQA, so a step doesn't copy the static cache out per query head
        opts = torch._inductor.config.post_grad_fusion_options
        opts.setdefault("decompose_mm_pass", {"cpu_max_other_dimension_decomposition": 1 << 30})
        os.environ.setdefault("TRANSFORMERS_SDPA_FORCE_GQA", "1")
    if device.type == "cuda":
        return torch.compile(model.__call__, mode="reduce-overhead", fullgraph=False, dynamic=False)
    return torch.compile(model.__call__, fullgraph=False, dynamic=True)
