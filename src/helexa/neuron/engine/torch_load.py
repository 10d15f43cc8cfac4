"""Loading a model for the torch harness: the registry's entry point (`load`)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import torch

from helexa.neuron.engine.cpu_linear import pack_linears
from helexa.neuron.engine.errors import LoadError, load_failed
from helexa.neuron.engine.frames import Progress
from helexa.neuron.engine.harnesses import OnProgress
from helexa.neuron.engine.load_progress import LoadMeter
from helexa.neuron.engine.loader import LoadSpec, ModelDir, Pooling
from helexa.neuron.engine.tokens import WorkerTokenizer
from helexa.neuron.engine.torch_device import DTYPES, default_quant, free_mb, is_oom, pick_device
from helexa.neuron.engine.torch_engine import TorchEngine
from helexa.neuron.memory import rss_mb

log = logging.getLogger("helexa.neuron.engine")

_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8, "int8": 1}


def load(spec: LoadSpec, progress: OnProgress | None = None) -> TorchEngine:
    """Load per the spec; every failure is a LoadError with its status and code."""
    t0 = time.monotonic()
    emit = progress or (lambda _f: None)
    md = ModelDir(spec.path)
    if spec.n_threads:  # the daemon's share of the cores for this worker
        torch.set_num_threads(spec.n_threads)
    device = pick_device(spec)
    quant = spec.quant or default_quant(device)
    total = md.weight_bytes()
    emit(Progress("load", 0, total))
    try:
        with LoadMeter(emit, _bytes_in_use(device), total):
            tok = WorkerTokenizer(md.path)
            model, embedding_only = _load_model(md, DTYPES[quant], device)
        eng = TorchEngine(
            spec,
            model,
            tok,
            md,
            device=device,
            quant=quant,
            embedding_only=embedding_only,
            pooling=md.sentence_pooling() or Pooling(),
        )
        emit(Progress("load", total, total))
        emit(Progress("warmup"))
        eng.warmup()
        if device.type == "cpu" and not eng.compiled:
            pack_linears(model)
    except LoadError:
        raise
    except Exception as e:
        if is_oom(e):
            raise _insufficient(spec, md, quant, device) from e
        raise load_failed(spec.served_id, e) from e
    eng.load_secs = round(time.monotonic() - t0, 3)
    return eng


def _load_model(md: ModelDir, dtype: torch.dtype, device: torch.device) -> tuple[Any, bool]:
    """(model, embedding_only). A sentence-transformers directory, or a config with no causal-LM
    class (an encoder), loads as a bare AutoModel for embeddings only."""
    import transformers
    from transformers import AutoModel, AutoModelForCausalLM

    transformers.utils.logging.disable_progress_bar()
    kwargs: dict[str, Any] = {"dtype": dtype}
    if device.type == "cuda":
        multi = torch.cuda.device_count() > 1
        if multi and _has_accelerate():
            kwargs["device_map"] = "auto"
        else:
            if multi:
                log.warning("several GPUs visible but accelerate is missing; using cuda:0 only")
            kwargs["device_map"] = {"": 0}
    path = str(md.path)
    if md.sentence_pooling() is not None:
        return AutoModel.from_pretrained(path, **kwargs).eval(), True
    try:
        return AutoModelForCausalLM.from_pretrained(path, **kwargs).eval(), False
    except ValueError as e:
        if "Unrecognized configuration class" not in str(e):
            raise
    return AutoModel.from_pretrained(path, **kwargs).eval(), True


def _bytes_in_use(device: torch.device) -> Callable[[], int]:
    """What the weights occupy so far: allocated device memory, or this process's RSS."""
    if device.type == "cuda":
        return lambda: sum(torch.cuda.memory_allocated(i) for i in range(torch.cuda.device_count()))
    return lambda: (rss_mb() or 0) * 2**20


def _has_accelerate() -> bool:
    try:
        import accelerate  # noqa: F401
    except ImportError:
        return False
    return True


def _insufficient(spec: LoadSpec, md: ModelDir, quant: str, device: torch.device) -> LoadError:
    """507 for an out-of-memory while loading, with what it needs and what is free."""
    stored = md.config.get("torch_dtype") or md.config.get("dtype") or "bfloat16"
    ratio = _DTYPE_BYTES[str(DTYPES[quant]).removeprefix("torch.")] / _DTYPE_BYTES.get(
        str(stored), 2
    )
    required = int(md.weight_bytes() * ratio * 1.1) // (1024 * 1024)
    free = free_mb(device)
    devices = ",".join(str(d) for d in spec.devices)
    return LoadError(
        507,
        "insufficient_memory",
        f"model '{spec.served_id}' needs about {required} MB but only {free} MB is free "
        f"on device(s) {devices}",
        {"required_mb": required, "free_mb": free},
    )
