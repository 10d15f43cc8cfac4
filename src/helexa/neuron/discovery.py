"""Hardware and host facts and per-device health.

GPU facts come from gpus.py (NVML, falling back to `nvidia-smi` CSV); with neither, or
with every GPU hidden by `CUDA_VISIBLE_DEVICES`, the host serves on one `cpu` device sized by
`cpu_memory_mb`. `cuda_unavailable_reason` is set only when an NVIDIA stack is there but broken
(e.g. a driver/library version mismatch after a driver update without a reboot); a host without
NVIDIA is not an error.

Device `index` is the index inside the neuron's visible set, in PCI bus order (what
`nvidia-smi` shows). Workers get their devices by UUID (`worker_cuda_env`), so CUDA's own
enumeration order never matters. Calls are blocking (nvidia-smi is a subprocess): run them
through `asyncio.to_thread`.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import platform
import socket
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import Field

from helexa.config.neuron import NeuronConfig, physical_memory_mb
from helexa.neuron.engine import harnesses
from helexa.neuron.gpus import (
    Gpu,
    GpuScan,
    SmiRunner,
    default_smi_runner,
    load_pynvml,
    nvml_failure_reason,
    nvml_fill,
    nvml_scan,
    smi_query,
    smi_scan,
    visible_gpus,
)
from helexa.neuron.memory import mem_available_mb
from helexa.wire.neuron import Device, DeviceHealth, Discovery

log = logging.getLogger("helexa.neuron.discovery")


class NeuronDiscovery(Discovery):
    """`/discovery` plus what the daemon needs and never serialises: for each device index,
    the `CUDA_VISIBLE_DEVICES` entry that names it (a UUID, else the PCI-order index)."""

    cuda_visible: list[str] = Field(default_factory=list, exclude=True)
    gpu_source: str | None = Field(default=None, exclude=True)  # "nvml" | "nvidia-smi" | None


# ---- host facts ---------------------------------------------------------------------------------


def os_pretty_name(path: Path = Path("/etc/os-release")) -> str:
    try:
        for line in path.read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip().strip("\"'")
    except OSError:
        pass
    return platform.system()


def available_harnesses(
    cfg: NeuronConfig, has_module: Callable[[str], bool] | None = None
) -> list[str]:
    """The registered harnesses whose modules are installed (found, never imported here),
    filtered by `[[harnesses]]`."""
    found = has_module or (lambda name: importlib.util.find_spec(name) is not None)
    usable = harnesses.usable(found)
    enabled = cfg.enabled_harnesses()
    return [h for h in usable if enabled is None or h in enabled]


def cpu_device(cfg: NeuronConfig) -> Device:
    return Device(index=0, kind="cpu", name="cpu", vram_total_mb=cfg.cpu_memory_mb)


class DeviceProbe:
    """Discovery and health for one neuron; keeps NVML initialised between calls."""

    def __init__(
        self,
        cfg: NeuronConfig,
        *,
        nvml: Any = None,
        smi_runner: SmiRunner | None = None,
        environ: Mapping[str, str] | None = None,
        os_release: Path = Path("/etc/os-release"),
        meminfo: Path = Path("/proc/meminfo"),
        has_module: Callable[[str], bool] | None = None,
    ) -> None:
        self.cfg = cfg
        self.nvml = nvml if nvml is not None else load_pynvml()
        self.smi = smi_runner or default_smi_runner
        self.environ = os.environ if environ is None else environ
        self.os_release = os_release
        self.meminfo = meminfo
        self.has_module = has_module
        self.lock = threading.Lock()
        self.gpus: list[Gpu] = []  # visible, in device-index order
        self.source: str | None = None
        self.last: NeuronDiscovery | None = None
        self.nvml_ready = False
        self._said: set[str] = set()

    def _say(self, level: int, message: str) -> None:
        """Log a discovery finding at `level` once; it repeats on every discovery (every poll
        on a CPU host), so later repeats go to debug."""
        log.log(logging.DEBUG if message in self._said else level, "%s", message)
        self._said.add(message)

    def scan(self) -> GpuScan:
        nvml_reason: str | None = None
        if self.nvml is not None:
            try:
                scan = nvml_scan(self.nvml, init=not self.nvml_ready)
                self.nvml_ready = True
                return scan
            except Exception as e:
                nvml_reason = nvml_failure_reason(e)
                self._say(
                    logging.INFO, f"NVML unavailable ({type(e).__name__}: {e}); trying nvidia-smi"
                )
        scan = smi_scan(self.smi)
        if not scan.gpus and scan.reason is None:
            scan.reason = nvml_reason
        return scan

    def discover(self) -> NeuronDiscovery:
        with self.lock:
            scan = self.scan()
            self.gpus = visible_gpus(scan.gpus, self.environ.get("CUDA_VISIBLE_DEVICES"))
            self.source = scan.source if self.gpus else None
            if scan.reason:
                self._say(logging.WARNING, f"CUDA unavailable: {scan.reason}")
            if self.gpus:
                devices = [
                    Device(
                        index=i,
                        kind="cuda",
                        name=g.name,
                        vram_total_mb=g.total_mb,
                        compute_capability=g.compute_capability,
                    )
                    for i, g in enumerate(self.gpus)
                ]
                visible = [g.uuid or str(g.index) for g in self.gpus]
            else:
                devices, visible = [cpu_device(self.cfg)], []
            self.last = NeuronDiscovery(
                hostname=socket.gethostname(),
                os=os_pretty_name(self.os_release),
                kernel=platform.release(),
                cpu_count=os.cpu_count(),
                memory_total_mb=physical_memory_mb(),
                cuda_version=scan.cuda_version,
                driver_version=scan.driver_version,
                devices=devices,
                harnesses=available_harnesses(self.cfg, self.has_module),
                max_prompt_tokens=self.cfg.max_prompt_tokens,
                max_output_tokens=self.cfg.max_output_tokens,
                cuda_unavailable_reason=scan.reason if not self.gpus else None,
                cuda_visible=visible,
                gpu_source=self.source,
            )
            return self.last

    def health(self, cpu_used_mb: int = 0) -> list[DeviceHealth]:
        """Live per-device numbers for /health. `cpu_used_mb` is the summed RSS of the workers
        (the CPU device's "VRAM"); GPU numbers are measured (NVML, else nvidia-smi)."""
        if self.last is None:
            self.discover()
        with self.lock:
            if not self.gpus:
                total = self.cfg.cpu_memory_mb
                free = total - cpu_used_mb
                avail = mem_available_mb(self.meminfo)
                if avail is not None:
                    free = min(free, avail)
                return [
                    DeviceHealth(
                        index=0,
                        kind="cpu",
                        name="cpu",
                        vram_total_mb=total,
                        vram_used_mb=cpu_used_mb,
                        vram_free_mb=max(0, free),
                    )
                ]
            self._refresh()
            return [
                DeviceHealth(
                    index=i,
                    kind="cuda",
                    name=g.name,
                    vram_total_mb=g.total_mb,
                    vram_used_mb=g.used_mb,
                    vram_free_mb=g.free_mb,
                    utilization_pct=g.utilization_pct,
                    temperature_c=g.temperature_c,
                )
                for i, g in enumerate(self.gpus)
            ]

    def _refresh(self) -> None:
        if self.source == "nvml":
            for g in self.gpus:
                try:
                    if g.uuid:
                        h = self.nvml.nvmlDeviceGetHandleByUUID(g.uuid)
                    else:
                        h = self.nvml.nvmlDeviceGetHandleByIndex(g.index)
                except Exception:
                    g.used_mb = g.free_mb = g.utilization_pct = g.temperature_c = None
                    continue
                nvml_fill(self.nvml, h, g)
            return
        gpus, _, _ = smi_query(self.smi)
        fresh = {g.uuid or str(g.index): g for g in gpus}
        for g in self.gpus:
            f = fresh.get(g.uuid or str(g.index))
            g.used_mb = f.used_mb if f else None
            g.free_mb = f.free_mb if f else None
            g.utilization_pct = f.utilization_pct if f else None
            g.temperature_c = f.temperature_c if f else None

    def close(self) -> None:
        if self.nvml_ready:
            self.nvml_ready = False
            try:
                self.nvml.nvmlShutdown()
            except Exception:
                pass


def discover(
    cfg: NeuronConfig,
    nvml: Any = None,
    smi_runner: SmiRunner | None = None,
    **kwargs: Any,
) -> NeuronDiscovery:
    """One-shot discovery (the `neuron discover` CLI); the daemon keeps a DeviceProbe."""
    probe = DeviceProbe(cfg, nvml=nvml, smi_runner=smi_runner, **kwargs)
    try:
        return probe.discover()
    finally:
        probe.close()


def worker_cuda_env(disc: NeuronDiscovery, devices: Sequence[int]) -> dict[str, str]:
    """Environment for a worker that owns `devices` (neuron indices): CUDA sees exactly those,
    numbered 0.. in the given order. On a CPU host, CUDA sees nothing."""
    if not disc.cuda_visible:
        return {"CUDA_VISIBLE_DEVICES": ""}
    return {
        "CUDA_VISIBLE_DEVICES": ",".join(disc.cuda_visible[i] for i in devices),
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
    }
