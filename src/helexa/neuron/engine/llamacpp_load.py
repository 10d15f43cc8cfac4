"""Loading a GGUF model for the llamacpp harness: the registry's entry point (`load`)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from helexa.neuron.engine.errors import LoadError, load_failed
from helexa.neuron.engine.frames import Progress
from helexa.neuron.engine.harnesses import OnProgress
from helexa.neuron.engine.llamacpp_engine import LlamaCppEngine
from helexa.neuron.engine.llamacpp_model import Context, ContextConfig, GgufModel, Placement
from helexa.neuron.engine.loader import LoadSpec
from helexa.neuron.gguf_placement import HYBRID_SEQUENCES, SEQUENCES

# Without a context from the catalogue, the trained context is capped here (KV memory).
DEFAULT_CTX_CAP = 8192


def load(spec: LoadSpec, progress: OnProgress | None = None) -> LlamaCppEngine:
    """Load per the spec; every failure is a LoadError with its status and code."""
    t0 = time.monotonic()
    emit = progress or (lambda _f: None)
    files = [Path(f) for f in spec.gguf_files]
    total = sum(f.stat().st_size for f in files)
    emit(Progress("load", 0, total))
    try:
        model = GgufModel(files[0], placement(spec))
        n_ctx = spec.n_ctx or min(model.n_ctx_train or DEFAULT_CTX_CAP, DEFAULT_CTX_CAP)
        threads = spec.n_threads or len(os.sched_getaffinity(0))
        n_seq = HYBRID_SEQUENCES if model.recurrent else SEQUENCES  # as the estimate counts
        ctx = Context(
            model,
            ContextConfig(n_ctx, n_seq=n_seq, threads=threads, kv_type=spec.kv_cache_type),
        )
        eng = LlamaCppEngine(spec, model, ctx, n_seq=n_seq)
        emit(Progress("load", total, total))
        emit(Progress("warmup"))
        eng.warmup()
    except LoadError:
        raise
    except Exception as e:
        raise load_failed(spec.served_id, e) from e
    eng.load_secs = round(time.monotonic() - t0, 3)
    return eng


def placement(spec: LoadSpec) -> Placement:
    """All layers on the GPUs on CUDA unless the spec says how many; none on the CPU."""
    if spec.device != "cuda":
        return Placement(0)
    layers = -1 if spec.n_gpu_layers is None else spec.n_gpu_layers
    return Placement(layers, tuple(spec.tensor_split or ()))
