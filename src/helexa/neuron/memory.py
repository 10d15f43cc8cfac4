"""Host memory probes shared by the daemon and its workers (Linux /proc; None elsewhere)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def rss_mb(pid: int | None = None) -> int | None:
    """Resident memory of a process (this one by default) in MB, or None when it is gone."""
    try:
        with open(f"/proc/{pid if pid is not None else 'self'}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def mem_available_mb(path: Path = Path("/proc/meminfo")) -> int | None:
    """MemAvailable in MB: what a new allocation can get without swapping."""
    try:
        for line in path.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


class ProcessMemory:
    """What this process holds: on CUDA, NVML's per-process memory summed over every GPU (None
    when NVML can't say); else RSS. Keeps NVML initialised between calls. Torch-free, so the
    llamacpp worker measures itself the same way the torch one does."""

    def __init__(self, *, cuda: bool) -> None:
        self.cuda = cuda
        self._nvml: Any = None
        self._handles: list[Any] | None = None

    def used_mb(self) -> int | None:
        if not self.cuda:
            return rss_mb()
        try:
            if self._handles is None:
                import pynvml

                pynvml.nvmlInit()
                self._nvml = pynvml
                n = pynvml.nvmlDeviceGetCount()
                self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(n)]
            pid = os.getpid()
            used = [
                int(p.usedGpuMemory)
                for h in self._handles
                for p in self._nvml.nvmlDeviceGetComputeRunningProcesses(h)
                if p.pid == pid and p.usedGpuMemory
            ]
            return max(1, sum(used) // (1024 * 1024)) if used else None
        except Exception:
            self._handles = []
            return None
