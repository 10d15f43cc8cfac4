"""The torch device a worker runs on: which one, its default dtype, its memory, its failures."""

from __future__ import annotations

import contextlib
import os

import torch

from helexa.neuron.engine.errors import LoadError
from helexa.neuron.engine.loader import LoadSpec
from helexa.neuron.memory import ProcessMemory, mem_available_mb
from helexa.wire import harness

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def default_quant(device: torch.device) -> str:
    """The daemon's rule (wire.harness), applied to the device this worker actually has."""
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return harness.default_quant("cuda", f"{major}.{minor}")
    return harness.default_quant(device.type, None)


def pick_device(spec: LoadSpec) -> torch.device:
    if spec.device == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise LoadError(
            500,
            "load_failed",
            f"loading '{spec.served_id}' failed: RuntimeError: CUDA is not available to this "
            f"worker (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')})",
        )
    return torch.device("cuda", 0)


def is_oom(exc: BaseException) -> bool:
    if isinstance(exc, torch.OutOfMemoryError | MemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and (
        "out of memory" in text or "can't allocate memory" in text
    )


def is_cuda_error(exc: BaseException) -> bool:
    """A device error that leaves the CUDA context unusable (unlike an out-of-memory)."""
    if is_oom(exc):
        return False
    name = type(exc).__name__
    text = str(exc)
    return name in ("AcceleratorError", "CudaError") or any(
        s in text for s in ("CUDA error", "CUBLAS_STATUS", "cuDNN error", "device-side assert")
    )


def free_mb(device: torch.device) -> int | None:
    """Memory a load could still get: free CUDA memory over the visible GPUs, or host memory."""
    if device.type != "cuda":
        return mem_available_mb()
    with contextlib.suppress(Exception):
        torch.cuda.empty_cache()
    try:
        free = sum(torch.cuda.mem_get_info(i)[0] for i in range(torch.cuda.device_count()))
    except Exception:
        return None
    return free // (1024 * 1024)


class MemoryProbe:
    """What this process holds (memory.ProcessMemory), else torch's reserved bytes on CUDA."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._process = ProcessMemory(cuda=device.type == "cuda")

    def used_mb(self) -> int | None:
        used = self._process.used_mb()
        if used is not None or self.device.type != "cuda":
            return used
        total = sum(torch.cuda.memory_reserved(i) for i in range(torch.cuda.device_count()))
        return max(1, total // (1024 * 1024))
