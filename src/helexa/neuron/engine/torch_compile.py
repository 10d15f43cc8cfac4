"""The compiled decode step: `torch.compile` of the model's one-token forward over a static cache.

Only the batch-1 step is compiled: the batched decode path pads `DynamicCache`s (its shapes
change every step), so a compiled model decodes its generations one at a time, each in a pooled
`StaticCache` of the whole context (one graph for every request). On CUDA the mode is
"reduce-overhead" (CUDA graphs). On the CPU it is inductor's C++, and `auto` leaves the CPU
eager: on a 76M Qwen3 in fp32 (one thread, same greedy tokens) it decoded 18.7 tok/s with a
256-token cache against eager's 17-18.6, and 4.1-5.4 with the 4096-token cache a neuron's
defaults give (every step attends over the whole static cache); 87 % of an eager step is the
matrix-vector products, which inductor leaves to the same BLAS call.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any

import torch

log = logging.getLogger("helexa.neuron.engine")

CPU_AUTO = False  # `auto` on the CPU: off, see the module docstring


def wanted(mode: str, device: torch.device) -> bool:
    """Whether to compile: `on`, or `auto` on CUDA (and on the CPU only with CPU_AUTO)."""
    if mode == "auto":
        return device.type == "cuda" or CPU_AUTO
    return mode == "on"


def compile_step(model: Any, device: torch.device) -> Callable[..., Any]:
    """The compiled forward (lazy: the graph is built by its first calls, at warm-up)."""
    if device.type == "cuda":
        import triton  # noqa: F401  (inductor needs it on CUDA)
    with contextlib.suppress(Exception):
        dyn = torch._dynamo.config
        name = "recompile_limit" if hasattr(dyn, "recompile_limit") else "cache_size_limit"
        setattr(dyn, name, max(getattr(dyn, name), 64))
    mode = "reduce-overhead" if device.type == "cuda" else "default"
    return torch.compile(model.__call__, mode=mode, fullgraph=False, dynamic=False)
