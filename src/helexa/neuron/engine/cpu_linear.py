"""CPU linears on oneDNN with their weights packed once at load, when that is measured faster.

Why: the stock CPU path (`F.linear` -> MKL) is slow for exactly the shapes decoding has. On this
project's CI host (AMD EPYC, 2 threads, MKL 2024.2), the 48 linears of a 768x12 Qwen3 took
15.5 ms for one token (a single-threaded GEMV) and 25 ms for 2-8 rows; oneDNN with each weight
reordered once into its blocked layout took 7.5-7.8 ms for 1, 2, 4 or 8 rows (memory-bound, as
it should be) and half the time of MKL for prefill (512 rows: 4.2 vs 8.4 ms per matrix). A whole
decode step went from 19.3 to 10.6 ms (1 row) and 29.1 to 16.3 ms (4 rows).

The choice is measured per worker at load, per weight shape (`pack_linears`): on a CPU where the
stock path is as fast, and for tiny matrices (oneDNN's call costs ~20 us more), nothing changes;
HELEXA_CPU_LINEAR=packed|stock overrides the measurement. Only exact `nn.Linear` modules with
fp32 weights are packed (bf16 oneDNN kernels may use AMX, which some virtual machines fault on),
each one checked against `F.linear` on a random input before its original weight is dropped:
the packed copy replaces the original (a tied output head keeps the embedding's tensor and adds
its packed copy). A compiled decode step keeps the stock linears: inductor can't trace the
opaque packed weights.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from functools import partial
from typing import TypeGuard

import torch

log = logging.getLogger("helexa.neuron.engine")

_ROWS = (1, 4)  # decode shapes the load-time measurement times
_SLACK = 1.1  # packed is kept unless over 10 % slower
_COPIES = 64  # most weight copies a measurement goes through
_SPILL_BYTES = 64 << 20  # weights a measurement goes through: more than a last-level cache
ENV = "HELEXA_CPU_LINEAR"  # auto (measure), packed or stock: for operators and tests


class PackedLinear(torch.nn.Module):
    """`nn.Linear` on a oneDNN-packed weight. `weight` stays as a meta tensor of the original's
    shape, so code that reads its shape still can, and code that would compute with it fails
    loudly instead of silently using a stale copy."""

    def __init__(self, linear: torch.nn.Linear, packed: torch.Tensor) -> None:
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        self.packed = packed
        self.bias = linear.bias
        self.weight = torch.empty(linear.weight.shape, dtype=linear.weight.dtype, device="meta")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _packed_call(x, self.packed, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, onednn packed"


def _packable(m: torch.nn.Module) -> TypeGuard[torch.nn.Linear]:
    return (
        type(m) is torch.nn.Linear
        and m.weight.device.type == "cpu"
        and m.weight.dtype == torch.float32
    )


def _packed_call(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    out: torch.Tensor = torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")
    return out


def _pack(w: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._reorder_linear_weight(w.detach(), 1)


def _best_of(fn: Callable[[], object], reps: int = 5) -> float:
    fn()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def measure(linear: torch.nn.Linear) -> tuple[float, float]:
    """(stock, packed) seconds for one decode-shaped call of each row count in _ROWS, summed;
    best of a few, so a noisy neighbour's stall doesn't decide. Each pass goes through enough
    copies of the weight to overflow the CPU's caches, as a real step does (the rest of the
    model passes through them between two uses of one weight): warm in the caches, a 256x768
    matrix took MKL 10 us against oneDNN's 18 for one row, but in the model 43 us (73 for two
    rows), and the warm measurement kept it stock."""
    copies = max(1, min(_COPIES, _SPILL_BYTES // max(1, linear.weight.nbytes)))
    weights = [linear.weight.detach()] + [linear.weight.detach().clone() for _ in range(copies - 1)]
    packed = [_pack(w) for w in weights]
    stock = fast = 0.0
    for rows in _ROWS:
        x = torch.randn(rows, linear.in_features)
        stock += _best_of(partial(_each, torch.nn.functional.linear, x, weights, linear.bias))
        fast += _best_of(partial(_each, _packed_call, x, packed, linear.bias))
    return stock / copies, fast / copies


def _each(
    fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor],
    x: torch.Tensor,
    weights: list[torch.Tensor],
    bias: torch.Tensor | None,
) -> None:
    for w in weights:
        fn(x, w, bias)


def _agrees(linear: torch.nn.Linear, packed: torch.Tensor) -> bool:
    x = torch.randn(2, linear.in_features)
    want = torch.nn.functional.linear(x, linear.weight, linear.bias)
    got = _packed_call(x, packed, linear.bias)
    return bool(torch.allclose(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()) + 1e-6))


def _choice() -> str:
    mode = os.environ.get(ENV, "auto").strip().lower()
    if mode not in ("auto", "packed", "stock"):
        log.warning("%s=%r is not auto, packed or stock; using auto", ENV, mode)
        return "auto"
    return mode


@torch.inference_mode()
def pack_linears(model: torch.nn.Module) -> int:
    """Swap the model's fp32 CPU linears for packed ones, each weight shape by its own
    measurement (oneDNN's ~20 us call overhead loses on tiny matrices); how many were."""
    mode = _choice()
    if mode == "stock" or not torch.backends.mkldnn.is_available():
        return 0
    by_shape: dict[tuple[int, int], list[tuple[str, torch.nn.Linear]]] = {}
    for name, m in model.named_modules():
        if _packable(m):
            by_shape.setdefault((m.out_features, m.in_features), []).append((name, m))
    n = total = 0
    for shape, group in by_shape.items():
        total += len(group)
        if mode == "auto":
            stock, fast = measure(group[0][1])
            won = fast <= stock * _SLACK
            log.info(
                "linear %dx%d (%d of them): packed %.0f us vs stock %.0f us -> %s",
                shape[0],
                shape[1],
                len(group),
                fast * 1e6,
                stock * 1e6,
                "packed" if won else "stock",
            )
            if not won:
                continue
        for name, linear in group:
            packed = _pack(linear.weight)
            if not _agrees(linear, packed):
                log.warning("linear %s: the packed kernel disagrees with F.linear; kept", name)
                continue
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent), attr, PackedLinear(linear, packed))
            n += 1
    if n:
        _own_the_rest(model)
    if total:
        log.info("%d of %d linears packed for oneDNN (%s=%s)", n, total, ENV, mode)
    return n


def _own_the_rest(model: torch.nn.Module) -> None:
    """Copy the tensors still backed by the checkpoint's file mapping (embeddings, norms) into
    memory of their own, so the mapping goes with them: the dropped weights' pages would
    otherwise stay mapped and count in the worker's measured memory (a 300 MB model held
    557 MB anonymous + 402 MB of file pages after packing, instead of about 650 MB in all)."""
    for p in model.parameters():
        p.data = p.data.clone()
