"""Where a GGUF model's layers go, decided before any worker starts: pure functions over the
model's size and the devices' free memory, so the decision is testable on fake device lists.

- the estimate: weights (the GGUF files' sizes) + the KV cache for the context
  (attention layers × context × (k + v heads × head dim) × bytes per KV type) + for hybrid
  models (Qwen3-Next, Qwen3.5) the recurrent state of every KV sequence + a compute buffer;
- one device: every layer on it; several (the spec's `devices`, or `min_devices > 1`): split
  by layer in proportion to each device's free memory, so a 12 GB and an 8 GB card both fill;
- too little room: the layers that don't fit go to the CPU when the spec allows it
  (`cpu_offload`) and the host's MemAvailable holds them, else `507 insufficient_memory` with
  the estimate.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from helexa.neuron.errors import insufficient_memory
from helexa.neuron.gguf_files import shard_paths
from helexa.neuron.gguf_meta import arch_key, read_metadata
from helexa.neuron.memory import mem_available_mb
from helexa.wire.errors import ApiError
from helexa.wire.neuron import ModelSpec

MB = 2**20
# Bytes per KV element by cache type (q8_0: 34 bytes / 32 values, q4_0: 18 / 32).
KV_BYTES = {"f16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32}
COMPUTE_MB = 256  # llama.cpp's compute buffer (grows with the batch; this is its order)
HEADROOM = 1.1  # as for torch: weights and cache plus 10 %
# KV sequences a llamacpp worker opens (requests in flight plus prefixes kept). They share one
# KV cache, so they cost no memory there; a recurrent state (hybrid models) is one per sequence
# (Qwen3.5-27B: ~150 MB each), so those get fewer.
SEQUENCES = 32
HYBRID_SEQUENCES = 8


@dataclass(frozen=True, slots=True)
class GgufSize:
    """What placement needs to know of a model, read from its GGUF header and files."""

    weights_bytes: int
    n_layers: int
    n_ctx_train: int | None
    kv_bytes_per_token: float  # per token of context, over the attention layers, at f16
    state_bytes_per_seq: int = 0  # hybrid models: the recurrent layers' state (f32)

    @property
    def n_seq(self) -> int:
        """The KV sequences the worker opens for this model."""
        return HYBRID_SEQUENCES if self.state_bytes_per_seq else SEQUENCES

    def kv_bytes(self, n_ctx: int, kv_type: str = "f16") -> int:
        return math.ceil(self.kv_bytes_per_token * n_ctx * KV_BYTES[kv_type] / KV_BYTES["f16"])

    def required_mb(self, n_ctx: int, kv_type: str = "f16") -> int:
        state = self.state_bytes_per_seq * self.n_seq
        total = (self.weights_bytes + self.kv_bytes(n_ctx, kv_type) + state) * HEADROOM
        return math.ceil(total / MB) + COMPUTE_MB


def gguf_size(first: Path) -> GgufSize:
    """Read the size facts from a GGUF file (and its split siblings' sizes)."""
    meta = read_metadata(first)
    return size_from_meta(meta, sum(p.stat().st_size for p in shard_paths(first)))


def size_from_meta(meta: Mapping[str, Any], weights_bytes: int) -> GgufSize:
    n_layers = int(arch_key(dict(meta), "block_count", 0) or 0)
    heads = int(arch_key(dict(meta), "attention.head_count", 0) or 0)
    kv_heads = _per_layer_max(arch_key(dict(meta), "attention.head_count_kv", heads))
    embd = int(arch_key(dict(meta), "embedding_length", 0) or 0)
    default_dim = embd // heads if heads else 0
    k_dim = int(arch_key(dict(meta), "attention.key_length", default_dim) or default_dim)
    v_dim = int(arch_key(dict(meta), "attention.value_length", default_dim) or default_dim)
    ctx = arch_key(dict(meta), "context_length")
    interval = int(arch_key(dict(meta), "full_attention_interval", 0) or 0)
    attn_layers = n_layers // interval if interval else n_layers
    per_token = attn_layers * kv_heads * (k_dim + v_dim) * KV_BYTES["f16"]
    return GgufSize(
        weights_bytes=weights_bytes,
        n_layers=n_layers,
        n_ctx_train=int(ctx) if isinstance(ctx, int) else None,
        kv_bytes_per_token=per_token,
        state_bytes_per_seq=(n_layers - attn_layers) * _recurrent_state_bytes(meta),
    )


def _recurrent_state_bytes(meta: Mapping[str, Any]) -> int:
    """One linear-attention layer's state per sequence, as llama.cpp keeps it (f32): the
    delta-rule matrix (v heads × k dim × v dim) and the conv window over q, k and v."""
    inner = int(arch_key(dict(meta), "ssm.inner_size", 0) or 0)
    d_k = int(arch_key(dict(meta), "ssm.state_size", 0) or 0)
    groups = int(arch_key(dict(meta), "ssm.group_count", 0) or 0)
    kernel = int(arch_key(dict(meta), "ssm.conv_kernel", 0) or 0)
    return 4 * (d_k * inner + max(0, kernel - 1) * (2 * groups * d_k + inner))


def _per_layer_max(v: Any) -> int:
    """head_count_kv may be one number or one per layer (hybrid models)."""
    if isinstance(v, list):
        return max((int(x) for x in v), default=0)
    return int(v or 0)


@dataclass(frozen=True, slots=True)
class Placement:
    """The worker's llama.cpp settings. `n_gpu_layers` -1 means all (and the output layer);
    `tensor_split` is per device in the order given, None for one device or the CPU."""

    n_ctx: int
    n_gpu_layers: int
    tensor_split: list[float] | None
    cpu_layers: int
    required_mb: int
    n_layers: int

    def describe(self) -> str:
        """The split in words, for ModelInfo and the log."""
        n_layers = self.n_layers
        if self.n_gpu_layers == 0:
            return f"{n_layers} layers on the CPU"
        on_gpu = n_layers if self.n_gpu_layers < 0 else self.n_gpu_layers
        gpus = "" if self.tensor_split is None else f" split {_fmt_split(self.tensor_split)}"
        cpu = f", {self.cpu_layers} on the CPU" if self.cpu_layers else ""
        return f"{on_gpu} of {n_layers} layers on the GPU(s){gpus}{cpu}"


def _fmt_split(split: Sequence[float]) -> str:
    return "/".join(f"{x:.2f}" for x in split)


def context_for(size: GgufSize, asked: int | None, free_mb: int | None, kv_type: str) -> int:
    """The catalogue's context if given, else the trained context capped by what fits next to
    the weights (at least 512 tokens)."""
    if asked:
        return asked
    ctx = size.n_ctx_train or 4096
    if free_mb is None or size.kv_bytes_per_token <= 0:
        return ctx
    room = free_mb - size.required_mb(0, kv_type)  # after weights, states, compute buffer
    per_token_mb = size.kv_bytes(1, kv_type) * HEADROOM / MB
    fits = int(room / per_token_mb) if room > 0 else 0
    return max(512, min(ctx, fits // 256 * 256))


def place(
    model: str,
    size: GgufSize,
    devices: Sequence[tuple[int, str, int | None]],
    *,
    n_ctx: int,
    kv_type: str = "f16",
    cpu_offload: bool = False,
    host_free_mb: int | None = None,
) -> Placement:
    """Decide the split for `devices` = [(index, kind, free_mb)]; raises the 507. Layers
    offloaded to the CPU must fit in `host_free_mb` (MemAvailable).

    Unknown free memory (None) is trusted to fit, as the torch pre-check does."""
    required = size.required_mb(n_ctx, kv_type)
    if not devices or devices[0][1] == "cpu":
        free = devices[0][2] if devices else None
        if free is not None and required > free:
            raise insufficient_memory(model, required, free, [d[0] for d in devices] or [0])
        return Placement(n_ctx, 0, None, 0, required, size.n_layers)
    frees = [d[2] for d in devices]
    if any(f is None for f in frees) or sum(f or 0 for f in frees) >= required:
        split = _proportional([f or 1 for f in frees]) if len(devices) > 1 else None
        return Placement(n_ctx, -1, split, 0, required, size.n_layers)
    total_free = sum(f or 0 for f in frees)
    if not cpu_offload:
        raise insufficient_memory(model, required, total_free, [d[0] for d in devices])
    per_layer = required / max(1, size.n_layers)
    held = [int((f or 0) / per_layer) for f in frees]
    on_gpu = min(size.n_layers, sum(held))
    cpu_layers = size.n_layers - on_gpu
    host_need = math.ceil(cpu_layers * per_layer)
    if host_free_mb is not None and host_need > host_free_mb:
        raise _no_host_room(model, required, total_free, cpu_layers, host_need, host_free_mb)
    split = _proportional(held) if len(devices) > 1 and on_gpu else None
    return Placement(n_ctx, on_gpu, split, cpu_layers, required, size.n_layers)


def _no_host_room(
    model: str, required: int, gpu_free: int, cpu_layers: int, need: int, host_free: int
) -> ApiError:
    return ApiError(
        507,
        "insufficient_memory",
        f"model '{model}' needs about {required} MB: {gpu_free} MB are free on the GPU(s) and "
        f"the {cpu_layers} layers offloaded to the CPU need about {need} MB of host memory, "
        f"but only {host_free} MB is available",
        extras={"required_mb": required, "free_mb": gpu_free + host_free},
    )


def _proportional(weights: Sequence[float]) -> list[float]:
    total = sum(weights)
    return [round(w / total, 4) for w in weights] if total else [1.0 / len(weights)] * len(weights)


def plan_gguf(model: str, first: Path, spec: ModelSpec, devices: Sequence[Any]) -> Placement:
    """The daemon's pre-check for a llamacpp load: `devices` are the chosen DeviceViews."""
    size = gguf_size(first)
    kv_type = spec.kv_cache_type or "f16"
    free = [(d.index, d.kind, d.free_mb) for d in devices]
    known = [f for _, _, f in free]
    total_free = None if not known or None in known else sum(f or 0 for f in known)
    n_ctx = context_for(size, spec.context, total_free, kv_type)
    offload = bool(spec.cpu_offload)
    return place(
        model,
        size,
        free,
        n_ctx=n_ctx,
        kv_type=kv_type,
        cpu_offload=offload,
        host_free_mb=mem_available_mb() if offload else None,
    )
