"""Hardware and host facts and per-device health.

GPU facts come from NVML (nvidia-ml-py), falling back to `nvidia-smi` CSV; with neither, or
with every GPU hidden by `CUDA_VISIBLE_DEVICES`, the host serves on one `cpu` device sized by
`cpu_memory_mb`. `cuda_unavailable_reason` is set only when an NVIDIA stack is there but broken
(e.g. a driver/library version mismatch after a driver update without a reboot); a host without
NVIDIA is not an error.

Device `index` is the index inside the neuron's visible set, in PCI bus order (what
`nvidia-smi` shows). Workers get their devices by UUID (`worker_cuda_env`), so CUDA's own
enumeration order never matters. Both NVML and nvidia-smi are injectable for tests. Calls are
blocking (nvidia-smi is a subprocess): run them through `asyncio.to_thread`.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import logging
import os
import platform
import re
import socket
import subprocess
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field

from helexa.config.neuron import NeuronConfig, physical_memory_mb
from helexa.neuron.engine import harnesses
from helexa.neuron.memory import mem_available_mb
from helexa.wire.neuron import Device, DeviceHealth, Discovery

log = logging.getLogger("helexa.neuron.discovery")

MISMATCH = "Driver/library version mismatch"
SMI_FIELDS = [
    "index",
    "uuid",
    "name",
    "memory.total",
    "memory.used",
    "memory.free",
    "utilization.gpu",
    "temperature.gpu",
    "driver_version",
    "compute_cap",
]
# NVML init errors that mean "no NVIDIA here" rather than "NVIDIA here but broken".
_NVML_ABSENT = {"NVMLError_LibraryNotFound", "NVMLError_DriverNotLoaded", "NVMLError_NotFound"}
_SMI_ABSENT = ("couldn't communicate with the nvidia driver", "no devices were found")

SmiRunner = Callable[[Sequence[str]], "tuple[int, str] | None"]
"""`runner(args)` runs `nvidia-smi *args` → (exit code, stdout+stderr), or None if not found."""


class NeuronDiscovery(Discovery):
    """`/discovery` plus what the daemon needs and never serialises: for each device index,
    the `CUDA_VISIBLE_DEVICES` entry that names it (a UUID, else the PCI-order index)."""

    cuda_visible: list[str] = Field(default_factory=list, exclude=True)
    gpu_source: str | None = Field(default=None, exclude=True)  # "nvml" | "nvidia-smi" | None


@dataclass(slots=True)
class Gpu:
    """One physical GPU as NVML / nvidia-smi report it (index = PCI bus order)."""

    index: int
    uuid: str | None
    name: str
    total_mb: int
    used_mb: int | None = None
    free_mb: int | None = None
    utilization_pct: int | None = None
    temperature_c: int | None = None
    compute_capability: str | None = None


@dataclass(slots=True)
class GpuScan:
    gpus: list[Gpu]
    driver_version: str | None = None
    cuda_version: str | None = None
    reason: str | None = None  # cuda_unavailable_reason
    source: str | None = None


def default_smi_runner(args: Sequence[str]) -> tuple[int, str] | None:
    try:
        p = subprocess.run(
            ["nvidia-smi", *args], capture_output=True, text=True, timeout=15, check=False
        )
    except FileNotFoundError:
        return None
    except subprocess.TimeoutExpired:
        return 124, "nvidia-smi timed out"
    except OSError as e:
        return 126, f"nvidia-smi could not run: {e}"
    return p.returncode, (p.stdout or "") + (p.stderr or "")


def _error_names(e: BaseException) -> set[str]:
    return {c.__name__ for c in type(e).__mro__}


def _text(v: Any) -> str:
    return v.decode(errors="replace") if isinstance(v, bytes) else str(v)


def _int_or_none(v: str) -> int | None:
    v = v.strip()
    try:
        return int(float(v))
    except ValueError:
        return None  # "[N/A]", "[Not Supported]", ...


def cuda_version_str(v: int) -> str:
    """NVML's 12080 → "12.8"."""
    return f"{v // 1000}.{(v % 1000) // 10}"


# ---- NVML ---------------------------------------------------------------------------------------


def _load_pynvml() -> Any:
    try:
        import pynvml
    except ImportError:
        return None
    return pynvml


def nvml_scan(nvml: Any, *, init: bool = True) -> GpuScan:
    """Every GPU through NVML; raises the NVML error if NVML cannot start."""
    if init:
        nvml.nvmlInit()
    driver = cuda = None
    try:
        driver = _text(nvml.nvmlSystemGetDriverVersion())
    except Exception as e:
        log.debug("NVML driver version: %s", e)
    try:
        cuda = cuda_version_str(int(nvml.nvmlSystemGetCudaDriverVersion()))
    except Exception as e:
        log.debug("NVML CUDA version: %s", e)
    gpus = []
    for i in range(int(nvml.nvmlDeviceGetCount())):
        h = nvml.nvmlDeviceGetHandleByIndex(i)
        try:
            uuid: str | None = _text(nvml.nvmlDeviceGetUUID(h))
        except Exception:
            uuid = None
        try:
            major, minor = nvml.nvmlDeviceGetCudaComputeCapability(h)
            cc: str | None = f"{major}.{minor}"
        except Exception:
            cc = None
        mem = nvml.nvmlDeviceGetMemoryInfo(h)
        gpu = Gpu(
            index=i,
            uuid=uuid,
            name=_text(nvml.nvmlDeviceGetName(h)),
            total_mb=int(mem.total) // 2**20,
            compute_capability=cc,
        )
        _nvml_fill(nvml, h, gpu, mem)
        gpus.append(gpu)
    return GpuScan(gpus, driver, cuda, source="nvml")


def _nvml_fill(nvml: Any, handle: Any, gpu: Gpu, mem: Any = None) -> None:
    """Live numbers; each one that NVML can't give stays None."""
    try:
        mem = mem or nvml.nvmlDeviceGetMemoryInfo(handle)
        gpu.used_mb = int(mem.used) // 2**20
        gpu.free_mb = int(mem.free) // 2**20
    except Exception:
        gpu.used_mb = gpu.free_mb = None
    try:
        gpu.utilization_pct = int(nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
    except Exception:
        gpu.utilization_pct = None
    try:
        sensor = getattr(nvml, "NVML_TEMPERATURE_GPU", 0)
        gpu.temperature_c = int(nvml.nvmlDeviceGetTemperature(handle, sensor))
    except Exception:
        gpu.temperature_c = None


def _nvml_reason(e: BaseException) -> str | None:
    names = _error_names(e)
    if names & _NVML_ABSENT:
        return None
    if "NVMLError_LibRmVersionMismatch" in names or "mismatch" in str(e).lower():
        return MISMATCH
    return f"NVML: {e}"


# ---- nvidia-smi ---------------------------------------------------------------------------------


def parse_smi_csv(text: str, fields: Sequence[str] = SMI_FIELDS) -> list[Gpu]:
    """`nvidia-smi --query-gpu=<fields> --format=csv,noheader,nounits` output → GPUs."""
    gpus = []
    for row in csv.reader(io.StringIO(text), skipinitialspace=True):
        if not row or not row[0].strip():
            continue
        rec = dict(zip(fields, (c.strip() for c in row), strict=False))
        index = _int_or_none(rec.get("index", ""))
        if index is None:
            continue
        cc = rec.get("compute_cap")
        gpus.append(
            Gpu(
                index=index,
                uuid=rec.get("uuid") or None,
                name=rec.get("name", ""),
                total_mb=_int_or_none(rec.get("memory.total", "")) or 0,
                used_mb=_int_or_none(rec.get("memory.used", "")),
                free_mb=_int_or_none(rec.get("memory.free", "")),
                utilization_pct=_int_or_none(rec.get("utilization.gpu", "")),
                temperature_c=_int_or_none(rec.get("temperature.gpu", "")),
                compute_capability=cc if cc and re.fullmatch(r"\d+\.\d+", cc) else None,
            )
        )
    return gpus


def _smi_query(runner: SmiRunner) -> tuple[list[Gpu], str | None, tuple[int, str] | None]:
    """(gpus, driver version, the failing result if any); older drivers lack `compute_cap`."""
    fields = list(SMI_FIELDS)
    for _ in range(2):
        res = runner([f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits"])
        if res is None:
            return [], None, None
        rc, out = res
        if rc == 0:
            gpus = parse_smi_csv(out, fields)
            driver = None
            if "driver_version" in fields:
                for row in csv.reader(io.StringIO(out), skipinitialspace=True):
                    if len(row) > fields.index("driver_version"):
                        driver = row[fields.index("driver_version")].strip() or None
                        break
            return gpus, driver, None
        if "compute_cap" in fields and "compute_cap" in out:
            fields.remove("compute_cap")
            continue
        return [], None, res
    return [], None, (1, "nvidia-smi query failed")


def _smi_reason(out: str) -> str | None:
    low = out.lower()
    if "version mismatch" in low:
        return MISMATCH
    if any(s in low for s in _SMI_ABSENT):
        return None
    first = next((ln.strip() for ln in out.splitlines() if ln.strip()), "nvidia-smi failed")
    return f"nvidia-smi: {first[:200]}"


def smi_scan(runner: SmiRunner) -> GpuScan:
    gpus, driver, failed = _smi_query(runner)
    if failed is not None:
        return GpuScan([], reason=_smi_reason(failed[1]), source=None)
    if not gpus:
        return GpuScan([], source=None)
    cuda = None
    res = runner([])
    if res is not None and res[0] == 0:
        m = re.search(r"CUDA Version:\s*([\d.]+)", res[1])
        cuda = m.group(1) if m else None
    return GpuScan(gpus, driver, cuda, source="nvidia-smi")


# ---- CUDA_VISIBLE_DEVICES -----------------------------------------------------------------------


def visible_gpus(gpus: Sequence[Gpu], cuda_visible_devices: str | None) -> list[Gpu]:
    """The GPUs CUDA would expose, in the order it would number them.

    Entries are PCI-order indices or (unique prefixes of) `GPU-` UUIDs. As CUDA does, parsing
    stops at the first entry that is invalid, unknown or repeated; unset means all, empty
    means none. MIG entries are not supported and stop the list.
    """
    if cuda_visible_devices is None:
        return list(gpus)
    out: list[Gpu] = []
    for raw in cuda_visible_devices.split(","):
        tok = raw.strip()
        match: Gpu | None = None
        if re.fullmatch(r"\d+", tok):
            match = next((g for g in gpus if g.index == int(tok)), None)
        elif tok.startswith("GPU-"):
            hits = [g for g in gpus if g.uuid and g.uuid.startswith(tok)]
            match = hits[0] if len(hits) == 1 else None
        if match is None or match in out:
            break
        out.append(match)
    return out


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
        self.nvml = nvml if nvml is not None else _load_pynvml()
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
                nvml_reason = _nvml_reason(e)
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
                _nvml_fill(self.nvml, h, g)
            return
        gpus, _, _ = _smi_query(self.smi)
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
