"""Discovery and device health from a fake NVML and nvidia-smi fixtures."""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pynvml
import pytest

from helexa.config.neuron import NeuronConfig
from helexa.neuron import discovery as disc_mod
from helexa.neuron.discovery import DeviceProbe, discover, worker_cuda_env
from helexa.neuron.gpus import MISMATCH, parse_smi_csv
from helexa.wire.neuron import Discovery

DATA = Path(__file__).parent / "data"
CFG = NeuronConfig(cpu_memory_mb=4096, max_prompt_tokens=1000, max_output_tokens=200)


def data(name: str) -> str:
    return (DATA / name).read_text()


class FakeNvml:
    """The slice of pynvml the probe uses, over a list of GPU dicts."""

    NVML_TEMPERATURE_GPU = 0

    def __init__(self, gpus: list[dict[str, Any]], init_error: Exception | None = None) -> None:
        self.gpus = gpus
        self.init_error = init_error
        self.inits = self.shutdowns = 0

    def nvmlInit(self) -> None:
        if self.init_error is not None:
            raise self.init_error
        self.inits += 1

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlSystemGetDriverVersion(self) -> str:
        return "570.86.16"

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        return 12080

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, i: int) -> dict[str, Any]:
        return self.gpus[i]

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> dict[str, Any]:
        for g in self.gpus:
            if g["uuid"] == uuid:
                return g
        raise pynvml.NVMLError_NotFound()

    def nvmlDeviceGetUUID(self, h: dict[str, Any]) -> str:
        return str(h["uuid"])

    def nvmlDeviceGetName(self, h: dict[str, Any]) -> bytes:
        return str(h["name"]).encode()  # old nvidia-ml-py returns bytes

    def nvmlDeviceGetCudaComputeCapability(self, h: dict[str, Any]) -> tuple[int, int]:
        return h["cc"]

    def nvmlDeviceGetMemoryInfo(self, h: dict[str, Any]) -> Any:
        if h.get("lost"):
            raise pynvml.NVMLError_GpuIsLost()
        mib = 2**20
        return SimpleNamespace(
            total=h["total"] * mib, used=h["used"] * mib, free=(h["total"] - h["used"]) * mib
        )

    def nvmlDeviceGetUtilizationRates(self, h: dict[str, Any]) -> Any:
        if h.get("util") is None:
            raise pynvml.NVMLError_NotSupported()
        return SimpleNamespace(gpu=h["util"], memory=0)

    def nvmlDeviceGetTemperature(self, h: dict[str, Any], sensor: int) -> int:
        assert sensor == 0
        return int(h["temp"])


def gpu(i: int, name: str, total: int, cc: tuple[int, int], **kw: Any) -> dict[str, Any]:
    return {
        "uuid": f"GPU-{i}{i}{i}{i}-uuid",
        "name": name,
        "total": total,
        "used": 100,
        "cc": cc,
        "util": 5,
        "temp": 40 + i,
        **kw,
    }


MIXED = [
    gpu(0, "NVIDIA GeForce RTX 4090", 24564, (8, 9)),
    gpu(1, "NVIDIA GeForce RTX 3060", 12288, (8, 6)),
    gpu(2, "Tesla T4", 15360, (7, 5)),
    gpu(3, "Tesla P40", 23040, (6, 1), util=None),
]


class Smi:
    """An nvidia-smi stand-in: answers by the first argument; records the calls."""

    def __init__(self, query: tuple[int, str] | None, header: str | None = None) -> None:
        self.query = query
        self.header = header if header is not None else data("smi_header.txt")
        self.calls: list[list[str]] = []
        self.no_compute_cap = False

    def __call__(self, args: Sequence[str]) -> tuple[int, str] | None:
        self.calls.append(list(args))
        if self.query is None:
            return None
        if not args:
            return 0, self.header
        if self.no_compute_cap and "compute_cap" in args[0]:
            return 2, data("smi_no_compute_cap.txt")
        return self.query


def probe(nvml: Any = None, smi: Any = None, env: dict[str, str] | None = None, **kw: Any) -> Any:
    return DeviceProbe(
        kw.pop("cfg", CFG),
        nvml=nvml if nvml is not None else FakeNvml([], pynvml.NVMLError_LibraryNotFound()),
        smi_runner=smi or Smi(None),
        environ=env or {},
        os_release=DATA / "os-release",
        meminfo=DATA / "meminfo",
        **kw,
    )


# ---- discovery ---------------------------------------------------------------------------------


def test_nvml_one_gpu() -> None:
    nvml = FakeNvml([gpu(0, "NVIDIA GeForce RTX 4090", 24564, (8, 9))])
    d = discover(CFG, nvml=nvml, smi_runner=Smi(None), environ={}, os_release=DATA / "os-release")
    assert nvml.inits == nvml.shutdowns == 1
    body = d.model_dump()
    assert body["devices"] == [
        {
            "index": 0,
            "kind": "cuda",
            "name": "NVIDIA GeForce RTX 4090",
            "vram_total_mb": 24564,
            "compute_capability": "8.9",
        }
    ]
    assert (body["cuda_version"], body["driver_version"]) == ("12.8", "570.86.16")
    assert body["os"] == "Fedora Linux 43 (Workstation Edition)"
    assert (body["max_prompt_tokens"], body["max_output_tokens"]) == (1000, 200)
    assert body["hostname"] and body["kernel"] and body["cpu_count"] >= 1
    assert body["memory_total_mb"] > 0
    assert d.cuda_unavailable_reason is None
    assert "cuda_visible" not in body and "gpu_source" not in body
    assert d.cuda_visible == ["GPU-0000-uuid"] and d.gpu_source == "nvml"
    assert Discovery.model_validate(body).devices[0].vram_total_mb == 24564


def test_harnesses() -> None:
    everything = probe(has_module=lambda n: True).discover().harnesses
    assert everything == ["torch", "llamacpp"]
    assert probe(has_module=lambda n: n != "llama_cpp").discover().harnesses == ["torch"]
    # A GGUF-only host: llama.cpp needs no torch.
    assert probe(has_module=lambda n: n != "torch").discover().harnesses == ["llamacpp"]
    assert probe(has_module=lambda n: n not in ("torch", "llama_cpp")).discover().harnesses == []
    only_llama = NeuronConfig.model_validate({"harnesses": [{"name": "llamacpp"}]})
    assert probe(cfg=only_llama, has_module=lambda n: True).discover().harnesses == ["llamacpp"]
    assert probe(cfg=only_llama, has_module=lambda n: n != "llama_cpp").discover().harnesses == []
    candle = NeuronConfig.model_validate({"harnesses": [{"name": "candle"}]})
    assert probe(cfg=candle, has_module=lambda n: True).discover().harnesses == ["torch"]


def test_harness_detection_never_imports() -> None:
    # In this venv torch is installed: found by find_spec, not imported by discovery; so is
    # llama_cpp where the llamacpp extra is installed.
    llama = importlib.util.find_spec("llama_cpp") is not None
    assert probe().discover().harnesses == (["torch", "llamacpp"] if llama else ["torch"])


@pytest.mark.parametrize(
    ("cvd", "want"),
    [
        (None, [0, 1, 2, 3]),
        ("2,0", [2, 0]),
        (" 3 , 1 ", [3, 1]),
        ("GPU-2222-uuid,GPU-0", [2, 0]),
        ("0,7,1", [0]),  # CUDA stops at the first unknown entry
        ("1,1,2", [1]),  # ... and at a repeat
        ("0,-1,1", [0]),
        ("GPU-", []),  # an ambiguous prefix
        ("MIG-abcd", []),
        ("", []),
    ],
)
def test_cuda_visible_devices(cvd: str | None, want: list[int]) -> None:
    env = {} if cvd is None else {"CUDA_VISIBLE_DEVICES": cvd}
    d = probe(FakeNvml(MIXED), env=env).discover()
    if not want:
        assert [x.kind for x in d.devices] == ["cpu"]
        assert d.cuda_unavailable_reason is None
        assert worker_cuda_env(d, [0]) == {"CUDA_VISIBLE_DEVICES": ""}
        return
    assert [x.index for x in d.devices] == list(range(len(want)))
    assert [x.name for x in d.devices] == [MIXED[i]["name"] for i in want]
    assert d.cuda_visible == [MIXED[i]["uuid"] for i in want]
    env_out = worker_cuda_env(d, list(reversed(range(len(want)))))
    assert env_out["CUDA_VISIBLE_DEVICES"] == ",".join(MIXED[i]["uuid"] for i in reversed(want))
    assert env_out["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"


def test_mixed_compute_capabilities() -> None:
    d = probe(FakeNvml(MIXED)).discover()
    assert [x.compute_capability for x in d.devices] == ["8.9", "8.6", "7.5", "6.1"]
    assert [x.vram_total_mb for x in d.devices] == [24564, 12288, 15360, 23040]


@pytest.mark.parametrize(
    "error", [pynvml.NVMLError_DriverNotLoaded(), pynvml.NVMLError_LibraryNotFound()]
)
def test_no_nvidia_is_a_cpu_host(error: Exception) -> None:
    d = probe(FakeNvml([], error), Smi(None)).discover()
    assert d.model_dump()["devices"] == [
        {
            "index": 0,
            "kind": "cpu",
            "name": "cpu",
            "vram_total_mb": 4096,
            "compute_capability": None,
        }
    ]
    assert d.cuda_unavailable_reason is None
    assert (d.cuda_version, d.driver_version) == (None, None)


def test_repeated_discovery_logs_its_findings_once(caplog: pytest.LogCaptureFixture) -> None:
    """cortex polls /discovery every minute: a CPU host says "no NVML" once, then only at
    debug; a broken driver is warned about once too."""
    caplog.set_level(logging.DEBUG, logger="helexa.neuron")
    p = probe(FakeNvml([], pynvml.NVMLError_LibraryNotFound()), Smi(None))
    broken = probe(FakeNvml([], pynvml.NVMLError_NoPermission()), Smi(None))
    for _ in range(3):
        p.discover()
        broken.discover()
    nvml = [r.levelno for r in caplog.records if "NVML unavailable" in r.getMessage()]
    assert nvml.count(logging.INFO) == 2  # one per probe
    assert nvml.count(logging.DEBUG) == 4
    cuda = [r.levelno for r in caplog.records if "CUDA unavailable" in r.getMessage()]
    assert cuda == [logging.WARNING, logging.DEBUG, logging.DEBUG]


def test_nvml_mismatch() -> None:
    smi = Smi((18, data("smi_mismatch.txt")))
    d = probe(FakeNvml([], pynvml.NVMLError_LibRmVersionMismatch()), smi).discover()
    assert d.cuda_unavailable_reason == MISMATCH == "Driver/library version mismatch"
    assert d.model_dump()["cuda_unavailable_reason"] == MISMATCH
    assert [x.kind for x in d.devices] == ["cpu"]


def test_smi_mismatch_without_pynvml(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(disc_mod, "load_pynvml", lambda: None)
    d = DeviceProbe(CFG, smi_runner=Smi((18, data("smi_mismatch.txt"))), environ={}).discover()
    assert d.cuda_unavailable_reason == MISMATCH


def test_smi_driver_not_loaded_is_not_an_error() -> None:
    d = probe(smi=Smi((9, data("smi_no_driver.txt")))).discover()
    assert d.cuda_unavailable_reason is None
    assert [x.kind for x in d.devices] == ["cpu"]


def test_other_nvml_error_sets_a_reason() -> None:
    d = probe(FakeNvml([], pynvml.NVMLError_NoPermission()), Smi(None)).discover()
    assert d.cuda_unavailable_reason == "NVML: Insufficient Permissions"


def test_other_smi_failure_sets_a_reason() -> None:
    d = probe(
        smi=Smi((15, "Unable to determine the device handle for GPU0: GPU is lost\n"))
    ).discover()
    assert d.cuda_unavailable_reason == (
        "nvidia-smi: Unable to determine the device handle for GPU0: GPU is lost"
    )


@pytest.mark.parametrize(
    ("name", "count"), [("smi_1gpu.csv", 1), ("smi_2gpu.csv", 2), ("smi_4gpu_mixed.csv", 4)]
)
def test_smi_fallback(name: str, count: int) -> None:
    smi = Smi((0, data(name)))
    d = probe(smi=smi).discover()
    assert len(d.devices) == count and all(x.kind == "cuda" for x in d.devices)
    assert d.gpu_source == "nvidia-smi"
    assert d.cuda_version == "12.8"
    assert d.driver_version in {"570.86.16", "550.54.15"}
    assert d.cuda_unavailable_reason is None
    assert smi.calls[0] == [
        "--query-gpu=index,uuid,name,memory.total,memory.used,memory.free,utilization.gpu,"
        "temperature.gpu,driver_version,compute_cap",
        "--format=csv,noheader,nounits",
    ]
    assert all(u.startswith("GPU-") for u in d.cuda_visible)


def test_smi_four_mixed_values() -> None:
    gpus = parse_smi_csv(data("smi_4gpu_mixed.csv"))
    assert [g.name for g in gpus] == [
        "NVIDIA GeForce RTX 4090",
        "NVIDIA GeForce RTX 3060",
        "Tesla T4",
        "Tesla P40",
    ]
    assert [g.compute_capability for g in gpus] == ["8.9", "8.6", "7.5", "6.1"]
    assert [g.temperature_c for g in gpus] == [41, 38, None, 29]
    assert [g.utilization_pct for g in gpus] == [3, 0, 0, None]
    assert [g.free_mb for g in gpus] == [24052, 11988, 15360, 22919]


def test_smi_without_compute_cap_field_retries() -> None:
    smi = Smi((0, data("smi_1gpu_old_driver.csv")))
    smi.no_compute_cap = True
    d = probe(smi=smi).discover()
    assert [x.name for x in d.devices] == ["Tesla V100-SXM2-16GB"]
    assert d.devices[0].compute_capability is None
    assert d.driver_version == "470.223.02"
    assert "compute_cap" not in smi.calls[1][0]


def test_smi_cuda_visible_devices() -> None:
    d = probe(smi=Smi((0, data("smi_2gpu.csv"))), env={"CUDA_VISIBLE_DEVICES": "1"}).discover()
    assert [x.index for x in d.devices] == [0]
    assert d.cuda_visible == ["GPU-66666666-7777-8888-9999-000000000000"]


def test_os_release_fallback(tmp_path: Path) -> None:
    d = DeviceProbe(
        CFG, nvml=FakeNvml([]), smi_runner=Smi(None), environ={}, os_release=tmp_path / "none"
    ).discover()
    assert d.os  # platform.system()


# ---- health ------------------------------------------------------------------------------------


def test_health_nvml() -> None:
    nvml = FakeNvml([dict(g) for g in MIXED])
    p = probe(nvml, env={"CUDA_VISIBLE_DEVICES": "3,0"})
    p.discover()
    nvml.gpus[0]["used"] = 18210
    nvml.gpus[3]["lost"] = True
    h0, h1 = (x.model_dump() for x in p.health())
    assert h0 == {
        "index": 0,
        "kind": "cuda",
        "name": "Tesla P40",
        "vram_total_mb": 23040,
        "vram_used_mb": None,
        "vram_free_mb": None,
        "utilization_pct": None,
        "temperature_c": 43,
    }
    assert (h1["vram_used_mb"], h1["vram_free_mb"]) == (18210, 24564 - 18210)
    assert (h1["utilization_pct"], h1["temperature_c"]) == (5, 40)
    p.close()
    assert nvml.shutdowns == 1 and nvml.inits == 1


def test_health_smi() -> None:
    smi = Smi((0, data("smi_2gpu.csv")))
    h = [x.model_dump() for x in probe(smi=smi).health()]
    assert [(x["vram_used_mb"], x["vram_free_mb"]) for x in h] == [(1024, 23552), (20480, 4096)]
    assert [(x["utilization_pct"], x["temperature_c"]) for x in h] == [(0, 35), (97, 71)]
    smi.query = (15, "GPU is lost")
    h = [x.model_dump() for x in probe(smi=smi).health()]
    assert [x["kind"] for x in h] == ["cpu"]  # a fresh probe whose query fails: CPU host


def test_health_smi_refresh_failure_blanks_numbers() -> None:
    smi = Smi((0, data("smi_2gpu.csv")))
    p = probe(smi=smi)
    p.discover()
    smi.query = (15, "GPU is lost")
    h = p.health()
    assert [x.vram_used_mb for x in h] == [None, None]
    assert [x.vram_total_mb for x in h] == [24576, 24576]


def test_health_cpu() -> None:
    p = probe()
    (h,) = p.health(cpu_used_mb=1000)
    assert h.model_dump() == {
        "index": 0,
        "kind": "cpu",
        "name": "cpu",
        "vram_total_mb": 4096,
        "vram_used_mb": 1000,
        "vram_free_mb": 3096,  # min(4096 - 1000, MemAvailable 4096)
        "utilization_pct": None,
        "temperature_c": None,
    }
    (h,) = p.health(cpu_used_mb=0)
    assert h.vram_free_mb == 4096
    big = probe(cfg=NeuronConfig(cpu_memory_mb=65536))
    (h,) = big.health(cpu_used_mb=0)
    assert h.vram_free_mb == 4096  # MemAvailable is the tighter bound
    (h,) = p.health(cpu_used_mb=5000)
    assert h.vram_free_mb == 0


def test_real_probe_on_this_host() -> None:
    """Whatever this machine is, discovery works and returns at least one device."""
    d = discover(CFG)
    assert d.devices
    if d.devices[0].kind == "cpu":
        assert d.devices[0].vram_total_mb == 4096
