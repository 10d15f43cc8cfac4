"""What GPUs this host has: NVML (nvidia-ml-py) first, `nvidia-smi` CSV as the fallback,
and which of them `CUDA_VISIBLE_DEVICES` exposes. Both NVML and nvidia-smi are injectable
for tests; calls are blocking (nvidia-smi is a subprocess). discovery.py turns a scan into
the neuron's devices."""

from __future__ import annotations

import csv
import io
import logging
import re
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("helexa.neuron.gpus")

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


def load_pynvml() -> Any:
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
        nvml_fill(nvml, h, gpu, mem)
        gpus.append(gpu)
    return GpuScan(gpus, driver, cuda, source="nvml")


def nvml_fill(nvml: Any, handle: Any, gpu: Gpu, mem: Any = None) -> None:
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


def nvml_failure_reason(e: BaseException) -> str | None:
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


def smi_query(runner: SmiRunner) -> tuple[list[Gpu], str | None, tuple[int, str] | None]:
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
    gpus, driver, failed = smi_query(runner)
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
